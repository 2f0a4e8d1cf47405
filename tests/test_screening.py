"""Greedy decoding's screened argmax equals the argmax of the whole output projection."""

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import model, screening

tf1 = tf.compat.v1
SIZE, VOCAB = 32, 640


@pytest.mark.parametrize("vocab, size, expected", [
    (8000, 256, (960, (64, 128))),  # 1000 -> a multiple of 64
    (4096, 256, (448, (64, 128))),  # 512 -> not a multiple of 512
    (640, 32, (64, (8, 16))),
    (30, 16, (3, (4, 8))),  # the test models' vocabulary
    (30, 2, (3, (1,))),  # no second rank below the size
    (2, 16, None),  # a tail smaller than twice the head
    (30, 1, None)])  # no rank below the size
def test_sizes(vocab, size, expected):
  assert screening.sizes(vocab, size) == expected


def structured_kernel(rng):
  """[SIZE + 1, VOCAB] like a trained projection's: columns near a low-rank subspace, a
  bias falling with the piece id (frequent pieces first)."""
  weights = rng.standard_normal([SIZE, 6]) @ rng.standard_normal([6, VOCAB]) * 0.3
  weights += 0.05 * rng.standard_normal([SIZE, VOCAB])
  bias = 2.0 - 6.0 * np.arange(VOCAB) / VOCAB
  return np.concatenate([weights, bias[None]]).astype(np.float32)


def run_screen(kernel, outputs, few_columns, unread=None):
  """-> (screened argmax [N], full-projection argmax [N] (tf.argmax), the Screen's values)
  on a fresh graph. unread: None or [R] bool, tail columns the screen must not compute:
  its cached copy of them gets logits of 1e3, which would win."""
  head, ranks = screening.sizes(kernel.shape[1], kernel.shape[0] - 1)
  with tf.Graph().as_default(), tf1.Session() as session:

    def cache(name, value):
      if name == "screen_tail" and unread is not None:
        value = tf.where(unread, 1e3, value)
      variable = tf1.get_variable(name, value.shape, trainable=False)
      return variable.value(), variable.assign(value).op

    screen, fills = screening.screen_caches(tf.constant(kernel), head, ranks, cache)
    session.run(fills)
    x = tf.constant(outputs)
    full = tf.matmul(tf.pad(x, [[0, 0], [0, 1]], constant_values=1.0), kernel)
    return session.run([screening.screened_argmax(x, screen, model.row_argmax, few_columns),
                        tf.argmax(full, axis=1, output_type=tf.int32), screen])


def bounds(outputs, level):
  """[N, R]: the tail bounds of a screening.Level's values, evaluated as the screen does."""
  inside = outputs @ level.basis
  outside = np.linalg.norm(outputs - inside @ level.basis.T, axis=1)
  return np.concatenate([inside, outside[:, None], np.ones([len(outputs), 1])], 1) @ level.bound


def reached(outputs, kernel, level, rows, slack=0.01):
  """[R] bool: the tail columns whose bounds at `level` reach the best head logit less
  slack of some of `rows` (the screen's threshold is a float-rounding margin lower)."""
  head = kernel.shape[1] // 10
  best = (outputs[rows] @ kernel[:-1, :head] + kernel[-1, :head]).max(1)
  return (bounds(outputs[rows], level) >= best[:, None] - slack).any(0)


def tail_rows(rng, kernel, count):
  """count rows [count, SIZE] each along a random tail column: their best piece is
  likely in the tail."""
  pieces = rng.integers(64, VOCAB, count)
  columns = kernel[:-1, pieces].T
  return (3.0 * columns / np.linalg.norm(columns, axis=1)[:, None]).astype(np.float32)


