"""Recurrent layers over tf.compat.v1.get_variable: a fused LSTM and a plain GRU.

LSTM runs on TensorFlow's fused BlockLSTM kernel (whole sequence in one op, its
gradient registered in core TensorFlow); a single decoder step is a length-1
sequence. GRU is written out from matmuls (the cuDNN variant: the reset gate
applies to the recurrent candidate term).

States are tuples of [B, units] float32: LSTM (c, h), GRU (h,); the output is h.
"""

import tensorflow as tf

tf1 = tf.compat.v1


class LSTMCell:

  def __init__(self, input_size, units, name):
    self.units = units
    with tf1.variable_scope(name):
      self.kernel = read(tf1.get_variable("kernel", [input_size + units, 4 * units]))
      self.bias = read(tf1.get_variable("bias", initializer=tf.zeros([4 * units])))
    self._no_peephole = tf.zeros([units])

  def zero_state(self, batch):
    zeros = tf.zeros([batch, self.units])
    return (zeros, zeros)

  def sequence(self, x, state):
    """x [T, B, in] -> (outputs [T, B, units], states ([T, B, units] c, [T, B, units] h))."""
    steps = x.shape[0]
    _, c, _, _, _, _, h = tf.raw_ops.BlockLSTM(
        seq_len_max=tf.constant(steps, tf.int64) if steps else tf.cast(tf.shape(x)[0], tf.int64),
        x=x, cs_prev=state[0], h_prev=state[1],
        w=self.kernel, wci=self._no_peephole, wcf=self._no_peephole, wco=self._no_peephole,
        b=self.bias, forget_bias=1.0, cell_clip=-1.0, use_peephole=False)
    return h, (c, h)

  def step(self, x, state):
    """x [B, in] -> (output [B, units], new state)."""
    _, (c, h) = self.sequence(tf.expand_dims(x, 0), state)
    h = tf.squeeze(h, 0)
    return h, (tf.squeeze(c, 0), h)


class GRUCell:

  def __init__(self, input_size, units, name):
    self.units = units
    with tf1.variable_scope(name):
      self.input_kernel = read(tf1.get_variable("input_kernel", [input_size, 3 * units]))
      self.recurrent_kernel = read(tf1.get_variable("recurrent_kernel", [units, 3 * units]))
      self.bias = read(tf1.get_variable("bias", initializer=tf.zeros([3 * units])))
      self.recurrent_bias = read(tf1.get_variable("recurrent_bias",
                                                  initializer=tf.zeros([3 * units])))

  def zero_state(self, batch):
    return (tf.zeros([batch, self.units]),)

  def sequence(self, x, state):
    """x [T, B, in] -> (outputs [T, B, units], states ([T, B, units] h,))."""
    steps = x.shape[0]
    projected = tf.einsum("tbi,ig->tbg", x, self.input_kernel) + self.bias
    outputs = []
    for t in range(steps):
      h, state = self._recur(projected[t], state)
      outputs.append(h)
    outputs = tf.stack(outputs)
    return outputs, (outputs,)

  def step(self, x, state):
    return self._recur(tf.matmul(x, self.input_kernel) + self.bias, state)

  def _recur(self, projected, state):
    x_r, x_z, x_n = tf.split(projected, 3, axis=1)
    h_r, h_z, h_n = tf.split(tf.matmul(state[0], self.recurrent_kernel) + self.recurrent_bias,
                             3, axis=1)
    r = tf.sigmoid(x_r + h_r)
    z = tf.sigmoid(x_z + h_z)
    h = (1.0 - z) * tf.tanh(x_n + r * h_n) + z * state[0]
    return h, (h,)


def read(variable):
  """One read of `variable` that every use in the graph shares (a resource variable
  would otherwise get a ReadVariableOp per use, i.e. per unrolled step)."""
  return tf.identity(variable)


def make_cell(kind, input_size, units, name):
  return (LSTMCell if kind == "lstm" else GRUCell)(input_size, units, name)
