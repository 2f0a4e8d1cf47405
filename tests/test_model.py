"""The bucketed model: shared weights, masking, gradients, learning, greedy == step-by-step."""

import math

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import cells, graphs, model, screening
from seq2seq_buckets.gradients import gradients
from seq2seq_buckets.batches import pad_batch
from seq2seq_buckets.hparams import HParams
from seq2seq_buckets.vocab import EOS_ID, GO_ID

tf1 = tf.compat.v1
VOCAB = 30
BUCKETS = [[5, 6], [8, 9], [12, 14]]


def tiny(**overrides):
  values = dict(size=16, embedding_size=16, num_layers=2, dropout=0.0, batch_size=4,
                src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, buckets=BUCKETS, seed=7)
  values.update(overrides)
  return HParams(**values).check()


def random_batch(bucket, n=4, seed=0):
  rng = np.random.default_rng(seed)
  sources = [list(rng.integers(4, VOCAB, rng.integers(1, bucket[0] + 1))) for _ in range(n)]
  targets = [list(rng.integers(4, VOCAB, rng.integers(1, bucket[1]))) for _ in range(n)]
  return pad_batch(sources, targets, bucket)


def session_for(tg):
  session = tf1.Session(graph=tg.graph)
  session.run(tg.init)
  return session


def feed(bucket_ops, batch):
  return dict(zip(bucket_ops.inputs, batch))


def test_trainable_variables_do_not_depend_on_bucket_count():
  def signature(buckets):
    tg = graphs.build_training_graph(tiny(buckets=buckets))
    with tg.graph.as_default():
      return sorted((v.name, tuple(v.shape.as_list())) for v in tf1.trainable_variables())
  assert signature(BUCKETS[:1]) == signature(BUCKETS)


def test_update_through_one_bucket_changes_another():
  tg = graphs.build_training_graph(tiny(learning_rate=0.05))
  session = session_for(tg)
  probe = random_batch(BUCKETS[2], seed=1)
  before = session.run(tg.buckets[2].loss, feed(tg.buckets[2], probe))
  session.run(tg.buckets[0].update, feed(tg.buckets[0], random_batch(BUCKETS[0])))
  after = session.run(tg.buckets[2].loss, feed(tg.buckets[2], probe))
  assert before != after


def test_each_buckets_update_uses_tf_gradients_of_its_loss():
  """Every bucket reads the weights itself and differentiates from those reads: the
  gradient norm its update clips is the norm of tf.gradients over the variables."""
  tg = graphs.build_training_graph(tiny())
  session = session_for(tg)
  with tg.graph.as_default():
    params = tf1.trainable_variables()
    reference = [tf.linalg.global_norm(tf.gradients(ops.loss, params)) for ops in tg.buckets]
  for b, ops in enumerate(tg.buckets):
    batch = feed(ops, random_batch(BUCKETS[b], seed=b))
    ours, theirs = session.run([ops.grad_norm, reference[b]], batch)
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("overrides", [
    {}, {"reverse_source": True}, {"cell": "gru", "bidirectional_encoder": False},
    {"attention": "luong", "input_feeding": False}])
