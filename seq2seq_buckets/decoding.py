"""Decoding with an inference graph: bucketed batches, greedy and beam search.

Shapes: n sentences in a batch, k beam size, N decoder rows (N = n * k in beam
search, the k beams of a sentence adjacent), I source bucket length, H hidden
size, V target vocabulary. A source is a list of piece ids; an output is a list
of piece ids without EOS.

Every non-empty source is decoded in the smallest bucket its source fits
(buckets.bucket_index with no target); a source longer than the largest bucket
is cut to it and reported. Within a bucket sources are sorted by length and cut
into batches; results come back in input order. An empty source gives an empty
output without running the model.
"""

import collections

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from seq2seq_buckets.batches import pad_batch
from seq2seq_buckets.buckets import bucket_index, truncate_to
from seq2seq_buckets.vocab import EOS_ID, GO_ID

# ids: output pieces without EOS; score: summed log-probs (of EOS too, when the
# hypothesis ended with it) divided by the GNMT length penalty; None from greedy.
Hypothesis = collections.namedtuple("Hypothesis", ["ids", "score"])
# bucket: bucket index; indices: positions of its sources in the input.
Batch = collections.namedtuple("Batch", ["bucket", "indices"])
# batches: list of Batch; sources: the input with too-long sources cut to the
# largest bucket; truncated: indices of those sources.
Plan = collections.namedtuple("Plan", ["batches", "sources", "truncated"])
# Encoder results for N rows: memory, keys [N, I, H] float32; source_lengths [N] int32.
Encoded = collections.namedtuple("Encoded", ["memory", "keys", "source_lengths"])
# Decoder recurrence for N rows: output [N, H] float32 (the previous attentional
# output), states: list of [N, H] float32 (graphs.StepOps order).
Recurrent = collections.namedtuple("Recurrent", ["output", "states"])
# The likeliest next pieces of each step-graph row; see add_top_k.
TopK = collections.namedtuple("TopK", ["count", "log_probs", "ids"])

# Output pieces allowed beyond max_length_ratio * source pieces (short inputs).
LENGTH_SLACK = 5


def plan_batches(sources, buckets, batch_size):
  """Groups non-empty sources by bucket, sorted by length, in batches of <= batch_size.

  sources: list of id lists; buckets: [(I, O), ...] increasing -> Plan. Empty
  sources are in no batch.
  """
  fitted, truncated = [], []
  groups = collections.defaultdict(list)
  for index, ids in enumerate(sources):
    ids = list(ids)
    b = bucket_index(len(ids), 0, buckets)
    if b is None:
      b = len(buckets) - 1
      ids = ids[:truncate_to(len(ids), 0, buckets[b])[0]]
      truncated.append(index)
    fitted.append(ids)
    if ids:
      groups[b].append(index)
  batches = []
  for b in sorted(groups):
    ordered = sorted(groups[b], key=lambda i: len(fitted[i]))
    batches += [Batch(b, ordered[start:start + batch_size])
                for start in range(0, len(ordered), batch_size)]
  return Plan(batches, fitted, truncated)


def output_limit(source_len, target_len, max_length_ratio):
  """Most output pieces (EOS not counted) for source_len pieces in a bucket with O = target_len.

  max_length_ratio * source_len + LENGTH_SLACK, at most O - 1 (the bucket rule
  keeps a decoder slot for EOS) and at least 1.
  """
  return max(1, min(target_len - 1, int(max_length_ratio * source_len) + LENGTH_SLACK))


def cut_at_eos(ids):
  """ids [T] -> list of the ids before the first EOS (all of them without one)."""
  ids = list(ids)
  return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def greedy_ids(session, greedy_ops, buckets, sources, batch_size, max_length_ratio=2.0):
  """Greedy outputs for every source, in input order, through the per-bucket greedy graphs.

  greedy_ops: per bucket a graphs.GreedyOps. Returns (list of
  output id lists, indices of truncated sources).
  """
  plan = plan_batches(sources, buckets, batch_size)
  outputs = [[] for _ in plan.sources]
  for batch in plan.batches:
    ops, bucket = greedy_ops[batch.bucket], buckets[batch.bucket]
    chunk = [plan.sources[i] for i in batch.indices]
    padded = pad_batch(chunk, [[]] * len(chunk), bucket)
    limits = [output_limit(len(source), bucket[1], max_length_ratio) for source in chunk]
    ids = session.run(ops.ids, {ops.encoder_inputs: padded.encoder_inputs,
                                ops.source_lengths: padded.source_lengths,
                                ops.max_steps: max(limits) + 1})  # + 1: room for EOS
    for row, i in enumerate(batch.indices):
      outputs[i] = cut_at_eos(ids[row, :limits[row]])
  return outputs, plan.truncated


