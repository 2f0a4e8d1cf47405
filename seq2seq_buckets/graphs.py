"""Graph factories: one tf.Graph per mode holding every bucket's pieces.

Training graph: per bucket a placeholder BatchedInput, its loss, update op and
gradient norm (dev loss: the same loss with model.dropout_rate fed 0.0) and a
greedy decoder (a while loop over the decoder step). Inference graph: per bucket
an encoder and a greedy decoder over it, plus one one-step decoder (state in,
log-probs and state out) for beam search. Train and inference share weights
through checkpoints.
"""

import collections

import tensorflow as tf

from seq2seq_buckets.attention import mask_bias
from seq2seq_buckets.batches import BatchedInput
from seq2seq_buckets.gradients import gradients
from seq2seq_buckets.model import EncoderOutput, Seq2SeqModel

tf1 = tf.compat.v1
# Graph mode for the whole process: sessions, savers and summaries run outside a
# `graph.as_default()` block too.
tf1.disable_eager_execution()

BucketTrainOps = collections.namedtuple(
    "BucketTrainOps", ["inputs", "loss", "nll_sum", "tokens", "grad_norm", "update",
                       "greedy"])
# eval_state: name -> variable for the evaluation bookkeeping in EVAL_STATE;
# eval_setters: name -> (placeholder, assign op) to write it.
TrainState = collections.namedtuple(
    "TrainState", ["global_step", "learning_rate", "decay_learning_rate", "eval_state",
                   "eval_setters"])
# Evaluation bookkeeping kept in the checkpoint, with its initial values.
EVAL_STATE = {"best_dev_loss": float("inf"), "recent_dev_losses": [float("inf")] * 3,
              "best_bleu": -1.0, "bad_evals": 0}
TrainingGraph = collections.namedtuple(
    "TrainingGraph", ["graph", "model", "buckets", "state", "init", "saver"])

# update: runs the optimizer step and yields the global step after it (int64 scalar).

# Per bucket encoder for beam search: inputs (encoder_inputs [N, I], source_lengths [N]) ->
# memory, keys [N, I, H], states (flat list of [N, H]), initial output [N, H].
EncoderOps = collections.namedtuple(
    "EncoderOps", ["encoder_inputs", "source_lengths", "memory", "keys", "states", "output"])
# One decoder step: placeholders tokens [N], output [N, H], states (flat list of [N, H]),
# memory/keys [N, I, H], source_lengths [N] -> log_probs [N, V], new output, new states.
StepOps = collections.namedtuple(
    "StepOps", ["tokens", "output", "states", "memory", "keys", "source_lengths",
                "log_probs", "new_output", "new_states"])
GreedyOps = collections.namedtuple("GreedyOps",
                                   ["encoder_inputs", "source_lengths", "max_steps", "ids"])
InferenceGraph = collections.namedtuple(
    "InferenceGraph", ["graph", "model", "greedy", "encoders", "step", "saver"])


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


def encoder_placeholders(bucket):
  """encoder_inputs [N, I] and source_lengths [N] placeholders for bucket (I, O)."""
  return (tf1.placeholder(tf.int32, [None, bucket[0]], "encoder_inputs"),
          tf1.placeholder(tf.int32, [None], "source_lengths"))


def greedy_ops(model, bucket, encoder_inputs, lengths, encoded):
  """GreedyOps for bucket (I, O) over `encoded` (the encoding of encoder_inputs [N, I],
  lengths [N]): max_steps [] (default O) -> ids [N, T], T <= max_steps
  (see Seq2SeqModel.greedy)."""
  max_steps = tf1.placeholder_with_default(bucket[1], [], "max_steps")
  return GreedyOps(encoder_inputs, lengths, max_steps, model.greedy(encoded, max_steps))


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
  """The training graph: every bucket's update, dev loss and greedy decoder."""
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
        loss = model.loss(inputs)
        # dense embedding gradients: fused dense Adam beats its sparse path here
        grads = [tf.convert_to_tensor(g) for g in gradients(loss.loss, params)]
        clipped, grad_norm = tf.clip_by_global_norm(grads, hparams.max_gradient_norm)
        with tf.control_dependencies([optimizer.apply_gradients(zip(clipped, params),
                                                                global_step=state.global_step)]):
          update = tf.identity(state.global_step.read_value(), "new_global_step")
      with tf1.name_scope(f"bucket_{b}/greedy"):
        encoder_inputs, lengths = encoder_placeholders(bucket)
        greedy = greedy_ops(model, bucket, encoder_inputs, lengths,
                            model.encode(encoder_inputs, lengths, training=False))
      buckets.append(BucketTrainOps(inputs, loss.loss, loss.nll_sum, loss.tokens, grad_norm,
                                    update, greedy))
    init = tf1.global_variables_initializer()
    saver = tf1.train.Saver(max_to_keep=max_checkpoints)
  return TrainingGraph(graph, model, buckets, state, init, saver)


def build_inference_graph(hparams):
  """The decoding graph: per bucket an encoder and a greedy decoder over it, one shared
  decoder step."""
  graph = tf.Graph()
  with graph.as_default():
    model = Seq2SeqModel(hparams, cache_output_kernel=True)
    tf1.train.get_or_create_global_step()
    greedy, encoders = [], []
    for b, bucket in enumerate(hparams.buckets):
      with tf1.name_scope(f"bucket_{b}"):
        enc_inputs, lengths = encoder_placeholders(bucket)
        encoded = model.encode(enc_inputs, lengths, training=False)
        encoders.append(EncoderOps(enc_inputs, lengths, encoded.memory, encoded.keys,
                                   _flatten(encoded.states), model.initial_output(encoded)))
        greedy.append(greedy_ops(model, bucket, enc_inputs, lengths, encoded))
    step = _step_ops(model)
    saver = tf1.train.Saver(tf1.global_variables())
  return InferenceGraph(graph, model, greedy, encoders, step, saver)


def restore_inference(inference_graph, session, checkpoint):
  """Restores checkpoint into session (on inference_graph.graph) and fills the
  decoding-only cache of the transposed output projection."""
  inference_graph.saver.restore(session, checkpoint)
  session.run(inference_graph.model.refresh_output_kernel)


def _step_ops(model):
  hp = model.hp
  per_layer = 2 if hp.cell == "lstm" else 1
  with tf1.name_scope("step"):
    tokens = tf1.placeholder(tf.int32, [None], "tokens")
    output = tf1.placeholder(tf.float32, [None, hp.size], "output")
    states = [tf1.placeholder(tf.float32, [None, hp.size], f"state_{i}")
              for i in range(hp.num_layers * per_layer)]
    memory = tf1.placeholder(tf.float32, [None, None, hp.size], "memory")
    keys = tf1.placeholder(tf.float32, [None, None, hp.size], "keys")
    lengths = tf1.placeholder(tf.int32, [None], "source_lengths")
    encoded = EncoderOutput(memory, keys, mask_bias(lengths, tf.shape(memory)[1]), None)
    layered = [tuple(states[l * per_layer:(l + 1) * per_layer]) for l in range(hp.num_layers)]
    new_output, new_states = model.decoder_step(
        model.embed_target(tokens[None])[0], output, layered, encoded)
    log_probs = tf.nn.log_softmax(model.logits(new_output))
  return StepOps(tokens, output, states, memory, keys, lengths, log_probs, new_output,
                 _flatten(new_states))


def _flatten(states):
  return [tensor for layer in states for tensor in layer]
