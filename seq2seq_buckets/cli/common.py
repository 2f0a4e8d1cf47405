"""What every entry point shares: quiet logs, `--help`, one-line errors, exit codes."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

from seq2seq_buckets.errors import UserError  # pylint: disable=g-import-not-at-top


def log(message):
  print(message, file=sys.stderr, flush=True)


def run(main):
  """Runs an absl `main`, turning UserError into `error: ...` and exit status 2.

  The flags of the module defining `main` (and those it adopts) are shown by
  `--help`; absl would otherwise list only the console-script wrapper's (none).
  """
  for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # no INFO lines from TensorFlow's savers
    try:
      main()
    except UserError as e:
      log(f"error: {e}")
      sys.exit(2)
    except KeyboardInterrupt:
      log("interrupted")
      sys.exit(130)
    except BrokenPipeError:  # e.g. `s2s-evaluate --json | head`
      sys.stderr.close()
      sys.exit(141)
  app.run(guarded)
