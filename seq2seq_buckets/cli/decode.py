"""s2s-decode: translate with a trained model, interactively or in batch.

Interactive when stdin is a terminal and no --input is given: the model loads
once, then each typed line is translated as soon as it is entered; Ctrl-D quits.
Otherwise the input is read and translated --chunk_lines lines at a time, in
batches grouped by bucket; each chunk's translations are written in input order
as soon as it is done, one line out per line in (an empty line gives an empty
line), with progress and an ETA on stderr. With --n_best=N > 1 each input line
gives up to N lines 'LINE<TAB>SCORE<TAB>TRANSLATION', best first, LINE counting
input lines from 1.
"""

import contextlib
import signal
import sys
import time

from absl import flags

from seq2seq_buckets import evaluation
from seq2seq_buckets.cli import common
from seq2seq_buckets.cli import translation_flags

flags.adopt_module_key_flags(translation_flags)

flags.DEFINE_string("input", None, "Text to translate, one sentence a line (default: stdin).")
flags.DEFINE_string("output", None, "Where translations go (default: stdout).")
flags.DEFINE_integer("n_best", 1, "Hypotheses per input line; above 1, each is written as "
                     "'LINE<TAB>SCORE<TAB>TRANSLATION' (needs --beam_size >= n_best).")
flags.mark_flag_as_required("train_dir")
FLAGS = flags.FLAGS

PROMPT = "> "


def format_lines(translations, n_best, first_line=1):
  """Translations -> output lines: the best text per input, or n-best 'LINE\\tSCORE\\tTEXT'."""
  if n_best == 1:
    return [hypotheses[0].text for hypotheses in translations.hypotheses]
  return [f"{first_line + i}\t{h.score:.4f}\t{h.text}"
          for i, hypotheses in enumerate(translations.hypotheses) for h in hypotheses]


def _open_output():
  """--output (its directory must exist) or stdout, as UTF-8 text."""
  if not FLAGS.output:
    return open(sys.stdout.fileno(), "w", encoding="utf-8", closefd=False)
  try:
    return open(FLAGS.output, "w", encoding="utf-8")
  except OSError as e:
    raise common.UserError(f"{FLAGS.output}: cannot write ({e.strerror})") from None


def _stdin(errors="strict"):
  return open(sys.stdin.fileno(), encoding="utf-8", errors=errors, newline="\n", closefd=False)


def _read_input():
  if FLAGS.input:
    return evaluation.read_lines(FLAGS.input)
  with _stdin() as stdin:
    return evaluation.lines_of(stdin, "stdin")


@contextlib.contextmanager
def _interrupt_deferred():
  """Holds a Ctrl-C (SIGINT) back until the block has run, then raises KeyboardInterrupt
  (unless SIGINT is ignored, as in a background job of a script)."""
  caught = []
  previous = signal.getsignal(signal.SIGINT)
  if previous in (None, signal.SIG_IGN):
    yield
    return
  signal.signal(signal.SIGINT, lambda *_: caught.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught:
    raise KeyboardInterrupt


def _batch():
  """Translates the input a chunk at a time, writing each chunk's lines whole when it is
  done: on Ctrl-C the output holds the chunks translated before it, and says how many
  lines they hold."""
  lines = _read_input()
  written = 0
  with _open_output() as out:
    try:
      for first, translations in translation_flags.translate_chunks(lines, FLAGS.n_best):
        text = "".join(line + "\n" for line in format_lines(translations, FLAGS.n_best,
                                                            first + 1))
        with _interrupt_deferred():
          out.write(text)
          out.flush()
          written = first + len(translations.hypotheses)
    except KeyboardInterrupt:
      common.log(f"the translations of the first {written} of {len(lines)} input lines "
                 f"are written to {FLAGS.output or 'stdout'}")
      raise


def _interactive(options):
  with translation_flags.load_translator() as translator, _open_output() as out, \
      _stdin(errors="replace") as stdin:
    translator.warm_up(options["beam_size"], options["n_best"])
    common.log("type a sentence and press Enter; Ctrl-D quits")
    count = empty = truncated = 0
    seconds = 0.0
    while True:
      sys.stderr.write(PROMPT)
      sys.stderr.flush()
      line = stdin.readline()
      if not line:
        break
      line = line.rstrip("\r\n")
      count += 1
      empty += not line.strip()
      start = time.perf_counter()
      translations = translator.translate([line], **options)
      seconds += time.perf_counter() - start
      truncated += len(translations.truncated)
      translation_flags.warn_truncated(translations, translator.max_source_pieces, count)
      out.writelines(text + "\n" for text in format_lines(translations, FLAGS.n_best, count))
      out.flush()
  common.log("")
  common.log(translation_flags.summary(count, empty, truncated, seconds))


def main():
  if FLAGS.input is None and sys.stdin.isatty():
    _interactive(translation_flags.search_options(FLAGS.n_best))
  else:
    _batch()


def run():
  common.run(main)


if __name__ == "__main__":
  run()