@pytest.mark.parametrize("path", ["first_level", "second_level", "all_columns"])
def test_screened_argmax_is_the_full_argmax(path):
  """Random rows and rows whose best piece is in the tail give tf.argmax's pieces; each
  level's bound is above every tail logit, the second's below the first's; some rows
  are settled by the head alone, others need the tail. Unsure rows get the logits of
  the columns their first level reaches ("first_level"), of those their second level
  reaches ("second_level": these are fewer), or of every tail column; no other tail
  column is computed."""
  rng = np.random.default_rng(3)
  kernel = structured_kernel(rng)
  outputs = rng.uniform(-1, 1, [200, SIZE]).astype(np.float32)
  outputs[:20] = tail_rows(rng, kernel, 20)
  _, _, screen = run_screen(kernel, outputs, 1.0)
  first, second = screen.levels
  unsure = bounds(outputs, first).max(1) >= (outputs @ kernel[:-1, :64] +
                                              kernel[-1, :64]).max(1) - 0.01
  columns = [reached(outputs, kernel, level, unsure) for level in screen.levels]
  assert columns[1].sum() + 8 < columns[0].sum()
  few_columns, unread = {
      "first_level": (1.0, ~columns[0]), "all_columns": (0.0, None),
      "second_level": ((columns[0].sum() + columns[1].sum()) / 2 / (VOCAB - 64), ~columns[1])
  }[path]
  got, expected, _ = run_screen(kernel, outputs, few_columns, unread)
  np.testing.assert_array_equal(got, expected)
  assert (expected >= 64).sum() >= 15 and (expected < 64).sum() >= 100
  tail_logits = outputs @ kernel[:-1, 64:] + kernel[-1, 64:]
  for level in screen.levels:
    assert (bounds(outputs, level) >= tail_logits - 1e-4).all()
  assert (bounds(outputs, second) <= bounds(outputs, first) + 1e-4).all()
  assert 0.2 < 1 - unsure.mean() < 0.9


def test_screened_argmax_when_the_second_level_settles_every_row():
  """Tail columns in a subspace of the second level's rank: its bound is the logit, so
  it settles every row whose best piece is in the head, though the first level left
  some unsure; none of the tail's columns is computed then."""
  rng = np.random.default_rng(7)
  kernel = structured_kernel(rng)
  subspace = np.linalg.qr(rng.standard_normal([SIZE, 16]))[0]
  kernel[:-1, 64:] = subspace @ (subspace.T @ kernel[:-1, 64:])
  outputs = rng.uniform(-1, 1, [300, SIZE]).astype(np.float32)
  logits = outputs @ kernel[:-1] + kernel[-1]
  outputs = outputs[logits[:, :64].max(1) > logits[:, 64:].max(1) + 0.01]  # head rows
  got, expected, screen = run_screen(kernel, outputs, 0.0, np.ones(VOCAB - 64, bool))
  np.testing.assert_array_equal(got, expected)
  everyone = np.arange(len(outputs))
  assert len(outputs) > 50
  assert reached(outputs, kernel, screen.levels[0], everyone, slack=0.0).any()
  assert not reached(outputs, kernel, screen.levels[1], everyone, slack=0.0).any()


@pytest.mark.parametrize("few_columns", [0.0, 1.0])
def test_screened_argmax_takes_the_head_on_a_tie(few_columns):
  """A tail column equal to a head column (bias too) ties with it: the first maximum,
  the head's piece, wins, as in tf.argmax; a row whose tail column is ahead by a hair
  gets the tail's; of two equal tail columns ahead of the head, the first wins."""
  rng = np.random.default_rng(5)
  kernel = structured_kernel(rng)
  kernel[:-1, 3:5] = 5.0 * np.eye(SIZE)[:, :2]
  kernel[:, 300:302] = kernel[:, 3:5]
  kernel[-1, 301] += 1e-3
  kernel[:-1, 400] = kernel[:-1, 500] = 5.0 * np.eye(SIZE)[:, 2]
  kernel[-1, 400] = kernel[-1, 500] = 1.0
  outputs = 2.0 * np.eye(SIZE, dtype=np.float32)[:3]
  got, expected, _ = run_screen(kernel, outputs, few_columns)
  np.testing.assert_array_equal(expected, [3, 301, 400])
  np.testing.assert_array_equal(got, expected)
