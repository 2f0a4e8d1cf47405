"""The in-graph beam search (beam_search.search) on toy language models.

A toy model's next-piece log-probs are a function of (source, prefix): the graph
carries an exact integer code of the prefix and looks its distribution up in a
table, so a plain Python search over the same function can check the graph's
results, exactly when the beam holds every prefix.
"""

import itertools
import math
import random

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import beam_search, graphs  # graphs: graph mode for the process
from seq2seq_buckets.vocab import EOS_ID, GO_ID

tf1 = tf.compat.v1
TABLE_ROWS = 4099


def prefix_code(source, prefix, vocab):
  """The exact code the toy graph carries for (source id, prefix ids)."""
  code = source + 1
  for piece in prefix:
    code = code * (vocab + 1) + piece + 1
  return code


def random_table(vocab, seed=0):
  """[TABLE_ROWS, V] normalised random log-probs; GO never follows."""
  logits = np.random.default_rng(seed).normal(0.0, 2.0, [TABLE_ROWS, vocab])
  logits[:, GO_ID] = -np.inf
  return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def random_row(code):
  return code * 2654435761 % TABLE_ROWS


class ToyModel:
  """Log-probs of the next piece per (source, prefix): a random table row picked by a
  hash of the prefix code, or for the codes in `scripted` ({code: row}) that row of
  `table`. Counts the decoder rows it runs."""

  def __init__(self, table, scripted=None):
    self.table, self.scripted = np.asarray(table, np.float32), scripted
    self.vocab = self.table.shape[1]

  def log_probs(self, source, prefix):
    code = prefix_code(source, prefix, self.vocab)
    if self.scripted is not None:
      return self.table[self.scripted.get(code, len(self.table) - 1)]
    return self.table[random_row(code)]

  def search(self, sources, limits, beam_size, n_best, alpha, most=None):
    """Runs beam_search.search in a graph (most: see there) -> (per sentence a list of
    (ids, score), best first, rows the decoder ran)."""
    graph = tf.Graph()
    with graph.as_default():
      table = tf.constant(self.table)
      if self.scripted is not None:
        rows = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(self.scripted), tf.int64),
            tf.constant(list(self.scripted.values()), tf.int64)), len(self.table) - 1)
      rows_run = tf1.get_variable("rows_run", initializer=tf.constant(0, tf.int64),
                                  use_resource=True)

      def step(tokens, code, unused_fixed):
        code = tf.where(tf.equal(tokens, GO_ID), code,
                        code * (self.vocab + 1) + tf.cast(tokens, tf.int64) + 1)
        row = rows.lookup(code) if self.scripted is not None else random_row(code)
        with tf.control_dependencies([rows_run.assign_add(tf.size(tokens, out_type=tf.int64))]):
          return tf.gather(table, row), code

      found = beam_search.search(
          step, tf.constant(sources, tf.int64) + 1, tf.zeros([len(sources)]),
          tf.constant(limits, tf.int32), tf.constant(beam_size), tf.constant(n_best),
          tf.constant(alpha, tf.float32), most)
      with tf1.Session() as session:
        session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
        ids, lengths, scores = session.run(found)
        rows_run = session.run(rows_run)
    results = [[(list(i[:length]), s) for i, length, s in zip(*row) if s > -np.inf]
               for row in zip(ids, lengths, scores)]
    return results, rows_run


def exhaustive(model, source, limit, alpha):
  """Every hypothesis beam search may return, as (ids, normalised score), best first."""
  found = []
  pieces = [v for v in range(model.vocab) if v not in (EOS_ID, GO_ID)]
  penalty = lambda length: ((5.0 + length) / 6.0) ** alpha
  for length in range(limit + 1):
    for ids in itertools.product(pieces, repeat=length):
      score = sum(model.log_probs(source, ids[:t])[ids[t]] for t in range(length))
      if length < limit:
        found.append((list(ids), (score + model.log_probs(source, ids)[EOS_ID]) /
                      penalty(length + 1)))
      else:
        found.append((list(ids), score / penalty(length)))
  return sorted(found, key=lambda f: -f[1])


@pytest.fixture(params=[None, 8], ids=["shrinking", "fixed_shapes"])
def most(request):
  """Both forms of the search: sentences leave the loop, or (the form XLA compiles)
  every shape is fixed, with buffers for `most` pieces."""
  return request.param


@pytest.mark.parametrize("alpha", [0.0, 0.8])
@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_exhaustive_search(seed, alpha, most):
  n_best = 3
  model = ToyModel(random_table(5, seed))
  rng = random.Random(seed)
  limits = [rng.randint(1, 4) for _ in range(4)]
  sources = [seed * 10 + s for s in range(len(limits))]
  found, _ = model.search(sources, limits, beam_size=27, n_best=n_best, alpha=alpha, most=most)
  for source, limit, hypotheses in zip(sources, limits, found):
    best = exhaustive(model, source, limit, alpha)[:n_best]
    assert [ids for ids, _ in hypotheses] == [ids for ids, _ in best]
    np.testing.assert_allclose([s for _, s in hypotheses], [s for _, s in best], rtol=1e-5)


