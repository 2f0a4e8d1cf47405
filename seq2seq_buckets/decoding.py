"""Translating text with a restored model: bucketing, greedy and beam search, detokenizing.

Inputs are encoded with SentencePiece, grouped by the smallest bucket their
source fits (too-long inputs are cut to the largest bucket and reported),
decoded in batches and written back in input order.
"""

import collections

import numpy as np

from seq2seq_buckets.batches import pad_batch
from seq2seq_buckets.vocab import EOS_ID, GO_ID

# A decoded line: text, the output piece ids, the model score (sum of log-probs, or
# None for greedy) and, with n-best, more Hypothesis entries.
Hypothesis = collections.namedtuple("Hypothesis", ["text", "ids", "score"])


def source_bucket(length, buckets):
  """Index of the smallest bucket whose source side holds `length` pieces, or None."""
  for i, (source_len, _) in enumerate(buckets):
    if length <= source_len:
      return i
  return None


def group_by_bucket(sources, buckets):
  """sources: list of id lists -> ({bucket: [line indices]}, [indices that were truncated]).

  A source longer than the largest bucket is cut to it in place.
  """
  groups, truncated = collections.defaultdict(list), []
  for index, ids in enumerate(sources):
    b = source_bucket(len(ids), buckets)
    if b is None:
      b = len(buckets) - 1
      sources[index] = ids[:buckets[b][0]]
      truncated.append(index)
    groups[b].append(index)
  return groups, truncated


def cut_at_eos(ids):
  ids = list(ids)
  return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def output_limit(source_len, target_len, max_length_ratio):
  """Most output pieces for a source of source_len pieces in a bucket with O = target_len."""
  return max(1, min(target_len - 1, int(max_length_ratio * source_len) + 5))


def greedy_ids(session, greedy_ops, buckets, sources, batch_size, max_length_ratio=2.0,
               feed=None):
  """Greedy output ids (EOS removed) for every source id list, in input order.

  greedy_ops: per bucket an object with encoder_inputs, source_lengths and ids
  tensors. Returns (outputs, indices of truncated inputs).
  """
  sources = [list(s) for s in sources]
  groups, truncated = group_by_bucket(sources, buckets)
  outputs = [None] * len(sources)
  for b, indices in groups.items():
    ops = greedy_ops[b]
    # sort by length inside the bucket so batches hold similar sentences
    indices = sorted(indices, key=lambda i: len(sources[i]))
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      batch = pad_batch([sources[i] for i in chunk], [[]] * len(chunk), buckets[b])
      feed_dict = {ops.encoder_inputs: batch.encoder_inputs,
                   ops.source_lengths: batch.source_lengths}
      feed_dict.update(feed or {})
      ids = session.run(ops.ids, feed_dict)
      for row, i in enumerate(chunk):
        limit = output_limit(len(sources[i]), buckets[b][1], max_length_ratio)
        outputs[i] = cut_at_eos(ids[row])[:limit]
  return outputs, truncated


def beam_search(session, graph, buckets, sources, beam_size, batch_size, length_penalty=0.0,
                n_best=1, max_length_ratio=2.0):
  """Beam search through the per-bucket encoder and the one-step decoder.

  Returns (per source a list of n_best Hypothesis(text=None, ids, score) best
  first, indices of truncated inputs). Finished hypotheses (EOS) leave the beam
  and are kept; the rest go on until the output limit. Scores are log-probs
  normalised by the GNMT length penalty ((5 + len) / 6) ** alpha when alpha > 0.
  """
  sources = [list(s) for s in sources]
  groups, truncated = group_by_bucket(sources, buckets)
  results = [None] * len(sources)
  for b, indices in groups.items():
    indices = sorted(indices, key=lambda i: len(sources[i]))
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      found = _beam_batch(session, graph, b, buckets[b], [sources[i] for i in chunk],
                          beam_size, length_penalty, n_best, max_length_ratio)
      for i, hyps in zip(chunk, found):
        results[i] = hyps
  return results, truncated


def _penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha if alpha > 0 else 1.0


def _beam_batch(session, graph, b, bucket, sources, k, alpha, n_best, max_length_ratio):
  enc = graph.encoders[b]
  step = graph.step
  batch = pad_batch(sources, [[]] * len(sources), bucket)
  memory, keys, states, output = session.run(
      [enc.memory, enc.keys, enc.states, enc.output],
      {enc.encoder_inputs: batch.encoder_inputs, enc.source_lengths: batch.source_lengths})
  n = len(sources)
  tile = lambda x: np.repeat(x, k, axis=0)  # [n, ...] -> [n*k, ...], beams of a sentence adjacent
  memory, keys, lengths = tile(memory), tile(keys), tile(batch.source_lengths)
  states, output = [tile(s) for s in states], tile(output)
  tokens = np.full([n * k], GO_ID, np.int32)
  scores = np.full([n, k], -np.inf, np.float32)
  scores[:, 0] = 0.0  # only one live beam at the start
  history = [[[] for _ in range(k)] for _ in range(n)]
  finished = [[] for _ in range(n)]
  limits = [output_limit(len(s), bucket[1], max_length_ratio) for s in sources]
  done = [False] * n
  for t in range(max(limits)):
    feed = {step.tokens: tokens, step.output: output, step.memory: memory, step.keys: keys,
            step.source_lengths: lengths}
    feed.update(zip(step.states, states))
    log_probs, output, states = session.run([step.log_probs, step.new_output, step.new_states], feed)
    vocab = log_probs.shape[1]
    total = (scores.reshape(-1, 1) + log_probs).reshape(n, k * vocab)
    best = np.argpartition(-total, 2 * k, axis=1)[:, :2 * k]
    order = np.take_along_axis(total, best, 1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(best, order, 1)
    new_tokens = np.zeros([n, k], np.int32)
    new_parent = np.zeros([n, k], np.int64)
    new_scores = np.full([n, k], -np.inf, np.float32)
    new_history = [[[] for _ in range(k)] for _ in range(n)]
    for s in range(n):
      live = 0
      for flat in best[s]:
        if live == k or done[s]:
          break
        parent, token = divmod(int(flat), vocab)
        score = total[s, flat]
        if not np.isfinite(score):
          break
        path = history[s][parent] + [token]
        if token == EOS_ID or t + 1 == limits[s]:
          ids = path[:-1] if token == EOS_ID else path
          finished[s].append((score / _penalty(len(path), alpha), score, ids))
          continue
        new_tokens[s, live], new_parent[s, live], new_scores[s, live] = token, parent, score
        new_history[s][live] = path
        live += 1
      # a sentence is done when its best finished hypothesis beats every live one
      if finished[s] and not done[s]:
        best_done = max(f[0] for f in finished[s])
        # live scores only fall; with a length penalty the best they can reach is
        # today's score under the longest allowed length's penalty
        best_live = new_scores[s].max() / _penalty(limits[s], alpha)
        if len(finished[s]) >= n_best and (live == 0 or best_done >= best_live):
          done[s] = True
      if live == 0:
        done[s] = True
    if all(done):
      break
    rows = (np.arange(n)[:, None] * k + new_parent).reshape(-1)
    states = [s[rows] for s in states]
    output = output[rows]
    tokens, scores, history = new_tokens.reshape(-1), new_scores, new_history
  results = []
  for s in range(n):
    ranked = sorted(finished[s], key=lambda f: -f[0])[:n_best]
    results.append([Hypothesis(None, ids, float(score)) for _, score, ids in ranked])
  return results
