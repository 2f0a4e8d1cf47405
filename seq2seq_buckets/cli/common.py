"""What every entry point shares: quiet TensorFlow logs, one-line errors, exit codes."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top

from seq2seq_buckets.errors import UserError  # pylint: disable=g-import-not-at-top


def log(message):
  print(message, file=sys.stderr, flush=True)


def run(main):
  """Runs an absl `main`, turning UserError into `error: ...` and exit status 2."""
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
      main()
    except UserError as e:
      log(f"error: {e}")
      sys.exit(2)
    except KeyboardInterrupt:
      log("interrupted")
      sys.exit(130)
  app.run(guarded)
