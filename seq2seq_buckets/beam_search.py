"""Beam search as one tf.while_loop: the whole search of a batch in one session.run.

Shapes: n sentences, m of them still searching (the loop drops finished ones), k
beam size, b beams per sentence (1 at the first step, k after it), N = m * b decoder
rows (row = sentence slot * b + beam), V target vocabulary, T = the most output
pieces of any sentence (max of `limits`), t the step (pieces chosen so far).

The first step extends the one empty hypothesis of each sentence, so it runs n
rows rather than n * k copies of the same row.

Each step extends every live beam and ranks a sentence's 2k best candidates.
Those that end (EOS, or the sentence's limit reached) and rank above the k-th
live one join the sentence's n_best finished hypotheses; the k best others stay
live. A sentence stops when its n_best-th finished score is at least what any
live beam can still reach (log-probs are <= 0, so a live beam at best keeps its
score up to the limit), or at its limit. Stopped sentences leave the loop, so
later steps run fewer rows. Scores are summed log-probs (of EOS too, when the
hypothesis ended with it) divided by the GNMT length penalty
((5 + length) / 6) ** alpha, length counting EOS.
"""

import collections

import tensorflow as tf

from seq2seq_buckets.gradients import graph_constant
from seq2seq_buckets.vocab import EOS_ID, GO_ID

# Per sentence its n_best hypotheses, best first: ids [n, n_best, T] int32 (pieces
# then EOS padding), lengths [n, n_best] int32 (pieces, EOS not counted), scores
# [n, n_best] float32 (-inf where the search found fewer than n_best).
Found = collections.namedtuple("Found", ["ids", "lengths", "scores"])
# The live beams of m sentences: ids [m, k, T] int32 (t pieces, then EOS), scores
# [m, k] float32 (summed log-probs; -inf for a beam that does not exist).
Live = collections.namedtuple("Live", ["ids", "scores"])

NEG_INF = float("-inf")
# Vocabulary columns per block in _top_pieces.
BLOCK = 100


