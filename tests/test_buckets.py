"""Table tests for the bucket rule, bucket specs, padding efficiency and the auto choice."""

import itertools
import random

import numpy as np
import pytest

from seq2seq_buckets import buckets as B
from seq2seq_buckets.errors import UserError

BUCKETS = [(5, 6), (10, 11), (20, 21)]


@pytest.mark.parametrize("s, t, bucket, expected", [
    (10, 14, (10, 15), True),   # t + 1 == O: EOS takes the last slot
    (10, 15, (10, 15), False),  # t == O: no room for EOS
    (11, 0, (10, 15), False),   # s == I + 1
    (10, 0, (10, 15), True),    # s == I
    (1, 1, (1, 2), True),       # the smallest legal bucket
    (0, 0, (1, 2), True),
    (2, 1, (1, 2), False),
    (1, 2, (1, 2), False),
])
def test_fits(s, t, bucket, expected):
  assert B.fits(s, t, bucket) is expected


@pytest.mark.parametrize("s, t, expected", [
    (5, 5, 0), (1, 1, 0),
    (5, 6, 1),     # target needs 7 decoder slots
    (6, 1, 1),     # source one longer than bucket 0
    (10, 10, 1),
    (11, 10, 2), (10, 11, 2), (20, 20, 2),
    (21, 1, None), (1, 21, None), (20, 21, None),
])
def test_bucket_index(s, t, expected):
  assert B.bucket_index(s, t, BUCKETS) == expected


def test_bucket_indices_agree_with_bucket_index():
  s, t = (a.ravel() for a in np.meshgrid(np.arange(23), np.arange(23)))
  got = B.bucket_indices(s, t, BUCKETS)
  want = [B.bucket_index(a, b, BUCKETS) for a, b in zip(s.tolist(), t.tolist())]
  assert got.tolist() == [-1 if w is None else w for w in want]


def test_truncate_to_makes_pairs_fit():
  s, t = B.truncate_to(np.array([30, 3, 25]), np.array([2, 40, 25]), (20, 21))
  assert s.tolist() == [20, 3, 20] and t.tolist() == [2, 20, 20]
  assert B.fits(s, t, (20, 21)).all()


@pytest.mark.parametrize("spec, expected", [
    ("10,15;20,25;40,50", [(10, 15), (20, 25), (40, 50)]),
    (" 10 , 15 ; 20,25 ", [(10, 15), (20, 25)]),
    ("1,2", [(1, 2)]),
    ("auto:4", ("auto", 4)),
    ("auto:1", ("auto", 1)),
    ("auto:64", ("auto", 64)),
])
def test_parse_buckets(spec, expected):
  assert B.parse_buckets(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "malformed"), ("auto", "malformed"), ("auto:", "malformed"), ("auto:x", "malformed"),
    ("auto:0", "1..64"), ("auto:65", "1..64"), ("auto:-2", "malformed"),
    ("10,15;", "malformed"), ("10;20", "malformed"), ("10,15,20", "malformed"),
    ("a,b", "malformed"), ("10,15;;20,25", "malformed"), ("1.5,2", "malformed"),
    ("-1,5", "malformed"), ("10,15 20,25", "malformed"), ("²,3", "malformed"),
    ("0,5", "too small"), ("5,1", "too small"),
    ("10,15;10,20", "increase"), ("10,15;20,15", "increase"), ("20,25;10,15", "increase"),
])
def test_parse_buckets_rejects(spec, message):
  with pytest.raises(UserError, match=message) as e:
    B.parse_buckets(spec)
  assert "\n" not in str(e.value)


def test_format_buckets_round_trips():
  assert B.parse_buckets(B.format_buckets(BUCKETS)) == BUCKETS


