"""LSTM and GRU layers over tf.compat.v1.get_variable, shaped for unrolled graphs.

The training LSTM step is TensorFlow's fused LSTMBlockCell kernel: one op per
unrolled step instead of about fifteen, which keeps the graphs of every bucket
small enough to build in seconds. Core TensorFlow no longer registers its
gradient: the step ends in an IdentityN whose gradient `gradients.py` supplies.
Decoding loops hold one step, not one per position, so there the step is a
matmul and elementwise ops, which XLA can compile (it has no LSTMBlockCell
kernel). A whole training sequence (the encoder) is one BlockLSTM op, same gates
and weights, with a gradient from `gradients.py` too.

Each layer keeps one kernel [in + units, G*units] whose rows are the input rows
followed by the recurrent rows. States are tuples of [B, units] float32: LSTM
(c, h), GRU (h,); the output is h.
"""

import tensorflow as tf

from seq2seq_buckets.gradients import graph_constant

tf1 = tf.compat.v1


# Zero columns added to decoding steps' gate kernels whose width is a multiple of 512
# (see LSTMCell.cache_step_weights).
STEP_PAD = 16


def read(variable):
  """One read of `variable` (one op) that every use in a model's graph pieces shares: a
  resource variable would otherwise get a ReadVariableOp per use, i.e. per unrolled
  step. (Each bucket's training graph has a model of its own, see
  `Seq2SeqModel.with_own_reads`.)"""
  return variable.value()


class _Layer:
  """A kernel [input_size + units, gates * units] and a bias, created under `name`."""

  gates = None
  _embedding_gates = None

  def __init__(self, input_size, units, name, bias_init=None):
    """bias_init: the bias's initial values (a list), zeros if None. (Initializers, not
    tensors: a model built again over the same variables adds no initial-value ops.)"""
    self.input_size, self.units = input_size, units
    bias_init = tf1.constant_initializer(bias_init or 0.0)
    with tf1.variable_scope(name):
      self.kernel = read(tf1.get_variable("kernel", [input_size + units, self.gates * units]))
      self.bias = read(tf1.get_variable("bias", [self.gates * units], initializer=bias_init))

  def zero_state(self, batch):
    raise NotImplementedError

  def step(self, state, inputs, differentiable=True):
    raise NotImplementedError

  def cache_step_weights(self, cache, embedding=None):
    """For decoding graphs: cache(name, value) -> (read, fill op) holds weights that the
    non-differentiable `step` uses; returns the fill ops. This layer keeps none."""
    del cache, embedding
    return []

  @property
  def takes_ids(self):
    """Whether decoding steps take piece ids as their first input (see LSTMCell)."""
    return self._embedding_gates is not None

  def sequence(self, x, state, differentiable=True):
    """x [T, B, in] -> (outputs [T, B, units], states: tuple of [T, B, units]).
    Unrolled when T is static; otherwise (decoding a source of any length) the step
    runs in a while loop."""
    if x.shape[0] is None:
      states = tf.scan(lambda state, x_t: self.step(state, [x_t], differentiable)[1], x,
                       initializer=tuple(state))
      return states[-1], states
    outputs, history = [], []
    for x_t in tf.unstack(x, num=x.shape[0]):
      h, state = self.step(state, [x_t], differentiable)
      outputs.append(h)
      history.append(state)
    return tf.stack(outputs), tuple(tf.stack(s) for s in zip(*history))


def _concat(inputs):
  """inputs: list of [B, k_i] -> [B, sum k_i]."""
  return inputs[0] if len(inputs) == 1 else tf.concat(inputs, graph_constant(1))


