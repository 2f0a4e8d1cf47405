"""Gradients that keep the unrolled graphs small and their backprop fast.

TensorFlow builds a bucket's backward pass op by op, in Python, at ~0.4 ms an op,
so the op count of the unrolled graphs is their build time. This module holds
what cuts it:

- the LSTM step gradient (see `cells.LSTMCell.step`): LSTMBlockCellGrad plus
  matmuls, registered for the IdentityN that ends each step;
- the LSTM sequence gradient (see `cells.LSTMCell.sequence`, the encoder's one
  BlockLSTM op per layer): LSTMBlockCellGrad and the recurrent matmul per step,
  the input and weight gradients as one matmul over all steps;
- `transposed`, `weight_matmul`: backprop multiplies by a transposed copy of each
  kernel made once per graph, as MatMul with transpose_b is 2-3x slower here;
- `gradients`: tf.gradients without zeros for IdentityN outputs that get no
  gradient (TensorFlow's optimize_identity_n), and with the weight gradients of
  the unrolled steps taken as one matmul per weight over every step's rows
  (`_WeightRows`) instead of one small matmul per step and their sum.
- `apply_mask`, `add_across_positions`, `plain_einsum`: a Mul, a broadcasting
  AddV2 and a two-operand Einsum with one-op gradients where TensorFlow's
  general ones add shape, reshape and constant ops.
- `expand_dims`, `softmax`: gradients without a Const of their own per call (a
  Squeeze; the shared last-axis constant).
- `graph_constant`: one Const per graph for each axis or size argument.
"""

import weakref

import tensorflow as tf
from tensorflow.python.ops import gradients_util

tf1 = tf.compat.v1

_PER_GRAPH = weakref.WeakKeyDictionary()
# The _WeightRows of the `gradients` call being built (None outside one).
_weight_rows = None


def graph_constant(value):
  """tf.constant(value) (an int or a tuple of ints), made once per graph or function
  body and shared: unrolled steps and their gradients would otherwise add one Const
  op per axis or size argument."""
  graph = tf1.get_default_graph()
  cache = _PER_GRAPH.setdefault(graph, {})
  if value not in cache:
    with graph.control_dependencies(None), tf1.name_scope(None):
      cache[value] = tf.constant(value, tf.int32, name="shared_constant")
  return cache[value]


def transposed(kernel, known=None):
  """tf.transpose(kernel) of a weight matrix, made once per graph and shared by every
  step's gradient (or `known`, a tensor already holding it, remembered for later calls):
  MatMul with transpose_b is 2-3x slower on this CPU than with the transposed matrix
  for the [B, out] x [out, in] products of backprop."""
  graph = tf1.get_default_graph()
  cache = _PER_GRAPH.setdefault(graph, {})
  key = ("transposed", kernel.ref())
  if known is not None:
    cache[key] = known
  if key not in cache:
    with graph.control_dependencies(None), tf1.name_scope(None):
      cache[key] = tf.transpose(kernel, name="transposed_kernel")
  return cache[key]


def _transpose_source(matrix):
  """W if `matrix` is tf.transpose(W) of a matrix W, else None."""
  op = matrix.op
  perm = tf.get_static_value(op.inputs[1]) if op.type == "Transpose" else None
  return op.inputs[0] if perm is not None and list(perm) == [1, 0] else None


class _WeightRows:
  """The rows that make a weight's gradient, gathered from every unrolled step.

  A weight used by T steps has gradient sum_t x_t^T dy_t. Per step that is T
  matmuls with only B rows each plus an AddN of T [in, out] matrices; `products`
  makes it one matmul over all T*B rows: fewer ops to build and a better-shaped
  product to run.
  """

  def __init__(self):
    self._rows = {}  # kernel.ref() -> (kernel, bias or None, [x column blocks], [dy])

  def add(self, kernel, columns, dy, bias=None):
    """kernel [in, out] gets columns^T dy: columns, a list of [N, k_i] (sum k_i = in, in
    kernel row order), dy [N, out]; bias [out] (optional) gets dy summed over rows."""
    entry = self._rows.setdefault(kernel.ref(), (kernel, bias, [], []))
    entry[2].append(columns)
    entry[3].append(dy)

  def products(self):
    """-> (tensors, their gradients): kernels (and biases) and the summed products.

    A kernel that is the transpose of a matrix W [out, in] (the output projection,
    from the target embedding or output weights) gets W's gradient instead,
    dy^T x: one product, where x^T dy would be transposed back (as costly as a
    quarter of the product, each training step).
    """
    tensors, grads = [], []
    zero, one = graph_constant(0), graph_constant(1)
    for kernel, bias, columns, dys in self._rows.values():
      dy = tf.concat(dys, zero)  # [T*N, out]
      x = [tf.concat(blocks, zero) for blocks in zip(*columns)]
      x = x[0] if len(x) == 1 else tf.concat(x, one)  # [T*N, in]
      source = _transpose_source(kernel)
      if source is None:
        tensors.append(kernel)
        grads.append(tf.matmul(x, dy, transpose_a=True))
      else:
        tensors.append(source)
        grads.append(tf.matmul(dy, x, transpose_a=True))
      if bias is not None:
        tensors.append(bias)
        grads.append(tf.reduce_sum(dy, axis=zero))
    return tensors, grads