def histogram_of(counts):
  """A LengthHistogram from {(s, t): count}."""
  h = B.LengthHistogram()
  pairs = [p for p, c in counts.items() for _ in range(c)]
  h.add(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
  return h


def test_histogram_counts_pairs():
  h = B.LengthHistogram()
  h.add(np.array([3, 3, 5]), np.array([4, 4, 1]))
  h.add(np.array([3]), np.array([4]))
  h.add(np.array([], np.int64), np.array([], np.int64))
  assert dict(h.counts) == {(3, 4): 3, (5, 1): 1}
  s, t, c = h.arrays()
  assert (s.tolist(), t.tolist(), c.tolist()) == ([3, 5], [4, 1], [3, 1])


@pytest.mark.parametrize("counts, buckets, expected", [
    ({(2, 3): 1}, [(2, 4)], 1.0),               # 6 real tokens in 6 slots
    ({(2, 3): 1}, [(4, 6)], 0.6),               # 6 in 10
    ({(2, 3): 1, (9, 9): 1}, [(2, 4)], 1.0),    # pairs that fit no bucket do not count
    ({(2, 3): 1, (4, 5): 1}, [(2, 4), (4, 6)], 1.0),
    ({(2, 3): 1, (4, 5): 1}, [(4, 6)], 0.8),    # 16 in 20
    ({(9, 9): 1}, [(2, 4)], 0.0),
])
def test_padding_efficiency(counts, buckets, expected):
  assert B.padding_efficiency(histogram_of(counts), buckets) == pytest.approx(expected)


def random_histogram(seed, max_len=30, distinct=40):
  rng = random.Random(seed)
  return histogram_of({(rng.randint(1, max_len), rng.randint(1, max_len)): rng.randint(1, 50)
                       for _ in range(distinct)})


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 8])
def test_choose_buckets_properties(seed, count):
  h = random_histogram(seed)
  chosen = B.choose_buckets(h, count)
  s, t, _ = h.arrays()
  assert B.check_buckets(chosen) == chosen            # strictly increasing, legal
  assert 1 <= len(chosen) <= count
  assert (B.bucket_indices(s, t, chosen) >= 0).all()  # every pair fits
  assert chosen[-1] == (s.max(), t.max() + 1)
  single = B.choose_buckets(h, 1)
  assert single == [(s.max(), t.max() + 1)]
  assert B.padding_efficiency(h, chosen) >= B.padding_efficiency(h, single)
  if count > 1:
    fewer = B.choose_buckets(h, count - 1)
    assert B.padding_efficiency(h, chosen) >= B.padding_efficiency(h, fewer) - 1e-9


def best_by_brute_force(h, count):
  """The best efficiency of any `count` strictly increasing buckets ending at the maxima."""
  s, t, _ = h.arrays()
  top_i, top_o = int(s.max()), int(t.max()) + 1
  best = 0.0
  for inner_i in itertools.combinations(range(1, top_i), count - 1):
    for inner_o in itertools.combinations(range(2, top_o), count - 1):
      best = max(best, B.padding_efficiency(h, list(zip(inner_i + (top_i,), inner_o + (top_o,)))))
  return best


def test_choose_buckets_finds_clusters_exactly():
  h = histogram_of({(3, 2): 50, (8, 9): 30, (15, 20): 20})
  assert B.choose_buckets(h, 3) == [(3, 3), (8, 10), (15, 21)]
  assert B.padding_efficiency(h, B.choose_buckets(h, 3)) == 1.0


@pytest.mark.parametrize("counts, count", [
    # short pairs dominate, a long tail: the optimum cuts just above the bulk
    ({(3, 4): 40, (4, 4): 30, (5, 6): 20, (7, 8): 6, (12, 14): 3, (14, 11): 1}, 2),
    ({(3, 4): 40, (4, 4): 30, (5, 6): 20, (7, 8): 6, (12, 14): 3, (14, 11): 1}, 3),
    # lengths that disagree: long sources with short targets and the reverse
    ({(2, 9): 10, (9, 2): 10, (5, 5): 30, (10, 10): 2}, 3),
    # a bucket between two lengths that are present (4 is no t + 1 here)
    ({(3, 2): 2, (4, 1): 1, (6, 9): 2, (9, 4): 1, (9, 6): 1}, 3),
])
def test_choose_buckets_reaches_the_known_optimum(counts, count):
  h = histogram_of(counts)
  assert B.padding_efficiency(h, B.choose_buckets(h, count)) == \
      pytest.approx(best_by_brute_force(h, count))


@pytest.mark.parametrize("seed", range(12))
def test_choose_buckets_is_optimal_on_small_histograms(seed):
  h = random_histogram(seed, max_len=7, distinct=2 + seed % 7)
  for count in (2, 3):
    best = max(best_by_brute_force(h, k) for k in range(1, count + 1))
    assert B.padding_efficiency(h, B.choose_buckets(h, count)) == pytest.approx(best)


def test_choose_buckets_returns_fewer_when_lengths_allow_no_more():
  h = histogram_of({(4, 4): 10, (6, 7): 5})
  assert B.choose_buckets(h, 8) == [(4, 5), (6, 8)]
  assert B.choose_buckets(histogram_of({(4, 4): 3}), 4) == [(4, 5)]


def test_choose_buckets_needs_pairs():
  with pytest.raises(UserError, match="no pairs"):
    B.choose_buckets(B.LengthHistogram(), 4)