class LSTMCell(_Layer):
  """LSTM in LSTMBlockCell's gate order i, g, f, o; forget-gate bias initialised to 1
  (Jozefowicz et al., 2015); no peepholes, no cell clipping."""

  gates = 4

  def __init__(self, input_size, units, name):
    super().__init__(input_size, units, name,
                     bias_init=[0.0] * (2 * units) + [1.0] * units + [0.0] * units)
    self._no_peephole = tf.zeros([units])
    self._step_weights = (self.kernel, self.bias)

  def cache_step_weights(self, cache, embedding=None):
    """Decoding steps then multiply by cached copies of the kernel and bias padded with
    zero columns to a count that is not a multiple of 512 (`STEP_PAD`): on one thread
    TensorFlow's MatMul ran [128, 768] x [768, 1024] at ~35 GFLOP/s and x [768, 1040]
    at ~66-84 here. The padded gates are computed and ignored.

    embedding: None, or [V, E] when the layer's first input is a row of it (the first
    layer of the decoder and of the encoder). Its steps then take piece ids [B] int32
    for that input (see `step` and `sequence`) and gather their share of the gates,
    embedding @ kernel[:E] + bias, cached for every piece [V, gates], instead of
    multiplying [B, E] x [E, gates].
    """
    columns = self.gates * self.units
    pad = [[0, 0 if columns % 512 else STEP_PAD]]
    kernel, bias = tf.pad(self.kernel, [[0, 0]] + pad), tf.pad(self.bias, pad)
    if embedding is not None:
      gates, fill_gates = cache("embedding_gates",
                                tf.matmul(embedding, kernel[:embedding.shape[1]]) + bias)
      kernel, fill_kernel = cache("step_kernel", kernel[embedding.shape[1]:])
      self._embedding_gates = gates
      self._step_weights = (kernel, None)
      return [fill_gates, fill_kernel]
    if not pad[0][1]:
      return []
    kernel, fill_kernel = cache("step_kernel", kernel)
    bias, fill_bias = cache("step_bias", bias)
    self._step_weights = (kernel, bias)
    return [fill_kernel, fill_bias]

  def zero_state(self, batch):
    zeros = tf.zeros([batch, self.units])
    return (zeros, zeros)

  def sequence(self, x, state, differentiable=True):
    """x [T, B, in] -> (outputs [T, B, units], states (c, h): [T, B, units] each).

    differentiable (training): one fused BlockLSTM op for all T steps (same gate
    order and weights as `step`), whose gradient gradients.py supplies. Otherwise
    (encoding to decode) the inputs' share of every step's gates is one matmul
    [T * B, in] x [in, gates] (or, when the layer takes ids, x is piece ids [T, B]
    int32 and a gather from the cached table, see cache_step_weights) and a while
    loop adds the recurrent share step by step, on the step weights: BlockLSTM's own
    multiply ran the recipe model's encoder at <= 46 GFLOP/s on one thread, MatMul
    runs these shapes at ~70.
    """
    c, h = state
    if not differentiable:
      kernel, bias = self._step_weights
      if self.takes_ids:
        projected, recurrent_rows = tf.gather(self._embedding_gates, x), kernel
      else:
        input_rows, recurrent_rows = tf.split(kernel, [self.input_size, self.units])
        shape = tf.shape(x)
        projected = tf.reshape(
            tf.matmul(tf.reshape(x, [-1, self.input_size]), input_rows) + bias,
            [shape[0], shape[1], kernel.shape[1]])
      step = lambda state, gates: self._update(gates + tf.matmul(state[1], recurrent_rows),
                                               state[0])[1]
      c, h = tf.scan(step, projected, initializer=(c, h))
      return h, (c, h)
    with tf1.get_default_graph().gradient_override_map({"BlockLSTM": "BlockLSTMSequence"}):
      block = tf.raw_ops.BlockLSTM(
          seq_len_max=tf.shape(x, out_type=tf.int64)[0], x=x, cs_prev=c, h_prev=h,
          w=self.kernel, wci=self._no_peephole, wcf=self._no_peephole, wco=self._no_peephole,
          b=self.bias, forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
    return block.h, (block.cs, block.h)

  def _update(self, gates, c):
    """gates [B, 4 * units (+ padding)]: a step's gates before their nonlinearities,
    c [B, units] -> (h [B, units], (c, h)) after the step."""
    padding = gates.shape[1] - 4 * self.units
    sizes = [self.units] * 4 + ([padding] if padding else [])
    i, g, f, o = tf.split(gates, sizes, axis=1)[:4]
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return h, (c, h)

  def step(self, state, inputs, differentiable=True):
    """state (c, h), inputs: list of [B, k_i] (sum k_i = input_size, in kernel row order)
    -> (h [B, units], (c, h)). differentiable (training): the fused LSTMBlockCell
    with the IdentityN that carries its gradient. Otherwise (decoding) the same
    step from a matmul and elementwise ops: XLA-compiled loops need them, and in
    TensorFlow's loops they run as fast as LSTMBlockCell (same process,
    alternating passes on the recipe model: greedy 0.99x, beam 5 1.07x). After
    cache_step_weights with an embedding, inputs[0] is piece ids [B] int32."""
    c, h = state
    if not differentiable:
      kernel, bias = self._step_weights
      if self.takes_ids:
        ids, inputs = inputs[0], inputs[1:]
        return self._update(tf.gather(self._embedding_gates, ids) +
                            tf.matmul(_concat(list(inputs) + [h]), kernel), c)
      return self._update(tf.matmul(_concat(list(inputs) + [h]), kernel) + bias, c)
    cell = tf.raw_ops.LSTMBlockCell(
        x=_concat(inputs), cs_prev=c, h_prev=h, w=self.kernel, wci=self._no_peephole,
        wcf=self._no_peephole, wco=self._no_peephole, b=self.bias, forget_bias=0.0,
        cell_clip=-1.0, use_peephole=False)
    with tf1.get_default_graph().gradient_override_map({"IdentityN": "LSTMBlockCellStep"}):
      h, cs = tf.identity_n([cell.h, cell.cs, c, h, self.kernel, self.bias] + list(inputs))[:2]
    return h, (cs, h)


class GRUCell(_Layer):
  """GRU, the cuDNN variant: the reset gate scales the recurrent candidate term."""

  gates = 3

  def __init__(self, input_size, units, name):
    super().__init__(input_size, units, name)
    with tf1.variable_scope(name):
      self.recurrent_bias = read(tf1.get_variable("recurrent_bias", [3 * units],
                                                  initializer=tf1.zeros_initializer()))
    self._input_rows, self._recurrent_rows = tf.split(self.kernel, [input_size, units])

  def zero_state(self, batch):
    return (tf.zeros([batch, self.units]),)

  def step(self, state, inputs, differentiable=True):
    """As LSTMCell.step -> (h [B, units], (h,)); always made of ops XLA compiles."""
    h = state[0]
    z_x = tf.matmul(_concat(inputs), self._input_rows) + self.bias
    z_h = tf.matmul(h, self._recurrent_rows) + self.recurrent_bias
    x_r, x_z, x_n = tf.split(z_x, 3, axis=1)
    h_r, h_z, h_n = tf.split(z_h, 3, axis=1)
    r = tf.sigmoid(x_r + h_r)
    u = tf.sigmoid(x_z + h_z)
    h = (1.0 - u) * tf.tanh(x_n + r * h_n) + u * h
    return h, (h,)


def make_cell(kind, input_size, units, name):
  return (LSTMCell if kind == "lstm" else GRUCell)(input_size, units, name)
