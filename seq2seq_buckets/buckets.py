"""The bucket rule, bucket specs, padding efficiency and the automatic bucket choice.

Pure Python and NumPy (no TensorFlow), so every stage and the tests can use it.

Convention: a bucket is a pair (I, O) of a source length I and a target length O.
A pair with `s` source pieces and `t` target pieces fits (I, O) iff s <= I and
t + 1 <= O: the decoder reads GO + t pieces and predicts t pieces + EOS, so a
target occupies t + 1 of the O decoder slots. Buckets are strictly increasing in
both lengths and a pair goes to the first (smallest) bucket it fits.
"""

import collections
import re

import numpy as np

from seq2seq_buckets.errors import UserError

MAX_AUTO_BUCKETS = 64
_PAIR = re.compile(r"\s*([0-9]+)\s*,\s*([0-9]+)\s*")
_AUTO = re.compile(r"auto:([0-9]+)")


def fits(source_len, target_len, bucket):
  """Whether a pair of `source_len` and `target_len` pieces fits `bucket` (I, O).

  The one place the rule lives. Works on ints (-> bool) and on int arrays of
  equal shape (-> bool array).
  """
  return (source_len <= bucket[0]) & (target_len + 1 <= bucket[1])


def bucket_index(source_len, target_len, buckets):
  """Index of the smallest bucket the pair fits, or None when it fits none."""
  for i, bucket in enumerate(buckets):
    if fits(source_len, target_len, bucket):
      return i
  return None


def bucket_indices(source_lens, target_lens, buckets):
  """bucket_index for arrays: [n] int arrays -> [n] int64, -1 where a pair fits no bucket."""
  index = np.full(np.shape(source_lens), -1, np.int64)
  for i in range(len(buckets) - 1, -1, -1):
    index[fits(source_lens, target_lens, buckets[i])] = i
  return index


def truncate_to(source_lens, target_lens, bucket):
  """Lengths (s, t) of pairs cut so that they fit `bucket`; ints or int arrays."""
  return np.minimum(source_lens, bucket[0]), np.minimum(target_lens, bucket[1] - 1)


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
  return [(int(i), int(o)) for i, o in buckets]


def parse_buckets(spec):
  """Parses '10,15;20,25' into [(10, 15), (20, 25)], or 'auto:N' into ('auto', N)."""
  spec = spec.strip()
  auto = _AUTO.fullmatch(spec)
  if auto:
    count = int(auto.group(1))
    if not 1 <= count <= MAX_AUTO_BUCKETS:
      raise UserError(f"malformed bucket spec {spec!r}: 'auto:N' needs N in 1..{MAX_AUTO_BUCKETS}")
    return ("auto", count)
  pairs = [_PAIR.fullmatch(part) for part in spec.split(";")]
  if not all(pairs):
    raise UserError(f"malformed bucket spec {spec!r}: expected 'I,O;I,O;...' or 'auto:N'")
  return check_buckets([(int(m.group(1)), int(m.group(2))) for m in pairs])


def format_buckets(buckets):
  """Inverse of parse_buckets for explicit lists: [(10, 15)] -> '10,15'."""
  return ";".join(f"{i},{o}" for i, o in buckets)


class LengthHistogram:
  """Counts of pairs by (source pieces, target pieces); small and exact for any corpus size."""

  def __init__(self):
    self.counts = collections.Counter()

  def add(self, source_lens, target_lens):
    """Counts the pairs of [n] int arrays of source and target lengths."""
    if len(source_lens) == 0:
      return
    keys, counts = np.unique(np.stack([source_lens, target_lens], axis=1), axis=0,
                             return_counts=True)
    for (s, t), c in zip(keys.tolist(), counts.tolist()):
      self.counts[(s, t)] += c

  def arrays(self):
    """(s, t, count): [n] int64 arrays, one entry per distinct length pair."""
    items = sorted(self.counts.items())
    s, t = (np.array([k[d] for k, _ in items], dtype=np.int64) for d in (0, 1))
    return s, t, np.array([v for _, v in items], dtype=np.int64)


