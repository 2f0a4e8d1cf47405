"""Attention over the encoder memory: Bahdanau (additive) or Luong (general) scores.

Both precompute `keys = memory @ W_k` once per sentence ([B, I, H]), so each decoder
step costs one [B, H] x [H, H] matmul plus elementwise work over I positions.
Padded source positions get probability exactly 0.
"""

import tensorflow as tf

from seq2seq_buckets.cells import read

tf1 = tf.compat.v1


class Attention:

  def __init__(self, kind, size, name="attention"):
    self.kind = kind
    with tf1.variable_scope(name):
      self.key_kernel = read(tf1.get_variable("key_kernel", [size, size]))
      if kind == "bahdanau":
        self.query_kernel = read(tf1.get_variable("query_kernel", [size, size]))
        self.score_vector = read(tf1.get_variable("score_vector", [size, 1]))
      self.output_kernel = read(tf1.get_variable("output_kernel", [2 * size, size]))

  def keys(self, memory):
    """memory [B, I, H] -> keys [B, I, H]."""
    return tf.einsum("bih,hk->bik", memory, self.key_kernel)

  def __call__(self, query, memory, keys, mask_bias):
    """query [B, H], memory/keys [B, I, H], mask_bias [B, I] (see `mask_bias`) ->
    (attentional output [B, H], alignments [B, I])."""
    if self.kind == "bahdanau":
      projected = tf.expand_dims(tf.matmul(query, self.query_kernel), 1)
      scores = tf.squeeze(tf.einsum("bih,hk->bik", tf.tanh(keys + projected), self.score_vector), 2)
    else:
      scores = tf.squeeze(tf.matmul(keys, tf.expand_dims(query, 2)), 2)
    alignments = tf.nn.softmax(scores + mask_bias, axis=1)
    context = tf.squeeze(tf.matmul(tf.expand_dims(alignments, 1), memory), 1)
    output = tf.tanh(tf.matmul(tf.concat([context, query], 1), self.output_kernel))
    return output, alignments


def mask_bias(source_lengths, steps):
  """source_lengths [B] -> [B, steps] float32: 0 on real positions, -1e9 on padding."""
  return (1.0 - tf.sequence_mask(source_lengths, steps, tf.float32)) * -1e9
