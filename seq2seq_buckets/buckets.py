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
    keys, counts = np.unique(np.asarray(source_lens, np.int64) << 32 | target_lens,
                             return_counts=True)
    for key, c in zip(keys.tolist(), counts.tolist()):
      self.counts[(key >> 32, key & 0xFFFFFFFF)] += c

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


def choose_buckets(histogram, count):
  """The at most `count` buckets that hold every pair in the fewest padded slots.

  Exact, by dynamic programming over chains of strictly increasing buckets
  ending at the largest pair (max s, max t + 1): least[k][P] is the fewest
  slots that k + 1 buckets, the largest being P, spend on the pairs fitting P.
  A chain of fewer buckets wins ties, so no bucket comes back empty.
  """
  grid = _Grid(histogram, count)
  least = [grid.size * grid.held]
  for _ in range(count - 1):
    least.append(_add_bucket_below(grid, least[-1]))
  used = int(np.argmin([layer[-1, -1] for layer in least])) + 1
  return [(int(grid.xs[a]), int(grid.ys[b])) for a, b in _backtrack(grid, least[:used])]


class _Grid:
  """The candidate bucket lengths and how many pairs each candidate bucket holds.

  Candidates are each distinct source length (target length + 1) and the
  count - 1 lengths above it: in an optimal chain each bucket's length is one
  of those or its predecessor's + 1 (lowering a bucket to the next length
  present loses no pair). xs: [S] source, ys: [T] target candidates;
  held: [S, T] pairs with s <= xs[a] and t + 1 <= ys[b]; size: [S, T] xs + ys.
  """

  def __init__(self, histogram, count):
    s, t, c = histogram.arrays()
    if c.sum() == 0:
      raise UserError("cannot choose buckets: no pairs")
    s, o = np.maximum(s, 1), np.maximum(t + 1, 2)
    self.xs = _candidates(np.append(s, 1), count)
    self.ys = _candidates(np.append(o, 2), count)
    counts = np.zeros((len(self.xs), len(self.ys)), np.int64)
    np.add.at(counts, (np.searchsorted(self.xs, s), np.searchsorted(self.ys, o)), c)
    self.held = counts.cumsum(0).cumsum(1)
    self.size = self.xs[:, None] + self.ys[None, :]


def _candidates(lengths, count):
  """Sorted distinct lengths and the count - 1 above each, none above the largest."""
  values = np.unique(np.unique(lengths)[:, None] + np.arange(count)[None, :])
  return values[values <= lengths.max()]


def _add_bucket_below(grid, least):
  """least[k + 1] from least[k]: [S, T] -> [S, T] (inf where no chain fits).

  A chain ending at P adds P to a chain ending at some P' < P in both lengths;
  P then holds the held[P] - held[P'] pairs the smaller chain left out:
  least'[P] = size[P] * held[P] + min over P' < P of (least[P'] - size[P] * held[P']).
  The minimum over the quadrant below P is a running minimum along both axes,
  taken once per distinct bucket size over the part of the grid it can reach.
  """
  below = np.full(least.shape, np.inf)
  for size in np.unique(grid.size):
    a = np.searchsorted(grid.xs, size - grid.ys[0], "right")  # rows and columns a bucket
    b = np.searchsorted(grid.ys, size - grid.xs[0], "right")  # of this size can reach
    lowest = np.minimum.accumulate(np.minimum.accumulate(
        least[:a, :b] - size * grid.held[:a, :b], 0), 1)
    here = grid.size[1:a, 1:b] == size
    below[1:a, 1:b][here] = lowest[:-1, :-1][here]
  return grid.size * grid.held + below


def _backtrack(grid, least):
  """The grid points (a, b) of the chain behind least[-1] at the largest bucket, smallest first."""
  chain = [(len(grid.xs) - 1, len(grid.ys) - 1)]
  for layer in reversed(least[:-1]):
    a, b = chain[-1]
    options = layer[:a, :b] - grid.size[a, b] * grid.held[:a, :b]
    chain.append(np.unravel_index(np.argmin(options), options.shape))
  return chain[::-1]