@tf.RegisterGradient("WeightMatMul")
def _weight_matmul_grad(op, grad):
  """x [N, in] @ kernel [in, out]: dx = grad @ kernel^T through `transposed`; the
  kernel's gradient is left to _weight_rows inside `gradients`."""
  x, kernel = op.inputs
  x_grad = tf.matmul(grad, transposed(kernel))
  if _weight_rows is not None:
    _weight_rows.add(kernel, [x], grad)
    return x_grad, None
  return x_grad, tf.matmul(x, grad, transpose_a=True)


def weight_matmul(x, kernel):
  """x [N, in] @ kernel [in, out] -> [N, out], differentiated with `transposed(kernel)`."""
  with tf1.get_default_graph().gradient_override_map({"MatMul": "WeightMatMul"}):
    return tf.matmul(x, kernel)


@tf.RegisterGradient("LSTMBlockCellStep")
def _lstm_step_grad(op, h_grad, cs_grad, *unused_grads):
  """Gradients of one LSTM step: `op` is the IdentityN over [h, cs, cs_prev, h_prev, w, b,
  *inputs] that LSTMCell.step puts after LSTMBlockCell (peepholes off); h and cs get none,
  so TensorFlow never differentiates the cell op or the concat of its inputs itself.

  dicfo [B, 4*units] from LSTMBlockCellGrad is the gradient of the gate
  pre-activations; matmuls give the input, recurrent and weight gradients.
  """
  cell = op.inputs[0].op
  x, cs_prev, h_prev, w, wci, wcf, wco, b = cell.inputs
  i, cs, f, o, ci, co, h = cell.outputs
  cs_grad = tf.zeros_like(cs) if cs_grad is None else cs_grad
  h_grad = tf.zeros_like(h) if h_grad is None else h_grad
  cs_prev_grad, dicfo, _, _, _ = tf.raw_ops.LSTMBlockCellGrad(
      x=x, cs_prev=cs_prev, h_prev=h_prev, w=w, wci=wci, wcf=wcf, wco=wco, b=b, i=i, cs=cs,
      f=f, o=o, ci=ci, co=co, cs_grad=cs_grad, h_grad=h_grad, use_peephole=False)
  one = graph_constant(1)
  inputs = op.inputs[6:]
  sizes = tuple(t.shape[1] for t in inputs) + (h_prev.shape[1],)
  *input_grads, h_prev_grad = tf.split(tf.matmul(dicfo, transposed(w)),
                                       graph_constant(sizes), axis=one)
  if _weight_rows is not None:
    _weight_rows.add(op.inputs[4], [x, h_prev], dicfo, bias=op.inputs[5])
    w_grad = b_grad = None
  else:
    w_grad = tf.matmul(tf.concat([x, h_prev], one), dicfo, transpose_a=True)
    b_grad = tf.reduce_sum(dicfo, axis=graph_constant(0))
  return [None, None, cs_prev_grad, h_prev_grad, w_grad, b_grad] + input_grads


