"""LSTM and GRU layers over tf.compat.v1.get_variable, shaped for unrolled graphs.

Each layer keeps one kernel [in + units, G*units] whose rows are the input rows
followed by the recurrent rows. The part of the input known for a whole
sequence is projected in one large matmul (`project`: [T, B, in'] ->
[T, B, G*units], bias included); each unrolled step then multiplies only the
rest ([x_rest; h] or h) by the remaining rows. Plain MatMul ops (oneDNN on CPU)
run the backward pass much faster here than TensorFlow's fused BlockLSTM kernels.

States are tuples of [B, units] float32: LSTM (c, h), GRU (h,); the output is h.
"""

import tensorflow as tf

tf1 = tf.compat.v1


def read(variable):
  """One read of `variable` that every use in the graph shares (a resource variable
  would otherwise get a ReadVariableOp per use, i.e. per unrolled step)."""
  return tf.identity(variable)


class _Layer:
  """Kernel layout and row slicing shared by both cells."""

  gates = None

  def __init__(self, input_size, units, name, bias_init=None):
    self.input_size, self.units = input_size, units
    if bias_init is None:
      bias_init = tf.zeros([self.gates * units])
    with tf1.variable_scope(name):
      self.kernel = read(tf1.get_variable("kernel", [input_size + units, self.gates * units]))
      self.bias = read(tf1.get_variable("bias", initializer=bias_init))
    self._rows = {}

  def rows(self, start, stop=None):
    """kernel[start:stop], sliced once per graph and reused by every step."""
    key = (start, stop)
    if key not in self._rows:
      self._rows[key] = self.kernel[start:stop]
    return self._rows[key]

  def project(self, x):
    """x [T, B, k] (the first k input features) -> [T, B, G*units], bias included."""
    k = x.shape[-1]
    flat = tf.reshape(x, [-1, k])
    projected = tf.matmul(flat, self.rows(0, k)) + self.bias
    return tf.reshape(projected, tf.concat([tf.shape(x)[:-1], [self.gates * self.units]], 0))

  def zero_state(self, batch):
    raise NotImplementedError

  def step(self, state, x=None, projected=None):
    raise NotImplementedError

  def sequence(self, x, state):
    """x [T, B, in] -> (outputs [T, B, units], states: tuple of [T, B, units])."""
    steps = x.shape[0]
    projected = tf.unstack(self.project(x), num=steps)
    outputs, history = [], []
    for t in range(steps):
      h, state = self.step(state, projected=projected[t])
      outputs.append(h)
      history.append(state)
    return tf.stack(outputs), tuple(tf.stack(s) for s in zip(*history))


class LSTMCell(_Layer):
  """LSTM, gate order i, f, o, g; forget-gate bias initialised to 1 (Jozefowicz et al., 2015)."""

  gates = 4

  def __init__(self, input_size, units, name):
    super().__init__(input_size, units, name, bias_init=tf.concat(
        [tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], 0))

  def zero_state(self, batch):
    zeros = tf.zeros([batch, self.units])
    return (zeros, zeros)

  def step(self, state, x=None, projected=None):
    """One step. projected [B, 4*units]: `project` of the leading input features (or
    None); x [B, k]: the remaining input features (or None) -> (h [B, units], (c, h))."""
    c, h = state
    z = self._gates(h, x, projected)
    sigmoids, g = tf.split(z, [3 * self.units, self.units], axis=1)
    i, f, o = tf.split(tf.sigmoid(sigmoids), 3, axis=1)
    c = f * c + i * tf.tanh(g)
    h = o * tf.tanh(c)
    return h, (c, h)

  def _gates(self, h, x, projected):
    rest = h if x is None else tf.concat([x, h], 1)
    z = tf.matmul(rest, self.rows(self.input_size + self.units - rest.shape[-1]))
    return z + (self.bias if projected is None else projected)


class GRUCell(_Layer):
  """GRU, the cuDNN variant: the reset gate scales the recurrent candidate term."""

  gates = 3

  def __init__(self, input_size, units, name):
    super().__init__(input_size, units, name)
    with tf1.variable_scope(name):
      self.recurrent_bias = read(tf1.get_variable("recurrent_bias",
                                                  initializer=tf.zeros([3 * units])))

  def zero_state(self, batch):
    return (tf.zeros([batch, self.units]),)

  def step(self, state, x=None, projected=None):
    """As LSTMCell.step -> (h [B, units], (h,))."""
    h = state[0]
    z_x = self.bias if projected is None else projected
    if x is not None:
      z_x += tf.matmul(x, self.rows(self.input_size - x.shape[-1], self.input_size))
    z_h = tf.matmul(h, self.rows(self.input_size)) + self.recurrent_bias
    x_r, x_z, x_n = tf.split(z_x, 3, axis=1)
    h_r, h_z, h_n = tf.split(z_h, 3, axis=1)
    r = tf.sigmoid(x_r + h_r)
    u = tf.sigmoid(x_z + h_z)
    h = (1.0 - u) * tf.tanh(x_n + r * h_n) + u * h
    return h, (h,)


def make_cell(kind, input_size, units, name):
  return (LSTMCell if kind == "lstm" else GRUCell)(input_size, units, name)
