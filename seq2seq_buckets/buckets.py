"""The bucket rule, bucket specs, padding efficiency and the automatic bucket choice.

Pure Python and NumPy (no TensorFlow), so every stage and the tests can use it.

Convention: a bucket is a pair (I, O) of a source length I and a target length O.
A pair with `s` source pieces and `t` target pieces fits (I, O) iff s <= I and
t + 1 <= O: the decoder reads GO + t pieces and predicts t pieces + EOS, so a
target occupies t + 1 of the O decoder slots. Buckets are strictly increasing in
both lengths and a pair goes to the first (smallest) bucket it fits.
"""

import numpy as np

from seq2seq_buckets.errors import UserError


def fits(source_len, target_len, bucket):
  """True iff a pair of `source_len` and `target_len` pieces fits `bucket` (I, O)."""
  return source_len <= bucket[0] and target_len + 1 <= bucket[1]


def bucket_index(source_len, target_len, buckets):
  """Index of the smallest bucket the pair fits, or None when it fits none."""
  for i, bucket in enumerate(buckets):
    if fits(source_len, target_len, bucket):
      return i
  return None


def truncate_to(source_len, target_len, bucket):
  """Lengths (s, t) of a pair cut so that it fits `bucket`."""
  return min(source_len, bucket[0]), min(target_len, bucket[1] - 1)


def check_buckets(buckets):
  """Raises UserError unless `buckets` is a non-empty, strictly increasing list of (I, O)."""
  if not buckets:
    raise UserError("bucket list is empty")
  for i, o in buckets:
    if i < 1 or o < 2:
      raise UserError(f"bucket ({i},{o}) is too small: need source >= 1 and target >= 2")
  for (i0, o0), (i1, o1) in zip(buckets, buckets[1:]):
    if not (i1 > i0 and o1 > o0):
      raise UserError(f"buckets must increase in both lengths: ({i0},{o0}) then ({i1},{o1})")
  return [tuple(b) for b in buckets]


def parse_buckets(spec):
  """Parses '10,15;20,25' into [(10, 15), (20, 25)], or 'auto:N' into ('auto', N)."""
  spec = spec.strip()
  if spec.startswith("auto:"):
    count = spec[len("auto:"):]
    if not count.isdigit() or not 1 <= int(count) <= 64:
      raise UserError(f"malformed bucket spec {spec!r}: 'auto:N' needs N in 1..64")
    return ("auto", int(count))
  buckets = []
  for part in spec.split(";"):
    fields = part.split(",")
    if len(fields) != 2 or not all(f.strip().isdigit() for f in fields):
      raise UserError(f"malformed bucket spec {spec!r}: expected 'I,O;I,O;...' or 'auto:N'")
    buckets.append((int(fields[0]), int(fields[1])))
  return check_buckets(buckets)


def format_buckets(buckets):
  """Inverse of parse_buckets for explicit lists: [(10, 15)] -> '10,15'."""
  return ";".join(f"{i},{o}" for i, o in buckets)


class LengthHistogram:
  """Counts of pairs by (source pieces, target pieces); small and exact for any corpus size."""

  def __init__(self):
    self.counts = {}

  def add(self, source_len, target_len):
    key = (source_len, target_len)
    self.counts[key] = self.counts.get(key, 0) + 1

  def arrays(self):
    """(s, t, count) as int64 arrays, one entry per distinct length pair."""
    items = sorted(self.counts.items())
    s = np.array([k[0] for k, _ in items], dtype=np.int64)
    t = np.array([k[1] for k, _ in items], dtype=np.int64)
    c = np.array([v for _, v in items], dtype=np.int64)
    return s, t, c


def padding_efficiency(histogram, buckets):
  """Real tokens / padded slots (source and target together) for the pairs that fit.

  A pair in bucket (I, O) holds s + t + 1 real tokens in I + O slots.
  """
  s, t, c = histogram.arrays()
  return _efficiency(s, t, c, np.array(buckets, dtype=np.int64))


def _efficiency(s, t, c, buckets):
  fit = (s[:, None] <= buckets[None, :, 0]) & (t[:, None] + 1 <= buckets[None, :, 1])
  ok = fit.any(axis=1)
  if not ok.any():
    return 0.0
  first = np.argmax(fit, axis=1)[ok]
  real = np.sum(c[ok] * (s[ok] + t[ok] + 1))
  slots = np.sum(c[ok] * buckets[first].sum(axis=1))
  return float(real / slots)


def choose_buckets(histogram, count, rounds=20):
  """Chooses `count` increasing buckets that hold every pair with the least padding.

  The last bucket is (max s, max t + 1). The others start at length quantiles and
  are improved by coordinate descent: each boundary in turn is moved to the value
  in its allowed range that maximises padding efficiency, until nothing improves.
  """
  s, t, c = histogram.arrays()
  if c.sum() == 0:
    raise UserError("cannot choose buckets: no pairs")
  s_max, o_max = int(s.max()), int(t.max()) + 1
  count = max(1, min(count, s_max, o_max - 1))
  ranked = np.argsort(np.maximum(s / s_max, (t + 1) / o_max), kind="stable")
  cum = np.cumsum(c[ranked]) / c.sum()
  buckets = []
  for k in range(1, count):
    idx = ranked[: np.searchsorted(cum, k / count) + 1]
    buckets.append([int(s[idx].max()), int(t[idx].max()) + 1])
  buckets.append([s_max, o_max])
  buckets = _make_increasing(buckets)
  best = _efficiency(s, t, c, np.array(buckets))
  for _ in range(rounds):
    improved = False
    for k in range(count - 1):
      for dim in (0, 1):
        low = buckets[k - 1][dim] + 1 if k else (1 if dim == 0 else 2)
        high = buckets[k + 1][dim] - 1
        for value in range(low, high + 1):
          trial = [list(b) for b in buckets]
          trial[k][dim] = value
          score = _efficiency(s, t, c, np.array(trial))
          if score > best + 1e-12:
            best, buckets, improved = score, trial, True
    if not improved:
      break
  return [tuple(b) for b in buckets]


def _make_increasing(buckets):
  """Nudges quantile boundaries so both lengths strictly increase towards the last bucket."""
  out = [list(b) for b in buckets]
  for k in range(len(out) - 2, -1, -1):
    for dim in (0, 1):
      out[k][dim] = min(out[k][dim], out[k + 1][dim] - 1)
  for k in range(len(out)):
    out[k][0] = max(out[k][0], k + 1)
    out[k][1] = max(out[k][1], k + 2)
  return out