def length_penalty(length, alpha):
  """GNMT length penalty ((5 + length) / 6) ** alpha; length int32 [...] -> float32 [...]."""
  return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def search(step, carried, fixed, limits, beam_size, n_best, alpha, most=None):
  """Beam search for n sentences.

  step(tokens [N] int32, carried, fixed) -> (logits [N, V] float32 (V static), carried):
  one decoder step. carried: nested tensors [n, ...] that the step updates (they
  follow each beam's parent); fixed: nested tensors [n, ...] it only reads (the
  encoder memory). Both are given per sentence and tiled to k rows here.
  limits [n] int32 >= 1: per sentence the most output pieces; beam_size, n_best
  int32 scalars (1 <= n_best <= beam_size); alpha float32 scalar -> Found.

  most: None, or a Python int >= every limit for a search of fixed shapes that XLA
  can compile (beam_size and n_best then fix shapes, so XLA needs them as constants):
  T = most, and stopped sentences stay in the loop with no live beam (scores -inf),
  so their steps change nothing.
  """
  k = beam_size
  n = tf.size(limits)
  total_steps = tf.reduce_max(limits) if most is None else most
  columns = tf.range(total_steps)  # [T]

  def body(t, tokens, carried, fixed, live, finished, active, limits, found):
    beams = tf.shape(live.scores)[1]  # b
    logits, carried = step(tokens, carried, fixed)
    cand_scores, parent, token = _best_extensions(live.scores, logits, k)
    is_eos = tf.equal(token, EOS_ID)
    ends = is_eos | _expand(t + 1 >= limits, 1)
    live_above = tf.cumsum(tf.cast(~ends, tf.int32), axis=graph_constant(1), exclusive=True)
    usable = tf.math.is_finite(cand_scores) & (live_above < k)
    paths = tf.where(tf.equal(columns, t), _expand(token, 2), _take_each(live.ids, parent))
    ended = Found(paths, tf.where(is_eos, t, t + 1),
                  tf.where(ends & usable, cand_scores / length_penalty(t + 1, alpha), NEG_INF))
    finished = _merge(finished, ended, n_best)
    live, parent, token = _first_live(usable & ~ends, cand_scores, parent, token, paths, k)
    reachable = tf.reduce_max(live.scores, graph_constant(1)) / length_penalty(limits, alpha)
    # finished scores are sorted: the smallest is the n_best-th
    stay = (tf.reduce_min(finished.scores, graph_constant(1)) < reachable) & (t + 1 < limits)
    if most is not None:
      rows = tf.reshape(_expand(tf.range(n) * beams, 1) + parent, graph_constant((-1,)))
      live = Live(live.ids, tf.where(_expand(stay, 1), live.scores, NEG_INF))
      return (t + 1, tf.reshape(token, graph_constant((-1,))),
              tf.nest.map_structure(lambda x: _take(x, rows), carried), fixed, live, finished,
              active, limits, found)
    found = _write(found, ~stay, active, finished)
    slots = tf.cast(tf.reshape(tf.where(stay), graph_constant((-1,))), tf.int32)
    first_row = _expand(slots * beams, 1)
    rows = tf.reshape(first_row + _take(parent, slots), graph_constant((-1,)))
    carried = tf.nest.map_structure(lambda x: _take(x, rows), carried)
    # a sentence's b fixed rows are alike: k copies of its first
    fixed_rows = tf.reshape(first_row + tf.zeros([k], tf.int32), graph_constant((-1,)))
    fixed = tf.cond(tf.reduce_all(stay) & tf.equal(beams, k), lambda: fixed,
                    lambda: tf.nest.map_structure(lambda x: _take(x, fixed_rows), fixed))
    keep = lambda x: _take(x, slots)
    return (t + 1, tf.reshape(keep(token), graph_constant((-1,))), carried, fixed,
            tf.nest.map_structure(keep, live), tf.nest.map_structure(keep, finished),
            keep(active), keep(limits), found)

  def searching(unused_t, tokens, unused_carried, unused_fixed, live, *unused):
    if most is not None:
      return tf.reduce_any(tf.math.is_finite(live.scores))
    return tf.size(tokens) > 0

  found = Found(tf.fill([n, n_best, total_steps], EOS_ID), tf.zeros([n, n_best], tf.int32),
                tf.fill([n, n_best], NEG_INF))
  if most is None:  # one empty hypothesis per sentence
    live = Live(tf.fill([n, 1, total_steps], EOS_ID), tf.zeros([n, 1]))
  else:  # XLA keeps shapes: k beams from the start, all but the first without score
    first_beam_only = tf.concat([[0.0], tf.fill([k - 1], NEG_INF)], 0)
    live = Live(tf.fill([n, k, total_steps], EOS_ID), tf.tile([first_beam_only], [n, 1]))
    tile = lambda x: _take(x, tf.range(n * k) // k)  # [n, ...] -> [n * k, ...]
    carried, fixed = (tf.nest.map_structure(tile, part) for part in (carried, fixed))
  # `finished` starts as `found` does: no hypothesis yet
  start = (tf.constant(0), tf.fill([tf.size(live.scores)], GO_ID), carried, fixed, live, found,
           tf.range(n), limits, found)
  any_rows = lambda x: tf.TensorShape([None]).concatenate(x.shape[1:])
  any_shape = lambda x: tf.TensorShape([None] * x.shape.rank)
  invariants = (tf.TensorShape([]), tf.TensorShape([None]),
                *[tf.nest.map_structure(any_rows, part) for part in start[2:4]],
                *[tf.nest.map_structure(any_shape, part) for part in start[4:]])
  end = tf.while_loop(searching, body, start, shape_invariants=invariants,
                     maximum_iterations=most)
  # with fixed shapes every sentence stays to the end: `finished` holds them all
  return end[-1] if most is None else end[5]


def _best_extensions(scores, logits, k):
  """The 2k best one-piece extensions of each sentence's beams, best first.

  scores [m, b] float32 (live beam scores, -inf for none); logits [m * b, V] ->
  (scores, parent beam, piece), each [m, C], C = min(2k, b * min(2k, V)). A
  sentence's 2k best extensions are among its beams' 2k best each.
  """
  beams = tf.shape(scores)[1]
  per_row = tf.minimum(2 * k, logits.shape[1])
  row_scores, row_pieces = _top_pieces(tf.nn.log_softmax(logits), per_row)  # [m * b, c]
  total = _expand(scores, 2) + tf.reshape(row_scores, tf.stack([-1, beams, per_row]))
  by_sentence = tf.stack([-1, beams * per_row])
  cand_scores, position = tf.math.top_k(tf.reshape(total, by_sentence),
                                        tf.minimum(2 * k, beams * per_row))
  piece = _take_each(tf.reshape(row_pieces, by_sentence), position)
  return cand_scores, position // per_row, piece


def _top_pieces(log_probs, count):
  """Each row's `count` (<= V) likeliest pieces: log_probs [N, V] -> (log-probs, ids)
  [N, count], descending.

  The `count` largest of a row lie in the `count` blocks of BLOCK columns with the
  largest maxima, so top_k runs over the block maxima and then over those blocks'
  columns only: 3x faster than top_k over [320, 8000] here, same result (equal
  values may come out in another order).
  """
  vocab = log_probs.shape[1]
  blocks = -(-vocab // BLOCK)
  if blocks * BLOCK != vocab:
    log_probs = tf.pad(log_probs, [[0, 0], [0, blocks * BLOCK - vocab]],
                       constant_values=NEG_INF)
  by_block = tf.reshape(log_probs, graph_constant((-1, blocks, BLOCK)))
  top = tf.minimum(count, blocks)
  _, top_blocks = tf.math.top_k(tf.reduce_max(by_block, graph_constant(2)), top)
  columns = tf.reshape(_take_each(by_block, top_blocks), tf.stack([-1, top * BLOCK]))
  values, position = tf.math.top_k(columns, count)
  return values, _take_each(top_blocks, position // BLOCK) * BLOCK + position % BLOCK


def _first_live(keep, cand_scores, parent, token, paths, k):
  """The first k candidates with `keep` set, per sentence (keep, cand_scores, parent,
  token [m, C]; paths [m, C, T]) -> (Live beams [m, k] (score -inf where fewer than k
  are kept), their parents and last pieces [m, k]). C < k only at the first step with
  a vocabulary of fewer than k pieces."""
  count = tf.shape(keep)[1]
  position = tf.range(count)
  _, pick = tf.math.top_k(tf.where(keep, -position, -position - count), tf.minimum(k, count))
  pick = tf.pad(pick, [[0, 0], [0, k - tf.shape(pick)[1]]])  # C < k: candidate 0, not kept
  take = lambda x: _take_each(x, pick)
  scores = tf.where(take(keep) & (tf.range(k) < count), take(cand_scores), NEG_INF)
  return Live(take(paths), scores), take(parent), take(token)


def _take(x, index):
  """x [m, ...], index [j] -> x[index] [j, ...]."""
  return tf.gather(x, index, axis=graph_constant(0))


def _take_each(x, index):
  """x [m, C, ...], index [m, j] -> [m, j, ...]: each row its own entries."""
  return tf.gather(x, index, axis=graph_constant(1), batch_dims=1)


def _expand(x, axis):
  """x with a new axis of size 1 at `axis`."""
  return tf.expand_dims(x, graph_constant(axis))


def _merge(finished, ended, n_best):
  """The n_best best of finished (j = n_best) and ended (j = C) hypotheses [m, j, ...],
  best first; on equal scores the earlier found stays first."""
  both = lambda a, b: tf.concat([a, b], graph_constant(1))
  scores, best = tf.math.top_k(both(finished.scores, ended.scores), n_best)
  take = lambda a, b: _take_each(both(a, b), best)
  return Found(take(finished.ids, ended.ids), take(finished.lengths, ended.lengths), scores)


def _write(found, done, active, finished):
  """found [n, ...] with the rows active[done] set to finished[done] ([m, ...])."""
  where = tf.where(done)
  index = tf.gather_nd(active, where)
  return Found(*[tf.tensor_scatter_nd_update(out, _expand(index, 1), tf.gather_nd(new, where))
                 for out, new in zip(found, finished)])
