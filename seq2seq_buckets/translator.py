"""A trained model loaded once from its train_dir, translating lists of lines.

Used by s2s-decode, s2s-evaluate --train_dir and the benchmark. Loading builds
the inference graph (an encoder, its greedy decoder and its beam search, fed
one bucket's batch at a time) and restores a checkpoint; every `translate` call
then only runs it.
"""

import collections
import gc
import os

import tensorflow as tf

from seq2seq_buckets import decoding
from seq2seq_buckets import graphs
from seq2seq_buckets import hparams as hparams_lib
from seq2seq_buckets import trainer
from seq2seq_buckets import vocab
from seq2seq_buckets.batches import DECODE_BATCH_SIZE
from seq2seq_buckets.errors import UserError

tf1 = tf.compat.v1

# One hypothesis of a line: detokenized text and its model score (log-prob sum
# over the GNMT length penalty; None from greedy decoding).
Translated = collections.namedtuple("Translated", ["text", "score"])
# A line longer than the largest source bucket: its index and source pieces.
Truncation = collections.namedtuple("Truncation", ["index", "pieces"])
# hypotheses: per input line a list of Translated, best first; truncated: list of Truncation.
Translations = collections.namedtuple("Translations", ["hypotheses", "truncated"])


def find_checkpoint(train_dir, checkpoint=None):
  """The checkpoint path to restore: `checkpoint` (a prefix such as model.ckpt-300 or a
  directory such as best/, also looked up inside train_dir), else train_dir's latest."""
  if checkpoint is None:
    latest = tf.train.latest_checkpoint(train_dir)
    if not latest:
      raise UserError(f"{train_dir}: no checkpoint yet; train a model there with s2s-train")
    return latest
  for path in (checkpoint, os.path.join(train_dir, checkpoint)):
    if os.path.isdir(path) and tf.train.latest_checkpoint(path):
      return tf.train.latest_checkpoint(path)
    if os.path.isfile(path + ".index"):
      return path
  raise UserError(f"checkpoint {checkpoint}: not found (give a prefix such as "
                  f"{os.path.join(train_dir, trainer.CHECKPOINT_PREFIX)}-STEP or a directory "
                  f"such as {os.path.join(train_dir, trainer.BEST_DIR)})")


def check_search(beam_size, length_penalty, max_length_ratio, n_best, batch_size):
  """Raises UserError for search settings that make no sense."""
  if beam_size < 1:
    raise UserError(f"beam_size must be >= 1, not {beam_size}")
  if not 1 <= n_best <= beam_size:
    raise UserError(f"n_best must be between 1 and beam_size ({beam_size}), not {n_best}")
  if length_penalty < 0:
    raise UserError(f"length_penalty must be >= 0, not {length_penalty}")
  if max_length_ratio <= 0:
    raise UserError(f"max_length_ratio must be positive, not {max_length_ratio}")
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, not {batch_size}")


def one_thread_per_op():
  """Makes TensorFlow's process-wide op thread pool a single thread, unless it exists
  already (anything that starts TensorFlow's runtime makes it, with a thread per core,
  and a session cannot change it). For processes that only decode: with a batch per
  core decoding side by side, ops on one thread each, and the decoder's LSTM kernels
  padded (LSTMCell.cache_step_weights), test_2016_flickr decoded greedy 633-737
  against 488-632 sentences/s and beam 5 168-183 against 137-162 (m11 recipe model,
  alternating processes, 2026-11-28). Either change alone gained nothing: on a pool
  of a thread per core the 1024-column matmuls are not slow.
  """
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:  # the pool is made
    pass


def freeze_loaded_objects():
  """Puts every Python object alive now out of the garbage collector's reach, for
  processes that load one model and then only translate. The loaded graph holds
  ~340,000 objects (recipe model); a full collection walked them all, ~170 ms, every
  few translate calls, a pause in interactive use too."""
  gc.collect()
  gc.freeze()


