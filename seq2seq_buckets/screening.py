"""Greedy decoding's argmax over the vocabulary without most of the output projection.

Shapes: N decoder rows, H = hparams.size, V target vocabulary, S head pieces (the
first S ids: SentencePiece numbers pieces by score, so these are the frequent
ones), R = V - S tail pieces, r the rank of the tail's screen.

A row's logits are [h, 1] @ kernel, kernel [H + 1, V] (the bias as its last row).
The head's logits are computed exactly. For the tail a bound is cheaper: with U
[H, r] an orthonormal basis of the tail columns' top singular directions, for
every tail column w, bias b and any h,

  h . w + b = (U^T h) . (U^T w) + (h - U U^T h) . (w - U U^T w) + b
           <= (U^T h) . (U^T w) + |h - U U^T h| |w - U U^T w| + b    (Cauchy-Schwarz),

one [N, r + 2] x [r + 2, R] matmul for all of them. A row whose every tail bound
is below its best head logit (less a margin for float rounding) has its argmax in
the head. Only the other ("unsure") rows get tail logits: for the tail columns
whose bound reaches some unsure row's best head logit, gathered, when those are
few (FEW_COLUMNS), else for every tail column. The result is the argmax of the
full projection (first maximum on ties, as tf.argmax), for fewer multiply-adds;
the logits are summed by other matmuls than the whole projection's, so two of a
row's logits within float rounding of each other may come out in either order.

On test_2016_flickr, with the first 960 of 8000 pieces as the head and rank 64,
about three decoder rows in four need no tail logits, both with the recipe model
and with the benchmark's 300-step one; greedy decoding gave the same outputs
1.06-1.16x faster (one process alternating both, 2026-11-28). A model early in
training, whose rows are nearly all unsure, pays for the head and the bound on
top of the whole tail: about a third more multiply-adds in the projection. Beam
search needs every logit (its scores are log-probabilities), so it keeps the
whole projection.
"""

import collections

import tensorflow as tf

from seq2seq_buckets.gradients import graph_constant

# head [H + 1, S]: the head's columns of the kernel; basis [H, r]: U; bound [r + 2, R]:
# rows U^T w, |w - U U^T w| and b per tail column; tail [H + 1, R]: the tail's columns;
# widest []: the largest |w| of a tail column.
Screen = collections.namedtuple("Screen", ["head", "basis", "bound", "tail", "widest"])
# A tail bound counts as below the best head logit when it is below by more than
# MARGIN * (1 + |h| * the largest tail column norm): float32 rounding in the bound and
# in the logits is a few 1e-6 of that.
MARGIN = 1e-4
# A step computes the tail logits of its unsure rows for the tail columns whose bound
# reaches some unsure row's best head logit, gathered, when they are at most this
# fraction of the tail; else for all tail columns (no gather).
FEW_COLUMNS = 0.25
# Steps with fewer rows take the whole projection: for them the screen's extra ops
# cost more than it saves (the first 100 lines of test_2016_flickr, in batches of ~17
# rows per bucket, decoded 0.88x as fast screened at every step, 1.00x with this).
SCREEN_ROWS = 32
# Head pieces are a multiple of this many (row_argmax's block), and never a multiple
# of 512 (see cells.STEP_PAD: such matmuls are slow on one thread here).
HEAD_STEP = 64