def scripted(tables, vocab=6):
  """ToyModel whose log-probs follow {source: {prefix: {piece: prob}}} (a bare
  {prefix: ...} for source 0); other (source, prefix) get {EOS: 0.5, 4: 0.5};
  unlisted pieces share what is left."""
  if () in tables:
    tables = {0: tables}
  def row(probs):
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    return np.log([probs.get(v, rest) + 1e-12 for v in range(vocab)])
  listed = [(source, prefix, probs) for source, table in tables.items()
            for prefix, probs in table.items()]
  rows = [row(probs) for _, _, probs in listed] + [row({EOS_ID: 0.5, 4: 0.5})]
  codes = {prefix_code(source, prefix, vocab): r for r, (source, prefix, _) in enumerate(listed)}
  return ToyModel(rows, codes)


# After 4 the best path keeps going; its end is worse than stopping at once (EOS: 0.45).
EARLY_STOP = {(): {EOS_ID: 0.45, 4: 0.55}, (4,): {4: 0.6, EOS_ID: 0.4},
              (4, 4): {4: 0.6, EOS_ID: 0.4}, (4, 4, 4): {EOS_ID: 0.6, 4: 0.4}}


def test_finished_hypothesis_is_kept_while_others_continue(most):
  (found,), rows = scripted(EARLY_STOP).search([0], [6], beam_size=2, n_best=2, alpha=0.0,
                                                most=most)
  (best, best_score), (second, second_score) = found
  assert best == [] and best_score == pytest.approx(math.log(0.45))
  assert second == [4] and second_score == pytest.approx(math.log(0.55 * 0.4))
  assert rows >= 2 * 2  # the search went on after the first hypothesis finished


def test_beam_one_drops_what_ranks_below_the_live_beam(most):
  (found,), _ = scripted(EARLY_STOP).search([0], [6], beam_size=1, n_best=1, alpha=0.0,
                                            most=most)
  assert found == [([4, 4, 4], pytest.approx(math.log(0.55 * 0.6 * 0.6 * 0.6)))]


def test_length_penalty_favours_longer_hypotheses(most):
  model = scripted({(): {EOS_ID: 0.45, 4: 0.55}, (4,): {4: 0.9}, (4, 4): {4: 0.9},
                    (4, 4, 4): {EOS_ID: 0.9}})
  (plain,), _ = model.search([0], [6], 3, 1, 0.0, most)
  (penalised,), _ = model.search([0], [6], 3, 1, 1.0, most)
  assert plain[0][0] == [] and penalised[0][0] == [4, 4, 4]
  assert penalised[0][1] == pytest.approx(math.log(0.55 * 0.9 ** 3) / (9 / 6))


def test_finished_sentences_leave_the_loop():
  # source 0 ends after one step, source 1 after three; the limits allow eight
  model = scripted({0: {(): {EOS_ID: 0.99}},
                    1: {(): {4: 0.9}, (4,): {4: 0.9}, (4, 4): {EOS_ID: 0.9}}})
  found, rows = model.search([0, 1], [8, 8], beam_size=3, n_best=1, alpha=0.0)
  assert [f[0][0] for f in found] == [[], [4, 4]]
  _, rows_alone = model.search([1], [8], beam_size=3, n_best=1, alpha=0.0)
  # the first step runs one row per sentence, later steps one per beam
  assert rows_alone == 1 + 2 * 3 and rows == rows_alone + 1
  # with fixed shapes both stay in the loop to the end, with the same results
  fixed, rows = model.search([0, 1], [8, 8], beam_size=3, n_best=1, alpha=0.0, most=8)
  assert fixed == found and rows == 2 * 3 * 3


def test_limits_cut_hypotheses_without_eos(most):
  model = scripted({(): {4: 0.9}, (4,): {4: 0.9}, (4, 4): {4: 0.9}})
  (found,), _ = model.search([0], [2], beam_size=2, n_best=2, alpha=0.0, most=most)
  assert found[0] == ([4, 4], pytest.approx(math.log(0.81)))  # no EOS counted at the limit


@pytest.mark.parametrize("vocab,count", [(250, 10), (1000, 3), (130, 130), (7, 4), (300, 1)])
def test_top_pieces_equal_top_k_over_the_whole_row(vocab, count):
  log_probs = np.random.default_rng(vocab).normal(size=[6, vocab]).astype(np.float32)
  with tf.Graph().as_default(), tf1.Session() as session:
    values, ids = session.run(beam_search._top_pieces(tf.constant(log_probs), count))
    expected = session.run(tf.math.top_k(log_probs, count))
  np.testing.assert_array_equal(values, expected.values)
  np.testing.assert_array_equal(ids, expected.indices)