def add_top_k(graph):
  """Adds per-row best next pieces to graph's step ops (before graph.graph.finalize()).

  graph: graphs.InferenceGraph -> TopK(count [] int32 placeholder, log_probs
  [N, count] float32 descending, ids [N, count] int32): beam search fetches 2k
  numbers a row instead of V.
  """
  with graph.graph.as_default(), tf.name_scope("step_top_k"):
    count = tf.compat.v1.placeholder(tf.int32, [], "count")
    log_probs, ids = tf.math.top_k(graph.step.log_probs, count)
  return TopK(count, log_probs, ids)


class StepDecoder:
  """Beam search's view of a graphs.InferenceGraph: the per-bucket encoders and the
  decoder step with add_top_k's outputs, as session callables made once."""

  def __init__(self, session, graph, top_k, buckets):
    self.buckets = buckets
    self.vocab = graph.step.log_probs.shape[1]
    self._encoders = [_callable(session, [e.encoder_inputs, e.source_lengths],
                                [e.memory, e.keys, e.output] + e.states)
                      for e in graph.encoders]
    step = graph.step
    self._step = _callable(
        session,
        [top_k.count, step.tokens, step.output, step.memory, step.keys, step.source_lengths]
        + step.states,
        [top_k.log_probs, top_k.ids, step.new_output] + step.new_states)

  def encode(self, sources):
    """sources: n id lists of one bucket (the smallest the longest fits) ->
    (Encoded, Recurrent), n rows each."""
    b = bucket_index(max(len(s) for s in sources), 0, self.buckets)
    padded = pad_batch(sources, [[]] * len(sources), self.buckets[b])
    memory, keys, output, *states = self._encoders[b](padded.encoder_inputs,
                                                       padded.source_lengths)
    return Encoded(memory, keys, padded.source_lengths), Recurrent(output, states)

  def step(self, encoded, recurrent, tokens, count):
    """tokens [N] int32 (the previous output pieces) -> (log_probs [N, c] float32
    descending, ids [N, c] int32 of the c = min(count, V) likeliest next pieces, Recurrent)."""
    log_probs, ids, output, *states = self._step(
        np.int32(min(count, self.vocab)), np.asarray(tokens, np.int32), recurrent.output,
        encoded.memory, encoded.keys, encoded.source_lengths, *recurrent.states)
    return log_probs, ids, Recurrent(output, states)


def _callable(session, feeds, fetches):
  """A function of the feeds' values returning the fetches' values (lists of tensors).

  Like session.run with a fixed signature, minus its per-call Python work
  (~0.5 ms, a lot for a one-sentence decoder step); tf.compat.v1.Session has
  no public API for it (make_callable with feeds just calls run).
  """
  options = config_pb2.CallableOptions()
  options.feed.extend(t.name for t in feeds)
  options.fetch.extend(t.name for t in fetches)
  return session._make_callable_from_options(options)  # pylint: disable=protected-access


def take_rows(arrays, rows):
  """arrays: Encoded or Recurrent (fields [N, ...] arrays, or lists of them) -> rows [N']."""
  return type(arrays)(*[[a[rows] for a in field] if isinstance(field, list) else field[rows]
                        for field in arrays])


def beam_search(decoder, sources, beam_size, batch_size, length_penalty=0.0, n_best=1,
                max_length_ratio=2.0):
  """Beam search for every source, in batches of one bucket.

  decoder: a StepDecoder; batch_size counts sentences (a step runs up to
  batch_size * beam_size rows). Returns (per source its n_best best Hypothesis,
  best first ([Hypothesis([], 0.0)] for an empty source), indices of truncated
  sources).
  """
  buckets = decoder.buckets
  plan = plan_batches(sources, buckets, batch_size)
  results = [[Hypothesis([], 0.0)] for _ in plan.sources]
  for batch in plan.batches:
    chunk = [plan.sources[i] for i in batch.indices]
    limits = [output_limit(len(s), buckets[batch.bucket][1], max_length_ratio) for s in chunk]
    found = search_batch(decoder, chunk, limits, beam_size, length_penalty, n_best)
    for i, hypotheses in zip(batch.indices, found):
      results[i] = hypotheses
  return results, plan.truncated


def length_penalty_factor(length, alpha):
  """GNMT length penalty ((5 + length) / 6) ** alpha; length [...] counts EOS."""
  return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