def sizes(vocab, size):
  """(S, r) for a vocabulary of `vocab` pieces and outputs of `size`: S about vocab / 8,
  r = size / 4; None when the tail would be under twice the head or r not below size."""
  head = max(1, vocab // 8)
  if head > HEAD_STEP:
    head = head // HEAD_STEP * HEAD_STEP
    if head % 512 == 0:
      head -= HEAD_STEP
  rank = max(1, size // 4)
  if vocab - head < 2 * head or rank >= size:
    return None
  return head, rank


def screen_caches(kernel, head, rank, cache):
  """kernel [H + 1, V] (bias last row); head S, rank r (see `sizes`); cache(name, value)
  -> (read, fill op) -> (Screen of the cached reads, list of fill ops).

  The basis comes from the eigenvectors of W W^T [H, H] (W the tail's columns without
  the bias) in float64; the bound's rows are computed from the float32 basis they are
  used with.
  """
  weights, bias = kernel[:-1, head:], kernel[-1:, head:]  # [H, R], [1, R]
  wide = tf.cast(weights, tf.float64)
  _, vectors = tf.linalg.eigh(tf.matmul(wide, wide, transpose_b=True))  # ascending
  basis = tf.cast(vectors[:, -rank:], tf.float32)  # [H, r]
  inside = tf.matmul(basis, weights, transpose_a=True)  # [r, R]
  outside = tf.norm(weights - tf.matmul(basis, inside), axis=0, keepdims=True)  # [1, R]
  parts = [("screen_head", kernel[:, :head]), ("screen_basis", basis),
           ("screen_bound", tf.concat([inside, outside, bias], 0)),
           ("screen_tail", kernel[:, head:]),
           ("screen_widest", tf.reduce_max(tf.norm(weights, axis=0)))]
  reads, fills = zip(*[cache(name, value) for name, value in parts])
  return Screen(*reads), list(fills)


def screened_argmax(outputs, screen, row_argmax, few_columns=FEW_COLUMNS):
  """outputs [N, H] -> [N] int32: each row's argmax over [outputs, 1] @ kernel, the
  first maximum on ties; row_argmax: logits [N, k] -> [N] int32 (first maximum);
  few_columns: see FEW_COLUMNS."""
  ones = tf.pad(outputs, [[0, 0], [0, 1]], constant_values=1.0)  # [N, H + 1]
  head_logits = tf.matmul(ones, screen.head)  # [N, S]
  best_logit, best = _row_best(head_logits, row_argmax)  # [N] each
  inside = tf.matmul(outputs, screen.basis)  # [N, r]
  outside = tf.norm(outputs - tf.matmul(inside, screen.basis, transpose_b=True), axis=1)
  bounds = tf.matmul(tf.concat([inside, outside[:, None], tf.ones_like(outside)[:, None]],
                               graph_constant(1)), screen.bound)  # [N, R]
  threshold = best_logit - MARGIN * (1.0 + tf.norm(outputs, axis=1) * screen.widest)
  unsure = tf.reduce_max(bounds, graph_constant(1)) >= threshold

  def with_tail():
    rows = tf.reshape(tf.where(unsure), graph_constant((-1,)))  # [M] int64
    inputs = tf.gather(ones, rows)  # [M, H + 1]
    reached = tf.gather(bounds, rows) >= tf.gather(threshold, rows)[:, None]  # [M, R]
    # [C] int64, ascending: the tail columns that may beat some unsure row's head
    columns = tf.reshape(tf.where(tf.reduce_any(reached, graph_constant(0))),
                         graph_constant((-1,)))

    def reached_columns():
      logits = tf.matmul(inputs, tf.gather(screen.tail, columns, axis=graph_constant(1)))
      logit, pick = _row_best(logits, row_argmax)
      return logit, tf.cast(tf.gather(columns, pick), tf.int32)

    def all_columns():
      return _row_best(tf.matmul(inputs, screen.tail), row_argmax)  # [M, R] logits

    few = tf.size(columns) <= int(few_columns * screen.tail.shape[1])
    tail_logit, tail_best = tf.cond(few, reached_columns, all_columns)
    # the head comes first: on a tie its piece is the first maximum
    wins = tail_logit > tf.gather(best_logit, rows)
    return tf.tensor_scatter_nd_update(best, tf.boolean_mask(rows, wins)[:, None],
                                       tf.boolean_mask(tail_best, wins) + screen.head.shape[1])

  return tf.cond(tf.reduce_any(unsure), with_tail, lambda: best)


def _row_best(logits, row_argmax):
  """logits [M, k] -> (each row's largest logit [M], its first column [M] int32)."""
  pick = row_argmax(logits)
  return tf.gather(logits, pick[:, None], batch_dims=1)[:, 0], pick