class Translator:
  """hparams, SentencePiece models and a checkpoint of a train_dir, in one session."""

  def __init__(self, train_dir, checkpoint=None):
    if not os.path.isdir(train_dir):
      raise UserError(f"{train_dir}: no such directory")
    hp = hparams_lib.load(train_dir)
    if hp is None:
      raise UserError(f"{train_dir}: no {hparams_lib.HPARAMS_FILE}; not a directory written "
                      "by s2s-train")
    self.checkpoint = find_checkpoint(train_dir, checkpoint)
    self.source_spm = _load_spm(train_dir, trainer.SRC_MODEL, hp.src_vocab_size)
    self.target_spm = _load_spm(train_dir, trainer.TGT_MODEL, hp.tgt_vocab_size)
    self.buckets = [tuple(b) for b in hp.buckets]
    self.graph = graphs.build_inference_graph(hp)
    with self.graph.graph.as_default():
      _check_checkpoint(self.checkpoint, tf1.global_variables())
    self.graph.graph.finalize()
    self.session = _restored_session(self.graph, self.checkpoint)

  @property
  def max_source_pieces(self):
    """Source pieces the largest bucket holds; longer inputs are cut to it."""
    return self.buckets[-1][0]

  def translate(self, lines, *, beam_size=1, length_penalty=0.0, max_length_ratio=2.0,
                n_best=1, batch_size=DECODE_BATCH_SIZE):
    """lines: list of str -> Translations, one entry per line in input order.

    beam_size 1 runs the greedy decoder (scores None); more runs beam
    search with the GNMT length penalty alpha = length_penalty (0: none).
    batch_size counts sentences per session.run.
    """
    check_search(beam_size, length_penalty, max_length_ratio, n_best, batch_size)
    sources = vocab.encode_lines(self.source_spm, list(lines))
    found, truncated = self._decode(sources, beam_size, length_penalty, max_length_ratio, n_best,
                                    batch_size)
    texts = iter(vocab.decode_lines(self.target_spm, [h.ids for line in found for h in line]))
    hypotheses = [[Translated(next(texts), h.score) for h in line] for line in found]
    return Translations(hypotheses, [Truncation(i, len(sources[i])) for i in truncated])

  def warm_up(self, beam_size=1, n_best=1):
    """Runs the decoder on each bucket's shape, batched and for a single sentence (this
    compiles the XLA loop for beam_size and n_best, 1-3 s): a graph's first run is slow,
    later ones are not."""
    sources = [[vocab.UNK_ID] * source_len for source_len, _ in self.buckets]
    for batch in [sources] + [[source] for source in sources]:
      self._decode(batch, beam_size, 0.0, 2.0, n_best, 1)

  def _decode(self, sources, beam_size, length_penalty, max_length_ratio, n_best, batch_size):
    """sources: id lists -> (per source a list of decoding.Hypothesis, truncated indices)."""
    if beam_size == 1:
      outputs, truncated = decoding.greedy_ids(
          self.session, self.graph.greedy, self.buckets, sources, batch_size, max_length_ratio,
          workers=trainer.CORES)
      return [[decoding.Hypothesis(ids, None)] for ids in outputs], truncated
    return decoding.beam_search(
        self.session, self.graph.beam, self.buckets, sources, beam_size, batch_size,
        length_penalty=length_penalty, n_best=n_best, max_length_ratio=max_length_ratio,
        workers=trainer.CORES)

  def close(self):
    self.session.close()

  def __enter__(self):
    return self

  def __exit__(self, *_):
    self.close()


def _restored_session(graph, checkpoint):
  """A session on graph (a finalized graphs.InferenceGraph) holding checkpoint's weights.

  `translate` runs one batch per core at a time (decoding._run_batches), so the
  session runs as many ops at a time as there are cores. On test_2016_flickr this
  decoded greedy 1.45x and beam 5 1.3x faster than one batch at a time. Ops share
  out their work on TensorFlow's process-wide pool (see one_thread_per_op).
  """
  config = trainer.session_config(inter_op_threads=trainer.CORES)
  session = tf1.Session(graph=graph.graph, config=config)
  try:
    graphs.restore_inference(graph, session, checkpoint)
  except tf.errors.OpError as e:
    session.close()
    raise UserError(f"{checkpoint}: cannot restore this model from it "
                    f"({e.message.splitlines()[0]})") from None
  return session


def _check_checkpoint(checkpoint, variables):
  """Raises UserError unless `checkpoint` holds every variable with its shape (a restore
  would take other shapes silently)."""
  try:
    saved = dict(tf.train.list_variables(checkpoint))
  except tf.errors.OpError as e:
    raise UserError(f"{checkpoint}: unreadable ({e.message.splitlines()[0]})") from None
  for variable in variables:
    name, shape = variable.op.name, variable.shape.as_list()
    if name not in saved:
      raise UserError(f"{checkpoint}: no variable {name}; not a checkpoint of this model")
    if list(saved[name]) != shape:
      raise UserError(f"{checkpoint}: {name} has shape {list(saved[name])} but the "
                      f"hyperparameters make it {shape}")


def _load_spm(train_dir, name, size):
  path = os.path.join(train_dir, name)
  model = vocab.load_spm(path)
  if model.get_piece_size() != size:
    raise UserError(f"{path} has {model.get_piece_size()} pieces but the model was trained "
                    f"with {size}")
  return model