def padding_efficiency(histogram, buckets):
  """Real tokens / padded slots (source and target together) for the pairs that fit.

  A pair in bucket (I, O) holds s + t + 1 real tokens in I + O slots.
  """
  s, t, c = histogram.arrays()
  first = bucket_indices(s, t, buckets)
  ok = first >= 0
  if not ok.any():
    return 0.0
  sizes = np.array([i + o for i, o in buckets], dtype=np.int64)
  return float(np.sum(c[ok] * (s[ok] + t[ok] + 1)) / np.sum(c[ok] * sizes[first[ok]]))


def choose_buckets(histogram, count, rounds=50):
  """Up to `count` increasing buckets that hold every pair with little padding.

  Candidate lengths are the distinct source lengths and target lengths + 1 (a
  boundary between two of them only adds padding). The last bucket is the
  largest of both. The others start at length quantiles; then each bucket in
  turn moves to the point between its neighbours with the fewest padded slots,
  until none moves. This local optimum matches the exact optimum on Multi30k
  for N <= 4 and is within 0.5% of it for N <= 8. Buckets left holding no pair
  are dropped, so fewer than `count` come back when the lengths allow no more.
  """
  grid = _Grid(histogram)
  count = min(count, len(grid.xs), len(grid.ys))
  chain = np.stack([_quantile_start(grid.source_cdf, count),
                    _quantile_start(grid.target_cdf, count)])  # [2, K] grid indices
  for _ in range(rounds):
    if not any([_improve(grid, chain, k) for k in range(count - 1)]):
      break
  held = np.diff(grid.cumulative[chain[0], chain[1]], prepend=0)
  return [(int(grid.xs[a]), int(grid.ys[b])) for a, b in chain[:, held > 0].T]


class _Grid:
  """A length histogram on the grid of distinct lengths.

  xs: [S] distinct source lengths; ys: [T] distinct target lengths + 1 (raised
  to the smallest legal bucket); cumulative: [S, T] pairs with s <= xs[a] and
  t + 1 <= ys[b]; source_cdf [S], target_cdf [T]: share of pairs up to each.
  """

  def __init__(self, histogram):
    s, t, c = histogram.arrays()
    if c.sum() == 0:
      raise UserError("cannot choose buckets: no pairs")
    self.xs, a = np.unique(np.maximum(s, 1), return_inverse=True)
    self.ys, b = np.unique(np.maximum(t + 1, 2), return_inverse=True)
    counts = np.zeros((len(self.xs), len(self.ys)), np.int64)
    np.add.at(counts, (a, b), c)
    self.cumulative = counts.cumsum(0).cumsum(1)
    self.source_cdf = self.cumulative[:, -1] / c.sum()
    self.target_cdf = self.cumulative[-1, :] / c.sum()

  def size(self, a, b):
    """Slots I + O of the buckets at grid points (a, b)."""
    return self.xs[a] + self.ys[b]


def _quantile_start(cdf, count):
  """[count] strictly increasing grid indices near the k/count quantiles, the last at the top."""
  top, k = len(cdf) - 1, np.arange(count)
  start = np.clip(np.searchsorted(cdf, (k + 1) / count - 1e-9), k, top - k[::-1])
  start[-1] = top
  return np.maximum.accumulate(start - k) + k


def _improve(grid, chain, k):
  """Moves bucket k of `chain` ([2, K], K > k + 1) to its best point; True if it moved.

  Only buckets k and k + 1 change their pairs: k holds those between k - 1 and
  its point, k + 1 the rest up to its own point.
  """
  below = grid.cumulative[chain[0, k - 1], chain[1, k - 1]] if k else 0
  up_size = grid.size(*chain[:, k + 1])
  up_held = grid.cumulative[chain[0, k + 1], chain[1, k + 1]]

  def slots(a, b):
    held = grid.cumulative[a, b]
    return grid.size(a, b) * (held - below) + up_size * (up_held - held)

  ranges = [np.arange(chain[d, k - 1] + 1 if k else 0, chain[d, k + 1]) for d in (0, 1)]
  a, b = (v.ravel() for v in np.meshgrid(*ranges, indexing="ij"))
  trial = slots(a, b)
  best = int(np.argmin(trial))
  if trial[best] < slots(chain[0, k], chain[1, k]):
    chain[:, k] = a[best], b[best]
    return True
  return False
