"""Attention over the encoder memory: Bahdanau (additive) or Luong (general) scores.

Both precompute `keys = memory @ W_k` once per sentence ([B, I, H]), so each decoder
step costs one [B, H] x [H, H] matmul plus elementwise work over I positions.
Padded source positions get probability exactly 0.
"""

import tensorflow as tf

from seq2seq_buckets.cells import read
from seq2seq_buckets.gradients import add_across_positions, expand_dims, plain_einsum
from seq2seq_buckets.gradients import softmax, weight_matmul

tf1 = tf.compat.v1
# Score bias of a padded source position: its attention probability underflows to 0.
MASKED = -1e9


class Attention:
  """Bahdanau: score = v . tanh(keys + W_q query); Luong (general): score = keys . query.

  The output tanh(W_o [context; query]) multiplies the two row blocks of W_o
  separately (no concat). Einsum contractions keep each step free of the
  expand/squeeze reshapes that batched matmuls would need.
  """

  def __init__(self, kind, size, name="attention"):
    self.kind = kind
    with tf1.variable_scope(name):
      self.key_kernel = read(tf1.get_variable("key_kernel", [size, size]))
      if kind == "bahdanau":
        self.query_kernel = read(tf1.get_variable("query_kernel", [size, size]))
        self.score_vector = tf.reshape(read(tf1.get_variable("score_vector", [size, 1])), [size])
      self.context_kernel, self.query_output_kernel = tf.split(
          read(tf1.get_variable("output_kernel", [2 * size, size])), 2)

  def keys(self, memory):
    """memory [B, I, H] -> keys [B, I, H]."""
    return plain_einsum("bih,hk->bik", memory, self.key_kernel)

  def __call__(self, query, memory, keys, mask_bias):
    """query [B, H], memory/keys [B, I, H], mask_bias [B, I] (see `mask_bias`) ->
    (attentional output [B, H], alignments [B, I])."""
    if self.kind == "bahdanau":
      projected = expand_dims(weight_matmul(query, self.query_kernel), 1)
      scores = plain_einsum("bih,h->bi", tf.tanh(add_across_positions(keys, projected)),
                            self.score_vector)
    else:
      scores = plain_einsum("bih,bh->bi", keys, query)
    alignments = softmax(scores + mask_bias)
    context = plain_einsum("bi,bih->bh", alignments, memory)
    output = tf.tanh(weight_matmul(context, self.context_kernel) +
                     weight_matmul(query, self.query_output_kernel))
    return output, alignments


def mask_bias(source_lengths, steps):
  """source_lengths [B] -> [B, steps] float32: 0 on real positions, -1e9 on padding."""
  return (1.0 - tf.sequence_mask(source_lengths, steps, tf.float32)) * MASKED