def search_batch(decoder, sources, limits, beam_size, alpha, n_best):
  """Beam search for one batch of sentences, all at once.

  decoder: like StepDecoder, encode(sources) -> (Encoded, Recurrent) with n rows,
  step(Encoded, Recurrent, tokens [N], count) -> (log_probs [N, c], ids [N, c],
  Recurrent) for the c <= count likeliest next pieces of each row. limits: per
  sentence the most output pieces; alpha: the GNMT length penalty.

  Each step extends every live beam and ranks a sentence's 2k best candidates.
  Those that end (EOS, or the limit reached) and rank above the k-th live one
  join the sentence's finished list; the k best others stay live. A sentence
  stops when its n_best-th finished score is at least what any live beam can
  still reach; stopped sentences leave the batch, so later steps run fewer rows.
  Returns per sentence its n_best best Hypothesis, best first.
  """
  k, n = beam_size, len(sources)
  limits = np.asarray(limits)
  encoded, recurrent = decoder.encode(sources)
  tiled = np.repeat(np.arange(n), k)
  encoded, recurrent = take_rows(encoded, tiled), take_rows(recurrent, tiled)
  active = np.arange(n)  # the sentence in each batch slot
  scores = np.full([n, k], -np.inf)  # log-prob sums of the live beams [m, k] float64
  scores[:, 0] = 0.0  # a single live beam at the start
  paths = np.zeros([n, k, 0], np.int32)  # their pieces [m, k, t]
  tokens = np.full([n * k], GO_ID, np.int32)
  finished = [[] for _ in range(n)]
  threshold = np.full(n, -np.inf)  # per sentence its n_best-th finished score
  for t in range(int(limits.max())):
    log_probs, piece_ids, recurrent = decoder.step(encoded, recurrent, tokens, 2 * k)
    parent, token, cand_scores = _rank_extensions(scores, log_probs, piece_ids, 2 * k)
    ends = (token == EOS_ID) | (t + 1 >= limits[active])[:, None]
    live_above = np.cumsum(~ends, axis=1) - ~ends
    usable = np.isfinite(cand_scores) & (live_above < k)
    for row, col in zip(*np.nonzero(ends & usable)):
      s = active[row]
      hypothesis = _ended(paths[row, parent[row, col]], token[row, col],
                          cand_scores[row, col] / length_penalty_factor(t + 1, alpha))
      threshold[s] = _add_finished(finished[s], hypothesis, n_best)
    scores, parent, token = _first_live(usable & ~ends, cand_scores, parent, token, k)
    paths = np.concatenate([np.take_along_axis(paths, parent[:, :, None], 1),
                            token[:, :, None]], axis=2)
    # log-probs are <= 0: a live beam at best keeps its score up to the limit
    reachable = scores.max(axis=1) / length_penalty_factor(limits[active], alpha)
    stay = (threshold[active] < reachable) & (t + 1 < limits[active])
    slots = np.arange(len(active))
    if not stay.all():
      slots, active = slots[stay], active[stay]
      if not len(active):
        break
      scores, paths, parent, token = scores[stay], paths[stay], parent[stay], token[stay]
      encoded = take_rows(encoded, np.repeat(slots * k, k))
    recurrent = take_rows(recurrent, (slots[:, None] * k + parent).reshape(-1))
    tokens = token.reshape(-1).astype(np.int32)
  return finished


def _rank_extensions(scores, log_probs, piece_ids, count):
  """The `count` best extensions of each sentence's beams, best first.

  scores [m, k] float64; log_probs, piece_ids [m*k, c]: each row's likeliest
  next pieces -> (parent beam, piece, score), each [m, count]. A sentence's
  count best extensions are among its beams' count best each.
  """
  m, k = scores.shape
  c = piece_ids.shape[1]
  total = (scores[:, :, None] + log_probs.reshape(m, k, c)).reshape(m, k * c)
  candidates, cand_scores = _best(total, count)
  token = np.take_along_axis(piece_ids.reshape(m, k * c), candidates, 1)
  return candidates // c, token, cand_scores


def _best(x, count):
  """x [m, C] -> (columns, values) [m, min(count, C)] of each row's largest, descending."""
  if count < x.shape[1]:
    top = np.argpartition(-x, count - 1, axis=1)[:, :count]
  else:
    top = np.broadcast_to(np.arange(x.shape[1]), x.shape)
  values = np.take_along_axis(x, top, 1)
  order = np.argsort(-values, axis=1, kind="stable")
  return np.take_along_axis(top, order, 1), np.take_along_axis(values, order, 1)


def _first_live(keep, cand_scores, parent, token, k):
  """The first k candidates with `keep` set, per sentence ([m, 2k] each) -> (scores,
  parent, token) [m, k]; missing ones get score -inf."""
  pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]
  scores = np.where(np.take_along_axis(keep, pick, 1),
                    np.take_along_axis(cand_scores, pick, 1), -np.inf)
  return scores, np.take_along_axis(parent, pick, 1), np.take_along_axis(token, pick, 1)


def _ended(path, token, score):
  """A finished Hypothesis: path [t] int32 plus its last piece (unless EOS)."""
  ids = path.tolist()
  if token != EOS_ID:
    ids.append(int(token))
  return Hypothesis(ids, float(score))


def _add_finished(finished, hypothesis, n_best):
  """Inserts into the best-first list `finished` (kept to n_best); returns its n_best-th score."""
  finished.append(hypothesis)
  finished.sort(key=lambda h: -h.score)
  del finished[n_best:]
  return finished[-1].score if len(finished) == n_best else -np.inf