@tf.RegisterGradient("BlockLSTMSequence")
def _block_lstm_grad(op, *grads):
  """Gradients of a BlockLSTM over a whole sequence (peepholes off); see LSTMCell.sequence.

  Core TensorFlow's BlockLSTMGrad does every matmul with Eigen, about a third
  slower here than MatMul ops. So only the recurrence runs step by step (per
  step LSTMBlockCellGrad -> dicfo [B, 4*units], and the recurrent matmul), and the
  input, weight and bias gradients are one matmul (or sum) over all T*B rows.
  """
  _, x, cs_prev, h_prev, w, wci, wcf, wco, b = op.inputs
  i, cs, f, o, ci, co, h = op.outputs
  cs_grad, h_grad = (tf.zeros_like(t) if g is None else g
                     for t, g in ((cs, grads[1]), (h, grads[6])))
  steps, batch, input_size = x.shape
  units = h_prev.shape[1]
  zero = graph_constant(0)
  w_x_t, w_h_t = tf.split(transposed(w), graph_constant((input_size, units)),
                         axis=graph_constant(1))
  per_step = [tf.unstack(t, num=steps) for t in (x, i, cs, f, o, ci, co, cs_grad, h_grad)]
  x_t, i_t, cs_t, f_t, o_t, ci_t, co_t, cs_grad_t, h_grad_t = per_step
  cs_prev_t, h_prev_t = [cs_prev] + cs_t[:-1], [h_prev] + tf.unstack(h, num=steps)[:-1]
  dicfo = [None] * steps
  d_cs, d_h = cs_grad_t[-1], h_grad_t[-1]
  for t in reversed(range(steps)):
    if t < steps - 1:
      d_cs, d_h = d_cs + cs_grad_t[t], d_h + h_grad_t[t]
    d_cs, dicfo[t], _, _, _ = tf.raw_ops.LSTMBlockCellGrad(
        x=x_t[t], cs_prev=cs_prev_t[t], h_prev=h_prev_t[t], w=w, wci=wci, wcf=wcf, wco=wco,
        b=b, i=i_t[t], cs=cs_t[t], f=f_t[t], o=o_t[t], ci=ci_t[t], co=co_t[t], cs_grad=d_cs,
        h_grad=d_h, use_peephole=False)
    d_h = tf.matmul(dicfo[t], w_h_t)
  rows = graph_constant((steps * batch, 4 * units))
  flat = tf.reshape(tf.stack(dicfo), rows)  # [T*B, 4*units]
  x_grad = tf.reshape(tf.matmul(flat, w_x_t),
                      graph_constant((steps, batch, input_size)))
  inputs = tf.reshape(tf.concat([x, tf.stack(h_prev_t)], graph_constant(2)),
                      graph_constant((steps * batch, input_size + units)))
  w_grad = tf.matmul(inputs, flat, transpose_a=True)
  b_grad = tf.reduce_sum(flat, axis=zero)
  return [None, x_grad, d_cs, d_h, w_grad, None, None, None, b_grad]


def _reads(loss, variables):
  """Per variable, the tensors through which `loss` uses it: the outputs of its
  ReadVariableOps that loss depends on; or, if an op in loss's graph takes the
  variable itself (e.g. ResourceGather), its handle alone (every read is
  downstream of the handle, so its gradient already includes theirs). A tensor
  among `variables` stands for itself.

  tf.gradients from these rather than from the variables visits only the ops
  between them and loss; from a variable it visits every consumer of the variable
  in the graph (every bucket's ops, their gradients and the optimizer's).
  """
  handles = [getattr(v, "handle", v) for v in variables]
  index = {h.ref(): i for i, (h, v) in enumerate(zip(handles, variables)) if h is not v}
  found = [{} for _ in variables]  # tensor.ref() -> tensor
  seen, pending = {loss.op}, [loss.op]
  while pending:
    op = pending.pop()
    for tensor in op.inputs:
      i = index.get(tensor.ref())
      if i is not None:
        used = op.outputs[0] if op.type == "ReadVariableOp" else tensor
        found[i][used.ref()] = used
      elif tensor.op not in seen:
        seen.add(tensor.op)
        pending.append(tensor.op)
  return [[h] if h.ref() not in index or h.ref() in f else list(f.values())
          for h, f in zip(handles, found)]


def _sum(grads):
  """The sum of the gradients that are not None (None if all are)."""
  grads = [g for g in grads if g is not None]
  if len(grads) <= 1:
    return grads[0] if grads else None
  return tf.add_n([tf.convert_to_tensor(g) for g in grads])