def test_padding_contents_change_neither_loss_nor_gradients(overrides):
  tg = graphs.build_training_graph(tiny(**overrides))
  session = session_for(tg)
  ops = tg.buckets[1]
  with tg.graph.as_default():
    grads = gradients(ops.loss, tf1.trainable_variables())
    grads = [tf.convert_to_tensor(g) for g in grads]
  batch = random_batch(BUCKETS[1], seed=3)
  noisy = [x.copy() for x in batch]
  rng = np.random.default_rng(9)
  for row, length in enumerate(batch.source_lengths):
    noisy[0][row, length:] = rng.integers(4, VOCAB, BUCKETS[1][0] - length)
  pad = batch.target_weights == 0
  noisy[2][pad] = rng.integers(4, VOCAB, pad.sum())
  noisy[3][pad] = rng.integers(4, VOCAB, pad.sum())
  assert (noisy[0] != batch.encoder_inputs).any() and (noisy[3] != batch.targets).any()
  loss_a, grads_a = session.run([ops.loss, grads], feed(ops, batch))
  loss_b, grads_b = session.run([ops.loss, grads], feed(ops, type(batch)(*noisy)))
  assert loss_a == pytest.approx(loss_b, rel=1e-6)
  for a, b in zip(grads_a, grads_b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_initial_loss_is_near_log_vocab():
  tg = graphs.build_training_graph(tiny())
  session = session_for(tg)
  losses = [session.run(tg.buckets[b].loss, feed(tg.buckets[b], random_batch(BUCKETS[b])))
            for b in range(len(BUCKETS))]
  assert np.mean(losses) == pytest.approx(math.log(VOCAB), abs=0.1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradient_matches_finite_differences(cell):
  tg = graphs.build_training_graph(tiny(cell=cell, size=8, embedding_size=8))
  session = session_for(tg)
  ops = tg.buckets[0]
  batch = feed(ops, random_batch(BUCKETS[0], seed=4))
  with tg.graph.as_default():
    params = tf1.trainable_variables()
    grads = [tf.convert_to_tensor(g) for g in gradients(ops.loss, params)]
    values = session.run(params)
    rng = np.random.default_rng(0)
    direction = [rng.standard_normal(v.shape).astype(np.float32) for v in values]
    analytic = sum(float(np.sum(g * d)) for g, d in zip(session.run(grads, batch), direction))

    def loss_at(scale):
      for p, v, d in zip(params, values, direction):
        p.load(v + scale * d, session)
      return float(session.run(ops.loss, batch))
    eps = 1e-2
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
  assert numeric == pytest.approx(analytic, rel=0.02)


def test_tiny_model_overfits_one_batch():
  tg = graphs.build_training_graph(tiny(learning_rate=0.02, size=32, embedding_size=32))
  session = session_for(tg)
  ops = tg.buckets[1]
  batch = feed(ops, random_batch(BUCKETS[1], seed=5))
  for _ in range(150):
    loss, _ = session.run([ops.loss, ops.update], batch)
  assert loss < 0.05


@pytest.mark.parametrize("overrides", [
    {"num_samples": 10}, {"label_smoothing": 0.1}, {"tie_embeddings": True},
    {"optimizer": "sgd", "learning_rate": 0.5}, {"dropout": 0.3}])
def test_options_train(overrides):
  tg = graphs.build_training_graph(tiny(**overrides))
  session = session_for(tg)
  ops = tg.buckets[2]
  batch = feed(ops, random_batch(BUCKETS[2], seed=6))
  first = session.run(ops.nll_sum, {**batch, tg.model.dropout_rate: 0.0})
  for _ in range(30):
    session.run(ops.update, batch)
  assert session.run(ops.nll_sum, {**batch, tg.model.dropout_rate: 0.0}) < first


def test_label_smoothed_loss_and_gradient_equal_their_definition():
  """The training loss with label smoothing e: (1 - e) * nll + e * (mean negative
  log-probability over the vocabulary), per real target token; its gradient; and
  nll_sum, which reports the unsmoothed likelihood."""
  smoothing = 0.1
  tg = graphs.build_training_graph(tiny(label_smoothing=smoothing, learning_rate=0.05))
  session = session_for(tg)
  ops = tg.buckets[1]
  batch = feed(ops, random_batch(BUCKETS[1], seed=11))
  for _ in range(10):  # targets above the mean logit: the smoothing term matters
    session.run(ops.update, batch)
  with tg.graph.as_default():
    logits = [op for op in tg.graph.get_operations() if op.name.startswith("bucket_1/train/")
              and op.type == "SoftmaxCrossEntropyWithLogits"][0].inputs[0]  # [N, V]
    targets = tf.gather(tf.reshape(ops.inputs.targets, [-1]),
                        tf.where(tf.reshape(ops.inputs.target_weights, [-1]) > 0)[:, 0])
    log_probs = tf.nn.log_softmax(logits)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    uniform = -tf.reduce_mean(log_probs, axis=1)
    reference = tf.reduce_mean((1.0 - smoothing) * nll + smoothing * uniform)
    grads = [tf.gradients(loss, logits)[0] for loss in (ops.loss, reference)]
    nll_sum = tf.reduce_sum(nll)
  values = session.run([ops.loss, reference, ops.nll_sum, nll_sum] + grads, batch)
  assert values[0] == pytest.approx(values[1], rel=1e-6)
  assert values[2] == pytest.approx(values[3], rel=1e-5)
  np.testing.assert_allclose(values[4], values[5], rtol=1e-5, atol=1e-8)


def step_by_step(ig, session, batch, bucket):
  """Greedy ids [N, O] for a batch of bucket (I, O): the encoder run once, then one
  session.run per decoder step (a one-step graph built here from the model's parts)."""
  model, size = ig.model, ig.model.hp.size
  with ig.graph.as_default():
    inputs, lengths = graphs.encoder_placeholders()
    encoded = model.encode(inputs, lengths, training=False)
    states = tf.nest.map_structure(lambda s: tf1.placeholder(tf.float32, [None, size]),
                                   encoded.states)
    tokens = tf1.placeholder(tf.int32, [None])
    output = tf1.placeholder(tf.float32, [None, size])
    new_output, new_states = model.next_output(tokens, output, states, encoded)
    log_probs = tf.nn.log_softmax(model.logits(new_output))
    initial_output = model.initial_output(encoded)
  encoder_feed = {inputs: batch.encoder_inputs, lengths: batch.source_lengths}
  state_values, output_value = session.run([encoded.states, initial_output], encoder_feed)
  token_values = np.full([len(batch.source_lengths)], GO_ID, np.int32)
  stepped = []
  for _ in range(bucket[1]):
    feed = {**encoder_feed, tokens: token_values, output: output_value}
    feed.update(zip(tf.nest.flatten(states), tf.nest.flatten(state_values)))
    values, output_value, state_values = session.run([log_probs, new_output, new_states], feed)
    token_values = values.argmax(axis=1).astype(np.int32)
    stepped.append(token_values)
  return np.stack(stepped, axis=1)


def ended_at_eos(ids):
  """ids [N, O] -> what the greedy graph returns: EOS after each row's first EOS, columns
  up to the step where the last row ended."""
  ids = ids.copy()
  ends = []
  for row in ids:
    end = list(row).index(EOS_ID) + 1 if EOS_ID in row else len(row)
    row[end:] = EOS_ID
    ends.append(end)
  return ids[:, :max(ends)]


@pytest.mark.parametrize("eos_bias, screen_rows", [(0.0, 1), (-1e4, 1), (0.0, 1000)])
def test_greedy_graph_equals_step_by_step_decoding(tmp_path, monkeypatch, eos_bias, screen_rows):
  """The per-bucket greedy graph (a while loop that drops rows as they end) and its
  XLA-compiled twin (fixed shapes) equal step-by-step decoding; with EOS suppressed
  they run all O steps. The loop's argmax is screened (screening.py) at steps of at
  least screen_rows rows."""
  monkeypatch.setattr(screening, "SCREEN_ROWS", screen_rows)
  hp = tiny(learning_rate=0.05)
  tg = graphs.build_training_graph(hp)
  session = session_for(tg)
  for b in range(3):  # move away from the near-uniform start so argmax is not a tie
    session.run(tg.buckets[b].update, feed(tg.buckets[b], random_batch(BUCKETS[b], seed=b)))
  with tg.graph.as_default():
    bias = [v for v in tf1.global_variables() if "output_bias" in v.name][0]
    session.run(bias[EOS_ID].assign(eos_bias))
  path = tg.saver.save(session, str(tmp_path / "model.ckpt"))
  ig = graphs.build_inference_graph(hp)
  infer = tf1.Session(graph=ig.graph)
  graphs.restore_inference(ig, infer, path)
  batch = random_batch(BUCKETS[1], seed=8)
  ops = ig.greedy  # fed the second bucket, not the largest: the compiled loop pads it
  steps = BUCKETS[1][1]
  greedy = infer.run(ops.ids, {ops.encoder_inputs: batch.encoder_inputs,
                               ops.source_lengths: batch.source_lengths, ops.max_steps: steps})
  expected = ended_at_eos(step_by_step(ig, infer, batch, BUCKETS[1]))
  if eos_bias < 0:
    assert expected.shape == (len(batch.source_lengths), BUCKETS[1][1])
  else:  # rows end at different steps: the batched loop drops ended rows as it goes
    assert len({list(row).index(EOS_ID) for row in expected if EOS_ID in row}) > 1
  np.testing.assert_array_equal(greedy, expected)
  # max_steps stops it earlier
  short = infer.run(ops.ids, {ops.encoder_inputs: batch.encoder_inputs,
                              ops.source_lengths: batch.source_lengths, ops.max_steps: 1})
  np.testing.assert_array_equal(short, expected[:, :1])
  # the XLA-compiled loop (plain-op LSTM steps, encoding padded to the largest bucket)
  # gives the same ids, one sentence at a time and for the whole batch
  for rows in [slice(0, 1), slice(1, 2), slice(None)]:
    compiled = infer.run(ops.single_ids, {ops.encoder_inputs: batch.encoder_inputs[rows],
                                          ops.source_lengths: batch.source_lengths[rows],
                                          ops.max_steps: steps})
    np.testing.assert_array_equal(compiled, ended_at_eos(expected[rows]))
  # the training graph's greedy decoder agrees too
  train_ops = tg.greedy
  train_greedy = session.run(train_ops.ids, {train_ops.encoder_inputs: batch.encoder_inputs,
                                             train_ops.source_lengths: batch.source_lengths,
                                             train_ops.max_steps: steps})
  np.testing.assert_array_equal(greedy, train_greedy)


@pytest.mark.parametrize("overrides", [{}, {"reverse_source": True}])
def test_decoding_encoder_stops_at_the_longest_source(overrides):
  """When not training, the encoder runs only as many steps as the batch's longest
  source (in a loop of matmuls rather than BlockLSTM): its memory, keys and mask cover
  those positions, equal a full run's at real positions, and so do its final states."""
  hp = tiny(**overrides)
  tg = graphs.build_training_graph(hp)
  session = session_for(tg)
  bucket = BUCKETS[2]
  with tg.graph.as_default():
    inputs = tf1.placeholder(tf.int32, [None, bucket[0]])
    lengths = tf1.placeholder(tf.int32, [None])
    full, trimmed = (tg.model.encode(inputs, lengths, training=training)
                     for training in (True, False))  # tiny() has no dropout
  batch = random_batch(bucket, seed=4)
  longest = batch.source_lengths.max()
  assert longest < bucket[0]
  values = session.run([full, trimmed], {inputs: batch.encoder_inputs,
                                         lengths: batch.source_lengths})
  full_value, trimmed_value = values
  assert trimmed_value.memory.shape[1] == trimmed_value.mask_bias.shape[1] == longest
  real = np.arange(longest)[None, :] < batch.source_lengths[:, None]  # [B, longest]
  np.testing.assert_array_equal(trimmed_value.mask_bias, full_value.mask_bias[:, :longest])
  for name in ("memory", "keys"):
    np.testing.assert_allclose(getattr(trimmed_value, name)[real],
                               getattr(full_value, name)[:, :longest][real], atol=1e-6)
  for trimmed_state, full_state in zip(tf.nest.flatten(trimmed_value.states),
                                       tf.nest.flatten(full_value.states)):
    np.testing.assert_allclose(trimmed_state, full_state, atol=1e-6)


def test_gru_sequence_of_any_length_equals_the_unrolled_one():
  """A layer without a fused sequence op (GRU) encodes a source of unknown length (the
  decoding graph's) in a while loop: same outputs and states as unrolled over a static one."""
  graph = tf.Graph()
  with graph.as_default():
    cell = cells.GRUCell(3, 4, "gru")
    x = np.random.default_rng(0).standard_normal([5, 2, 3]).astype(np.float32)
    static = cell.sequence(tf.constant(x), cell.zero_state(2), differentiable=False)
    any_length = tf1.placeholder(tf.float32, [None, 2, 3])
    looped = cell.sequence(any_length, cell.zero_state(2), differentiable=False)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      expected, got = session.run([static, looped], {any_length: x})
  for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.abs(expected[0]).max() > 0.1


@pytest.mark.parametrize("vocab", [8000, 30])
def test_row_argmax_is_tf_argmax(vocab):
  """The greedy decoder's blockwise argmax (V a multiple of the block) and its fallback
  pick each row's first maximum, as tf.argmax, ties across and within blocks included."""
  rng = np.random.default_rng(7)
  logits = rng.integers(-50, 3, size=[40, vocab]).astype(np.float32)  # many ties at 2
  logits[0] = 0.0  # all equal
  logits[1, [5, vocab - 1]] = 9.0  # a tie across blocks
  assert (logits == logits.max(1, keepdims=True)).sum(1).max() > 1
  with tf1.Session(graph=tf.Graph()) as session:
    got, expected = session.run([model.row_argmax(tf.constant(logits)),
                                 tf.argmax(logits, axis=1, output_type=tf.int32)])
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(got, logits.argmax(1))


@pytest.mark.parametrize("units", [128, 20])
def test_lstm_decoding_step_and_sequence_on_padded_weights_equal_training_ones(units):
  """cache_step_weights pads a 512-multiple gate width (4 x 128) with zero columns and
  leaves others as they are; neither the decoding step nor the decoding sequence (a
  loop of matmuls) differs from the step and BlockLSTM sequence training uses."""
  graph = tf.Graph()
  with graph.as_default():
    with tf1.variable_scope("cell", initializer=tf1.random_uniform_initializer(-0.5, 0.5, seed=3)):
      cell = cells.make_cell("lstm", 8, units, "lstm")
    state = (tf.random.uniform([3, units], seed=1), tf.random.uniform([3, units], seed=2))
    inputs = [tf.random.uniform([3, 8], seed=4)]
    sequence = tf.random.uniform([5, 3, 8], -1.0, 1.0, seed=5)
    training = cell.step(state, inputs), cell.sequence(sequence, state)
    fills = cell.cache_step_weights(lambda name, value: (value, tf.no_op()))
    decoding = (cell.step(state, inputs, differentiable=False),
                cell.sequence(sequence, state, differentiable=False))
    widths = [w.shape[-1] for w in cell._step_weights]  # pylint: disable=protected-access
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      expected, got = session.run([training, decoding])
  assert len(fills) == (2 if units == 128 else 0)
  assert widths == ([4 * units + cells.STEP_PAD] * 2 if units == 128 else [4 * units] * 2)
  for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert np.abs(expected[1][0]).max() > 0.1


@pytest.mark.parametrize("units", [128, 20])
def test_lstm_decoding_step_from_piece_ids_equals_the_step_from_their_embeddings(units):
  """Given the embedding its first input comes from (the decoder's first layer), the
  decoding step takes piece ids and gathers their cached share of the gates: same
  output as the training step on their embeddings."""
  graph = tf.Graph()
  with graph.as_default():
    with tf1.variable_scope("cell", initializer=tf1.random_uniform_initializer(-0.5, 0.5, seed=3)):
      cell = cells.make_cell("lstm", 8 + 6, units, "lstm")
    # a constant: the fill and the step must see the same embedding
    embedding = tf.constant(np.random.default_rng(6).uniform(-1, 1, [11, 8]), tf.float32)
    ids = tf.constant([3, 0, 10])
    state = (tf.random.uniform([3, units], seed=1), tf.random.uniform([3, units], seed=2))
    other = tf.random.uniform([3, 6], seed=4)
    expected = cell.step(state, [tf.gather(embedding, ids), other])
    caches = []
    def cache(name, value):
      caches.append(tf1.get_variable(name, value.shape, trainable=False))
      return caches[-1].value(), caches[-1].assign(value).op
    fills = cell.cache_step_weights(cache, embedding)
    got = cell.step(state, [ids, other], differentiable=False)
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      session.run(fills)
      got, expected = session.run([got, expected])
  assert cell.takes_ids
  for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert np.abs(expected[0]).max() > 0.1


@pytest.mark.parametrize("units", [128, 20])
def test_lstm_decoding_sequence_from_piece_ids_equals_the_sequence_of_their_embeddings(units):
  """Given the embedding its input comes from (the encoder's first layer), the decoding
  sequence takes piece ids [T, B] and gathers their cached share of the gates: same
  outputs and states as BlockLSTM (training) on their embeddings."""
  graph = tf.Graph()
  with graph.as_default():
    with tf1.variable_scope("cell", initializer=tf1.random_uniform_initializer(-0.5, 0.5, seed=3)):
      cell = cells.make_cell("lstm", 8, units, "lstm")
    embedding = tf.constant(np.random.default_rng(6).uniform(-1, 1, [11, 8]), tf.float32)
    ids = np.random.default_rng(7).integers(0, 11, [5, 3]).astype(np.int32)
    state = tuple(tf.constant(np.random.default_rng(seed).uniform(0, 1, [3, units]), tf.float32)
                  for seed in (1, 2))
    expected = cell.sequence(tf.gather(embedding, ids), state)
    caches = []
    def cache(name, value):
      caches.append(tf1.get_variable(name, value.shape, trainable=False))
      return caches[-1].value(), caches[-1].assign(value).op
    fills = cell.cache_step_weights(cache, embedding)
    any_length = tf1.placeholder(tf.int32, [None, 3])
    got = cell.sequence(any_length, state, differentiable=False)
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      session.run(fills)
      expected, got = session.run([expected, got], {any_length: ids})
  assert cell.takes_ids
  for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert np.abs(expected[0]).max() > 0.1
