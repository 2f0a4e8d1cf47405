"""Graph factories: one tf.Graph per mode holding every bucket's pieces.

Training graph: per bucket a placeholder BatchedInput, its loss, update op and
gradient norm (dev loss: the same loss with model.dropout_rate fed 0.0), and one
greedy decoder (a while loop over the decoder step) for dev BLEU. Inference
graph: one encoder with a greedy decoder (a while loop) and calls of the beam
search (one while loop) and of XLA-compiled greedy and beam loops for single
sentences. Training unrolls a graph per bucket; decoding needs no per-bucket
copy: its loops take any batch and source length, so one set of decoding ops
serves every bucket (callers still batch by bucket and pad to its length).
Train and inference share weights through checkpoints.
"""

import collections

import tensorflow as tf

from seq2seq_buckets.batches import BatchedInput
from seq2seq_buckets.gradients import gradients
from seq2seq_buckets.model import Seq2SeqModel

tf1 = tf.compat.v1
# Graph mode for the whole process: sessions, savers and summaries run outside a
# `graph.as_default()` block too.
tf1.disable_eager_execution()

# update: runs the optimizer step and yields the global step after it (int64 scalar).
BucketTrainOps = collections.namedtuple(
    "BucketTrainOps", ["inputs", "loss", "nll_sum", "tokens", "grad_norm", "update"])
# eval_state: name -> variable for the evaluation bookkeeping in EVAL_STATE;
# eval_setters: name -> (placeholder, assign op) to write it.
TrainState = collections.namedtuple(
    "TrainState", ["global_step", "learning_rate", "decay_learning_rate", "eval_state",
                   "eval_setters"])
# Evaluation bookkeeping kept in the checkpoint, with its initial values.
EVAL_STATE = {"best_dev_loss": float("inf"), "recent_dev_losses": [float("inf")] * 3,
              "best_bleu": -1.0, "bad_evals": 0}
# greedy: GreedyOps for dev BLEU, shared by all buckets.
TrainingGraph = collections.namedtuple(
    "TrainingGraph", ["graph", "model", "buckets", "greedy", "state", "init", "saver"])

# Greedy decoding: placeholders encoder_inputs [N, I] (any I: a bucket's source
# length), source_lengths [N], max_steps [] -> ids [N, T] (see Seq2SeqModel.greedy);
# single_ids: the same through the XLA-compiled loop, for N = 1 (None in the
# training graph).
GreedyOps = collections.namedtuple(
    "GreedyOps", ["encoder_inputs", "source_lengths", "max_steps", "ids", "single_ids"])
# Beam search: as GreedyOps, with placeholders limits [N] (most output pieces per
# sentence), beam_size, n_best, alpha (the GNMT length penalty) -> found, a
# beam_search.Found; single_found: the same through the XLA-compiled search, for N = 1.
BeamOps = collections.namedtuple(
    "BeamOps", ["encoder_inputs", "source_lengths", "limits", "beam_size", "n_best", "alpha",
                "found", "single_found"])
InferenceGraph = collections.namedtuple("InferenceGraph",
                                        ["graph", "model", "greedy", "beam", "saver"])


def bucket_placeholders(bucket, batch_size, name):
  """A BatchedInput of placeholders for bucket (I, O) and a fixed batch size.

  A static batch dimension lets TensorFlow build the gradients of elementwise ops
  without shape-reduction ops (a third fewer ops in the training graph).
  """
  source_len, target_len = bucket
  with tf1.name_scope(name):
    return BatchedInput(
        tf1.placeholder(tf.int32, [batch_size, source_len], "encoder_inputs"),
        tf1.placeholder(tf.int32, [batch_size], "source_lengths"),
        tf1.placeholder(tf.int32, [batch_size, target_len], "decoder_inputs"),
        tf1.placeholder(tf.int32, [batch_size, target_len], "targets"),
        tf1.placeholder(tf.float32, [batch_size, target_len], "target_weights"))


def encoder_placeholders():
  """encoder_inputs [N, I] and source_lengths [N] placeholders, for any N and I."""
  return (tf1.placeholder(tf.int32, [None, None], "encoder_inputs"),
          tf1.placeholder(tf.int32, [None], "source_lengths"))


def greedy_ops(model, encoder_inputs, lengths, encoded, single=False):
  """GreedyOps over `encoded` (the encoding of encoder_inputs [N, I], lengths [N]):
  max_steps [] -> ids [N, T], T <= max_steps (see Seq2SeqModel.greedy); single: also
  single_ids."""
  max_steps = tf1.placeholder(tf.int32, [], "max_steps")
  single_ids = model.greedy(encoded, max_steps, compiled=True) if single else None
  return GreedyOps(encoder_inputs, lengths, max_steps, model.greedy(encoded, max_steps),
                   single_ids)


