"""Flags and reporting shared by the entry points that translate: s2s-decode and
s2s-evaluate --train_dir."""

import time

from absl import flags

from seq2seq_buckets import progress
from seq2seq_buckets.batches import DECODE_BATCH_SIZE
from seq2seq_buckets.cli import common

flags.DEFINE_string("train_dir", None, "Directory written by s2s-train; the model, its "
                    "SentencePiece models and hyperparameters are read from it.")
flags.DEFINE_string("checkpoint", None, "Checkpoint to restore instead of the latest: a prefix "
                    "such as model.ckpt-3000 or a directory such as best (both also looked up "
                    "inside --train_dir).")
flags.DEFINE_integer("beam_size", 1, "Beam width; 1 runs the greedy decoder.")
flags.DEFINE_float("length_penalty", 0.0, "GNMT length penalty alpha for beam search: scores "
                   "are log-probs divided by ((5 + length) / 6) ** alpha; 0 disables it.")
flags.DEFINE_float("max_length_ratio", 2.0, "Translations stop after max_length_ratio x source "
                   "pieces + 5 pieces (and at the bucket's target length).")
flags.DEFINE_integer("batch_size", DECODE_BATCH_SIZE, "Sentences per batch (with beam "
                     "search, x beam_size decoder rows per step).")
flags.DEFINE_integer("chunk_lines", 4000, "Input lines translated at a time: after each chunk "
                     "its translations are written and progress with an ETA is logged.",
                     lower_bound=1)
FLAGS = flags.FLAGS


def load_translator():
  """The --train_dir model, restored from --checkpoint or the latest checkpoint."""
  start = time.perf_counter()
  _translator_lib().one_thread_per_op()
  translator = _translator_lib().Translator(FLAGS.train_dir, FLAGS.checkpoint)
  _translator_lib().freeze_loaded_objects()
  common.log(f"loaded {translator.checkpoint} in {time.perf_counter() - start:.1f}s")
  return translator


def search_options(n_best=1):
  """Keyword arguments of Translator.translate from the flags, checked."""
  options = {"beam_size": FLAGS.beam_size, "length_penalty": FLAGS.length_penalty,
             "max_length_ratio": FLAGS.max_length_ratio, "n_best": n_best,
             "batch_size": FLAGS.batch_size}
  _translator_lib().check_search(**options)
  return options


def _translator_lib():
  """seq2seq_buckets.translator, imported on first use (it loads TensorFlow)."""
  from seq2seq_buckets import translator  # pylint: disable=g-import-not-at-top
  return translator


def translate_chunks(lines, n_best=1):
  """Loads the model and translates `lines` --chunk_lines at a time, in input order.

  Yields (index of the chunk's first line, translator.Translations of the chunk).
  Logs the chunk's truncation warnings; once the caller has taken the chunk (and
  asks for the next), progress with an ETA while lines remain; a summary after
  the last chunk. Chunks cost little speed: each is still batched by bucket.
  """
  options = search_options(n_best)
  with load_translator() as translator:
    start = time.perf_counter()
    truncated = 0
    for first in range(0, len(lines), FLAGS.chunk_lines):
      translations = translator.translate(lines[first:first + FLAGS.chunk_lines], **options)
      warn_truncated(translations, translator.max_source_pieces, first + 1)
      truncated += len(translations.truncated)
      yield first, translations
      done = first + len(translations.hypotheses)
      if done < len(lines):
        common.log("translated " + progress.eta_line(done, len(lines),
                                                     time.perf_counter() - start, "lines"))
    seconds = time.perf_counter() - start
  common.log(summary(len(lines), sum(not line.strip() for line in lines), truncated, seconds))


def warn_truncated(translations, largest, first_line=1):
  """One stderr warning per input longer than the largest bucket (`largest` source pieces)."""
  for cut in translations.truncated:
    common.log(f"warning: line {first_line + cut.index}: {cut.pieces} source pieces do not fit "
               f"the largest bucket ({largest}); translated the first {largest}")


def summary(lines, empty, truncated, seconds):
  """The closing line: lines translated, empty and truncated ones, speed."""
  return (f"translated {lines} lines ({empty} empty, {truncated} truncated to the largest "
          f"bucket) in {seconds:.2f}s, {lines / max(seconds, 1e-9):.1f} lines/s, "
          f"beam {FLAGS.beam_size}")
