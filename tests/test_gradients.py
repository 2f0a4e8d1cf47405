"""The graph-size-saving gradients equal TensorFlow's own on the same computation."""

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import cells
from seq2seq_buckets import gradients as grads_lib

tf1 = tf.compat.v1


def run_both(build):
  """build(ours: bool) -> (loss, inputs) in a fresh graph; returns both runs' gradients."""
  results = []
  for ours in (True, False):
    graph = tf.Graph()
    with graph.as_default():
      loss, inputs = build(ours)
      grads = tf.gradients(loss, inputs)
      with tf1.Session(graph=graph) as session:
        results.append(session.run(grads))
  return results


def values(shape, seed):
  return tf.constant(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_apply_mask_gradient_is_the_plain_multiply_gradient():
  def build(ours):
    x, mask = values([4, 6], 0), tf.constant(np.random.default_rng(1).integers(0, 2, [4, 6]),
                                             tf.float32)
    y = grads_lib.apply_mask(x, mask) if ours else x * mask
    return tf.reduce_sum(tf.sin(y)), [x]
  ours, theirs = run_both(build)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)


def test_add_across_positions_gradient_is_the_broadcast_add_gradient():
  def build(ours):
    x, y = values([3, 5, 4], 0), values([3, 1, 4], 1)
    z = grads_lib.add_across_positions(x, y) if ours else x + y
    return tf.reduce_sum(tf.tanh(z) * values([3, 5, 4], 2)), [x, y]
  ours, theirs = run_both(build)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_expand_dims_gradient_is_tensorflows_and_adds_no_const(axis):
  def build(ours):
    x = values([3, 4], 0)
    y = grads_lib.expand_dims(x, axis) if ours else tf.expand_dims(x, axis)
    weights = values(y.shape.as_list(), 1)
    if ours:
      before = len(tf1.get_default_graph().get_operations())
      assert tf.gradients(y, x, weights)[0].op.type == "Squeeze"
      added = tf1.get_default_graph().get_operations()[before:]
      assert sorted(op.type for op in added) == ["Identity", "Squeeze"]  # Identity: grad_ys
    return tf.reduce_sum(tf.sin(y) * weights), [x]
  ours, theirs = run_both(build)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)


def test_softmax_gradient_is_tensorflows():
  def build(ours):
    x = values([3, 7], 0)
    y = grads_lib.softmax(x) if ours else tf.nn.softmax(x)
    return tf.reduce_sum(tf.sin(3.0 * y) * values([3, 7], 1)), [x]
  ours, theirs = run_both(build)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("known", [False, True])
def test_weight_matmul_gradient_is_the_matmul_gradient(known):
  """With the kernel's transpose made by `transposed` or given to it (as the model gives
  the output projection's)."""
  def build(ours):
    x, weights = values([5, 3], 0), values([4, 3], 1)
    kernel = tf.transpose(weights)
    if ours and known:
      grads_lib.transposed(kernel, known=weights)
    y = grads_lib.weight_matmul(x, kernel) if ours else tf.matmul(x, kernel)
    return tf.reduce_sum(tf.sin(y)), [x, weights]
  ours, theirs = run_both(build)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("equation, shapes", [
    ("bih,h->bi", ([3, 5, 4], [4])), ("bi,bih->bh", ([3, 5], [3, 5, 4])),
    ("bih,hk->bik", ([3, 5, 4], [4, 2])), ("bih,bh->bi", ([3, 5, 4], [3, 4]))])
def test_plain_einsum_gradient_is_the_einsum_gradient(equation, shapes):
  def build(ours):
    a, b = values(shapes[0], 0), values(shapes[1], 1)
    out = grads_lib.plain_einsum(equation, a, b) if ours else tf.einsum(equation, a, b)
    return tf.reduce_sum(tf.sin(out)), [a, b]
  ours, theirs = run_both(build)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_plain_einsum_refuses_an_index_summed_within_one_operand():
  with tf.Graph().as_default(), pytest.raises(AssertionError):
    grads_lib.plain_einsum("bij,b->b", values([2, 3, 4], 0), values([2], 1))


def unrolled(cell, x, state):
  """cell's outputs [T, B, units] and final state, one LSTMCell.step per step of x [T, B, in]."""
  outputs = []
  for x_t in tf.unstack(x):
    h, state = cell.step(state, [x_t])
    outputs.append(h)
  return tf.stack(outputs), state