def gradients(loss, variables):
  """tf.gradients(loss, variables), except that:

  - it differentiates with respect to the reads of each variable that loss
    depends on (`_reads`), which keeps the graph traversal of each bucket's
    gradients to that bucket's own ops;
  - IdentityN outputs without a gradient get no zeros (TensorFlow's
    optimize_identity_n): each LSTM step would otherwise add five ZerosLike ops
    for the cell outputs it does not use;
  - the LSTM steps' and weight_matmul's weight gradients are gathered
    (`_WeightRows`), taken after the backward pass as one product per weight, and
    carried back to the reads by a second, small tf.gradients from the kernels
    (reads, splits, transposes).
  """
  global _weight_rows
  helper = gradients_util._GradientsHelper  # pylint: disable=protected-access
  reads = _reads(loss, variables)
  xs = [x for per_variable in reads for x in per_variable]
  with tf1.get_default_graph()._mutation_lock():  # pylint: disable=protected-access
    _weight_rows = rows = _WeightRows()
    try:
      grads = helper([loss], xs, optimize_identity_n=True)
    finally:
      _weight_rows = None
    tensors, tensor_grads = rows.products()
    if tensors:
      grads = [_sum(pair) for pair in zip(grads, helper(tensors, xs, grad_ys=tensor_grads))]
  per_variable, start = [], 0
  for variable_reads in reads:
    per_variable.append(_sum(grads[start:start + len(variable_reads)]))
    start += len(variable_reads)
  return per_variable


@tf.RegisterGradient("MaskMul")
def _mask_mul_grad(op, grad):
  """x * mask with a constant mask (dropout): the gradient of x only."""
  return grad * op.inputs[1], None


def apply_mask(x, mask):
  """x * mask, differentiated for x only (a plain Mul also builds the mask's gradient)."""
  with tf1.get_default_graph().gradient_override_map({"Mul": "MaskMul"}):
    return tf.multiply(x, mask)


@tf.RegisterGradient("AddAcrossPositions")
def _add_across_positions_grad(op, grad):
  """[B, I, H] + [B, 1, H]: the second operand's gradient sums over positions."""
  return grad, tf.reduce_sum(grad, axis=graph_constant(1), keepdims=True)


def add_across_positions(x, y):
  """x [B, I, H] + y [B, 1, H], with a one-op gradient for y (TensorFlow's broadcasting
  AddV2 gradient adds shape and reshape ops)."""
  with tf1.get_default_graph().gradient_override_map({"AddV2": "AddAcrossPositions"}):
    return tf.add(x, y)


@tf.RegisterGradient("PlainEinsum")
def _plain_einsum_grad(op, grad):
  """Gradient of a two-operand einsum "A,B->C" in which every index of one operand
  also appears in the other or in C: dA = einsum("C,B->A"), dB = einsum("A,C->B")
  (TensorFlow's general Einsum gradient adds reshape and shape ops to each)."""
  a, b = op.inputs
  operands, out = op.get_attr("equation").decode().split("->")
  sub_a, sub_b = operands.split(",")
  return tf.einsum(f"{out},{sub_b}->{sub_a}", grad, b), tf.einsum(f"{sub_a},{out}->{sub_b}",
                                                                 a, grad)


def plain_einsum(equation, a, b):
  """tf.einsum(equation, a, b) with `_plain_einsum_grad` as its gradient."""
  operands, out = equation.split("->")
  sub_a, sub_b = operands.split(",")
  assert set(sub_a) <= set(sub_b + out) and set(sub_b) <= set(sub_a + out), equation
  with tf1.get_default_graph().gradient_override_map({"Einsum": "PlainEinsum"}):
    return tf.einsum(equation, a, b)


@tf.RegisterGradient("ExpandDimsBySqueeze")
def _expand_dims_grad(op, grad):
  """The gradient of expand_dims, one Squeeze (TensorFlow's is a Reshape to the input's
  shape, with a Const of that shape)."""
  return tf.squeeze(grad, [int(tf.get_static_value(op.inputs[1]))]), None


def expand_dims(x, axis):
  """tf.expand_dims(x, axis) (axis: a Python int) with `_expand_dims_grad`."""
  with tf1.get_default_graph().gradient_override_map({"ExpandDims": "ExpandDimsBySqueeze"}):
    return tf.expand_dims(x, graph_constant(axis))


@tf.RegisterGradient("SoftmaxSharedAxis")
def _softmax_grad(op, grad):
  """(grad - sum(grad * softmax over the last axis)) * softmax, the axis a shared constant."""
  probs = op.outputs[0]
  summed = tf.reduce_sum(grad * probs, axis=graph_constant(-1), keepdims=True)
  return (grad - summed) * probs


def softmax(logits):
  """tf.nn.softmax(logits) over the last axis, with `_softmax_grad`."""
  with tf1.get_default_graph().gradient_override_map({"Softmax": "SoftmaxSharedAxis"}):
    return tf.nn.softmax(logits)