def beam_ops(model, encoder_inputs, lengths, encoded):
  """BeamOps over `encoded` (the encoding of encoder_inputs [N, I], lengths [N])."""
  limits = tf1.placeholder(tf.int32, [None], "limits")
  beam_size = tf1.placeholder(tf.int32, [], "beam_size")
  n_best = tf1.placeholder_with_default(1, [], "n_best")
  alpha = tf1.placeholder_with_default(0.0, [], "alpha")
  search = lambda compiled: model.beam_search(encoded, limits, beam_size, n_best, alpha,
                                              compiled)
  return BeamOps(encoder_inputs, lengths, limits, beam_size, n_best, alpha, search(False),
                 search(True))


def _train_state(hparams):
  """Loop state kept in the checkpoint, so a resumed run continues where it stopped."""
  global_step = tf1.train.get_or_create_global_step()
  with tf1.variable_scope("train_state"):
    learning_rate = tf1.get_variable("learning_rate", initializer=float(hparams.learning_rate),
                                     trainable=False)
    decay = learning_rate.assign(learning_rate * hparams.learning_rate_decay_factor)
    variables, setters = {}, {}
    for name, initial in EVAL_STATE.items():
      variables[name] = tf1.get_variable(name, initializer=tf.constant(initial), trainable=False)
      value = tf1.placeholder(variables[name].dtype.base_dtype, variables[name].shape)
      setters[name] = (value, variables[name].assign(value))
  return TrainState(global_step, learning_rate, decay, variables, setters)


def build_training_graph(hparams, max_checkpoints=5):
  """The training graph: every bucket's update and dev loss, and the greedy decoder."""
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(hparams.seed)
    model = Seq2SeqModel(hparams)
    state = _train_state(hparams)
    if hparams.optimizer == "adam":
      optimizer = tf1.train.AdamOptimizer(state.learning_rate)
    else:
      optimizer = tf1.train.GradientDescentOptimizer(state.learning_rate)
    params = tf1.trainable_variables()
    buckets = []
    for b, bucket in enumerate(hparams.buckets):
      inputs = bucket_placeholders(bucket, hparams.batch_size, f"bucket_{b}")
      with tf1.name_scope(f"bucket_{b}/train"):
        loss = model.with_own_reads().loss(inputs)
        # dense embedding gradients: fused dense Adam beats its sparse path here
        grads = [tf.convert_to_tensor(g) for g in gradients(loss.loss, params)]
        clipped, grad_norm = tf.clip_by_global_norm(grads, hparams.max_gradient_norm)
        with tf.control_dependencies([optimizer.apply_gradients(zip(clipped, params),
                                                                global_step=state.global_step)]):
          update = tf.identity(state.global_step.read_value(), "new_global_step")
      buckets.append(BucketTrainOps(inputs, loss.loss, loss.nll_sum, loss.tokens, grad_norm,
                                    update))
    with tf1.name_scope("greedy"):
      encoder_inputs, lengths = encoder_placeholders()
      greedy = greedy_ops(model, encoder_inputs, lengths,
                          model.encode(encoder_inputs, lengths, training=False))
    init = tf1.global_variables_initializer()
    # relative paths in the checkpoint file: a train_dir can be moved or copied
    saver = tf1.train.Saver(max_to_keep=max_checkpoints, save_relative_paths=True)
  return TrainingGraph(graph, model, buckets, greedy, state, init, saver)


def build_inference_graph(hparams):
  """The decoding graph: an encoder, its greedy decoder and its beam search, for every
  bucket (see the module docstring)."""
  graph = tf.Graph()
  with graph.as_default():
    model = Seq2SeqModel(hparams, decoding_caches=True)
    tf1.train.get_or_create_global_step()
    enc_inputs, lengths = encoder_placeholders()
    encoded = model.encode(enc_inputs, lengths, training=False)
    greedy = greedy_ops(model, enc_inputs, lengths, encoded, single=True)
    with tf1.name_scope("beam"):
      beam = beam_ops(model, enc_inputs, lengths, encoded)
    saver = tf1.train.Saver(tf1.global_variables())
  return InferenceGraph(graph, model, greedy, beam, saver)


def restore_inference(inference_graph, session, checkpoint):
  """Restores checkpoint into session (on inference_graph.graph) and fills the
  decoding-only caches (Seq2SeqModel.refresh_caches)."""
  inference_graph.saver.restore(session, checkpoint)
  session.run(inference_graph.model.refresh_caches)
