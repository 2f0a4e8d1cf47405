"""Greedy decoding's screened argmax equals the argmax of the whole output projection."""

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import model, screening

tf1 = tf.compat.v1
SIZE, VOCAB = 32, 640


@pytest.mark.parametrize("vocab, size, expected", [
    (8000, 256, (960, 64)),  # 1000 -> a multiple of 64
    (4096, 256, (448, 64)),  # 512 -> not a multiple of 512
    (640, 32, (64, 8)),
    (30, 16, (3, 4)),  # the test models' vocabulary
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
  """-> (screened argmax [N], full-projection argmax [N] (tf.argmax), head logits [N, S],
  the Screen's values) on a fresh graph. unread: None or [R] bool, tail columns the
  screen must not compute: its cached copy of them gets logits of 1e3, which would win."""
  head, rank = screening.sizes(kernel.shape[1], kernel.shape[0] - 1)
  with tf.Graph().as_default(), tf1.Session() as session:

    def cache(name, value):
      if name == "screen_tail" and unread is not None:
        value = tf.where(unread, 1e3, value)
      variable = tf1.get_variable(name, value.shape, trainable=False)
      return variable.value(), variable.assign(value).op

    screen, fills = screening.screen_caches(tf.constant(kernel), head, rank, cache)
    session.run(fills)
    x = tf.constant(outputs)
    full = tf.matmul(tf.pad(x, [[0, 0], [0, 1]], constant_values=1.0), kernel)
    return session.run([screening.screened_argmax(x, screen, model.row_argmax, few_columns),
                        tf.argmax(full, axis=1, output_type=tf.int32), full[:, :head],
                        screen])


# 0: unsure rows get every tail logit; 1: only those of the columns their bounds reach
ALL_COLUMNS, REACHED_COLUMNS = 0.0, 1.0


@pytest.mark.parametrize("few_columns", [ALL_COLUMNS, REACHED_COLUMNS])
def test_screened_argmax_is_the_full_argmax(few_columns):
  """Random rows and rows whose best piece is in the tail give tf.argmax's pieces; the
  bound is above every tail logit; some rows are settled by the head alone, others need
  the tail (both paths run). On the reached-columns path no other tail column is
  computed."""
  rng = np.random.default_rng(3)
  kernel = structured_kernel(rng)
  outputs = rng.uniform(-1, 1, [200, SIZE]).astype(np.float32)
  tail_pieces = rng.integers(64, VOCAB, 20)
  outputs[:20] = 3.0 * kernel[:-1, tail_pieces].T / np.linalg.norm(kernel[:-1, tail_pieces],
                                                                    axis=0)[:, None]
  _, _, head_logits, screen = run_screen(kernel, outputs, few_columns)
  # the bound, evaluated as the screen does
  inside = outputs @ screen.basis
  outside = np.linalg.norm(outputs - inside @ screen.basis.T, axis=1)
  bounds = np.concatenate([inside, outside[:, None], np.ones([len(outputs), 1])], 1) @ \
      screen.bound
  # the columns some row's bound reaches (its best head logit less a slack: the
  # screen's threshold is a float-rounding margin lower)
  reached = (bounds >= head_logits.max(1)[:, None] - 0.01).any(0)
  unread = ~reached if few_columns == REACHED_COLUMNS else None
  got, expected, _, _ = run_screen(kernel, outputs, few_columns, unread)
  np.testing.assert_array_equal(got, expected)
  assert (expected >= 64).sum() >= 15 and (expected < 64).sum() >= 100
  assert 0 < reached.sum() < 0.9 * len(reached)
  # the bound holds for every tail column
  tail_logits = outputs @ kernel[:-1, 64:] + kernel[-1, 64:]
  assert (bounds >= tail_logits - 1e-4).all()
  settled = bounds.max(1) < head_logits.max(1)
  assert 0.2 < settled.mean() < 0.9


@pytest.mark.parametrize("few_columns", [ALL_COLUMNS, REACHED_COLUMNS])
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
  got, expected, _, _ = run_screen(kernel, outputs, few_columns)
  np.testing.assert_array_equal(expected, [3, 301, 400])
  np.testing.assert_array_equal(got, expected)