def test_gradients_equal_tf_gradients_through_lstm_steps():
  """`gradients` (no zeros for unused IdentityN outputs, each weight's gradient one
  product over the rows of every step) gives tf.gradients' values (per-step products)."""
  graph = tf.Graph()
  with graph.as_default():
    cell = cells.LSTMCell(3, 4, "lstm")
    outputs, _ = unrolled(cell, values([5, 2, 3], 0), cell.zero_state(2))
    loss = tf.reduce_sum(tf.sin(outputs))
    params = tf1.trainable_variables()
    ours, theirs = grads_lib.gradients(loss, params), tf.gradients(loss, params)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      for a, b in zip(*session.run([ours, theirs])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradients_gathers_weight_matmul_rows_across_steps():
  """A kernel split from a variable and used by weight_matmul at several steps, and the
  variable also read by a plain op: `gradients` (one product per kernel, carried back
  through the split) equals tf.gradients over plain matmuls."""
  graph = tf.Graph()
  with graph.as_default():
    variable = tf1.get_variable("w", initializer=values([6, 3], 0))
    x = values([4, 3], 1)

    def loss(matmul):
      top, bottom = tf.split(tf.identity(variable), 2)
      h = x
      for _ in range(3):
        h = tf.tanh(matmul(h, top) + matmul(h, bottom))
      return tf.reduce_sum(tf.sin(h)) + tf.reduce_sum(tf.square(variable))
    ours = grads_lib.gradients(loss(grads_lib.weight_matmul), [variable])
    theirs = tf.gradients(loss(tf.matmul), [variable])
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      a, b, w = session.run([ours[0], theirs[0], variable])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.abs(a - 2 * w).min() > 1e-3  # the matmul paths reach every entry


def test_gradients_of_a_transposed_kernel_reach_the_matrix_without_transposing_back():
  """weight_matmul with tf.transpose(W) as its kernel (the output projection) at several
  steps: `gradients` takes W's gradient as one product dy^T x, equal to tf.gradients."""
  graph = tf.Graph()
  with graph.as_default():
    variable = tf1.get_variable("w", initializer=values([5, 3], 0))  # [out, in]
    x = values([4, 3], 1)

    def loss(matmul):
      kernel = tf.transpose(variable.value())  # [in, out]
      return sum(tf.reduce_sum(tf.sin(matmul(x * (t + 1.0), kernel))) for t in range(3))
    ours_loss = loss(grads_lib.weight_matmul)
    before = len(graph.get_operations())
    ours = grads_lib.gradients(ours_loss, [variable])
    made = [op.type for op in graph.get_operations()[before:]]
    theirs = tf.gradients(loss(tf.matmul), [variable])
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      a, b = session.run([ours[0], theirs[0]])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert made.count("Transpose") == 1  # the kernel's transpose for x's gradient only


def test_gradients_of_a_variable_read_several_ways():
  """A variable read twice, gathered from directly (ResourceGather on its handle) and
  also used by an op outside loss: `gradients` differentiates from the reads and the
  handle that loss uses, and equals tf.gradients."""
  graph = tf.Graph()
  with graph.as_default():
    variable = tf1.get_variable("w", initializer=values([5, 3], 0))
    unused = tf1.get_variable("u", initializer=values([2], 1))
    other = tf.reduce_sum(tf.identity(variable))  # another consumer, not in loss
    rows = tf.gather(variable, [0, 3, 3])
    loss = tf.reduce_sum(tf.sin(tf.identity(variable)) * 2.0) + tf.reduce_sum(
        tf.square(variable.read_value())) + tf.reduce_sum(tf.tanh(rows))
    ours = grads_lib.gradients(loss, [variable, unused])
    theirs = tf.gradients(loss, [variable, unused])
    assert ours[1] is None and theirs[1] is None and other.op.type == "Sum"
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      a, b = session.run([tf.convert_to_tensor(ours[0]), tf.convert_to_tensor(theirs[0])])
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_decoding_lstm_step_equals_the_fused_training_step():
  """LSTMCell.step for decoding (matmul and elementwise ops) gives the fused
  LSTMBlockCell's h and c, over several steps from a non-zero state."""
  graph = tf.Graph()
  with graph.as_default():
    cell = cells.LSTMCell(3, 4, "lstm")
    results = []
    for differentiable in (True, False):
      state = (values([2, 4], 1), values([2, 4], 2))
      for t in range(3):
        _, state = cell.step(state, [values([2, 3], 3 + t)], differentiable)
      results.append(state)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      (fused_c, fused_h), (plain_c, plain_h) = session.run(results)
  np.testing.assert_allclose(plain_c, fused_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(plain_h, fused_h, rtol=1e-5, atol=1e-6)
  assert np.abs(fused_h).max() > 0.1  # not trivially equal


@pytest.mark.parametrize("reference", ["steps", "core_block_lstm_grad"])
def test_sequence_gradient_equals_step_and_core_gradients(reference):
  """LSTMCell.sequence (BlockLSTM with our gradient) against the same LSTM unrolled step
  by step, and against core TensorFlow's BlockLSTMGrad; the loss reads every output and
  the c and h states at other steps, so both the h and the cs gradient paths count."""
  graph = tf.Graph()
  with graph.as_default():
    cell = cells.LSTMCell(3, 4, "lstm")
    x, start = values([6, 2, 3], 0), (values([2, 4], 1), values([2, 4], 2))
    outputs, (c, h) = cell.sequence(x, start)
    if reference == "steps":
      ref_outputs, _ = unrolled(cell, x, start)
      ref_c = tf.stack([unrolled(cell, x[:t + 1], start)[1][0] for t in range(6)])
      ref_h = ref_outputs
    else:
      zeros = tf.zeros([4])
      block = tf.raw_ops.BlockLSTM(
          seq_len_max=tf.constant(6, tf.int64), x=x, cs_prev=start[0], h_prev=start[1],
          w=cell.kernel, wci=zeros, wcf=zeros, wco=zeros, b=cell.bias, forget_bias=0.0,
          cell_clip=-1.0, use_peephole=False)
      ref_outputs, ref_c, ref_h = block.h, block.cs, block.h

    def loss(outputs, c, h):
      return (tf.reduce_sum(tf.sin(outputs)) + tf.reduce_sum(tf.cos(c[3]) * values([2, 4], 3))
              + tf.reduce_sum(tf.square(h[4])))
    wrt = [x, *start] + tf1.trainable_variables()
    ours = grads_lib.gradients(loss(outputs, c, h), wrt)
    theirs = tf.gradients(loss(ref_outputs, ref_c, ref_h), wrt)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      for a, b in zip(*session.run([ours, theirs])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
