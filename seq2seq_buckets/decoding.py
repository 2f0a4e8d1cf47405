"""Decoding with an inference graph: bucketed batches through the greedy and beam graphs.

A source is a list of piece ids; an output is a list of piece ids without EOS.

Every non-empty source is decoded in the smallest bucket its source fits
(buckets.bucket_index with no target); a source longer than the largest bucket
is cut to it and reported. Within a bucket sources are sorted by length and cut
into batches; results come back in input order. An empty source gives an empty
output without running the model.
"""

import collections
import concurrent.futures

import numpy as np

from seq2seq_buckets.batches import pad_batch
from seq2seq_buckets.buckets import bucket_index, truncate_to
from seq2seq_buckets.vocab import EOS_ID

# ids: output pieces without EOS; score: summed log-probs (of EOS too, when the
# hypothesis ended with it) divided by the GNMT length penalty (see beam_search.py);
# None from greedy.
Hypothesis = collections.namedtuple("Hypothesis", ["ids", "score"])
# bucket: bucket index; indices: positions of its sources in the input.
Batch = collections.namedtuple("Batch", ["bucket", "indices"])
# batches: list of Batch; sources: the input with too-long sources cut to the
# largest bucket; truncated: indices of those sources.
Plan = collections.namedtuple("Plan", ["batches", "sources", "truncated"])
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


def _single(plan):
  """Whether plan holds one sentence in all (interactive use): it then goes through the
  XLA-compiled loops, compiled once for a batch of one."""
  return sum(len(batch.indices) for batch in plan.batches) == 1


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


def _padded_batches(sources, buckets, batch_size, max_length_ratio):
  """plan_batches(sources, ...) -> (Plan, iterator of (Batch, padded BatchedInput,
  limits [n] int32: the most output pieces of each source, see output_limit))."""
  plan = plan_batches(sources, buckets, batch_size)

  def batches():
    for batch in plan.batches:
      bucket = buckets[batch.bucket]
      chunk = [plan.sources[i] for i in batch.indices]
      limits = [output_limit(len(source), bucket[1], max_length_ratio) for source in chunk]
      yield batch, pad_batch(chunk, [[]] * len(chunk), bucket), np.array(limits, np.int32)

  return plan, batches()


def _run_batches(run, batches, workers):
  """Calls run(batch, padded, limits) for every item of `batches`, on `workers` threads.

  Each thread's session.run works on its own batch, so the cores are busy with
  `workers` batches rather than sharing out the small ops of one (see
  translator._restored_session). The longest batches go first (by sentences x longest
  source, the row-steps they run), so that no core is left with a long batch at the
  end: on test_2016_flickr with the recipe model the cores then finished within ~20 ms
  of each other, against 100-170 ms when the largest buckets went first.
  """
  items = sorted(batches, key=lambda item: -len(item[0].indices) * item[1].source_lengths.max())
  if workers <= 1 or len(items) <= 1:
    for item in items:
      run(*item)
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  try:
    for future in [pool.submit(run, *item) for item in items]:
      future.result()
  finally:
    pool.shutdown(cancel_futures=True)


def greedy_ids(session, ops, buckets, sources, batch_size, max_length_ratio=2.0, workers=1):
  """Greedy outputs for every source, in input order, batched by bucket.

  ops: a graphs.GreedyOps (it takes any bucket's batches); workers: batches decoded
  at a time (see _run_batches). Returns (list of output id lists, indices of
  truncated sources). A single non-empty source runs through single_ids, when the
  ops have it (beam search: single_found).
  """
  plan, batches = _padded_batches(sources, buckets, batch_size, max_length_ratio)
  outputs = [[] for _ in plan.sources]
  fetch = ops.single_ids if _single(plan) and ops.single_ids is not None else ops.ids

  def run(batch, padded, limits):
    ids = session.run(fetch, {ops.encoder_inputs: padded.encoder_inputs,
                              ops.source_lengths: padded.source_lengths,
                              ops.max_steps: limits.max() + 1})  # + 1: room for EOS
    for row, i in enumerate(batch.indices):
      outputs[i] = cut_at_eos(ids[row, :limits[row]])

  _run_batches(run, batches, workers)
  return outputs, plan.truncated


def beam_search(session, ops, buckets, sources, beam_size, batch_size, length_penalty=0.0,
                n_best=1, max_length_ratio=2.0, workers=1):
  """Beam search for every source, in input order, batched by bucket.

  ops: a graphs.BeamOps (it takes any bucket's batches); batch_size counts sentences (a
  step runs up to batch_size * beam_size decoder rows); length_penalty: the GNMT alpha;
  workers: as for greedy_ids. Returns (per source its n_best best Hypothesis, best
  first ([Hypothesis([], 0.0)] for an empty source), indices of truncated sources).
  """
  plan, batches = _padded_batches(sources, buckets, batch_size, max_length_ratio)
  results = [[Hypothesis([], 0.0)] for _ in plan.sources]
  fetch = ops.single_found if _single(plan) else ops.found

  def run(batch, padded, limits):
    ids, lengths, scores = session.run(fetch, {
        ops.encoder_inputs: padded.encoder_inputs, ops.source_lengths: padded.source_lengths,
        ops.limits: limits, ops.beam_size: beam_size, ops.n_best: n_best,
        ops.alpha: length_penalty})
    for row, i in enumerate(batch.indices):
      results[i] = [Hypothesis(ids[row, j, :lengths[row, j]].tolist(), float(scores[row, j]))
                    for j in range(n_best) if scores[row, j] > -np.inf]

  _run_batches(run, batches, workers)
  return results, plan.truncated
