"""Shards: exact TFRecord bytes, CRC-32C, shard rolling, and read-back through tf.data."""

import os

import numpy as np
import pytest

from seq2seq_buckets import batches
from seq2seq_buckets import shards

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def flat(lists):
  """(ids [total] int32, lengths [n] int64) of a list of id lists."""
  lengths = np.array([len(x) for x in lists], np.int64)
  return np.array([i for x in lists for i in x], np.int32), lengths


def unmask(masked):
  rot = (int(masked) - 0xA282EAD8) & 0xFFFFFFFF
  return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


@pytest.mark.parametrize("data, crc", [   # RFC 3720 B.4 test vectors for CRC-32C
    (bytes(32), 0x8A9136AA),
    (bytes([0xFF] * 32), 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, crc):
  words = np.frombuffer(data, "<u4")
  got = shards.masked_crc32c(np.concatenate([words, words[:3]]), np.array([8, 3]))
  assert unmask(got[0]) == crc


def test_pair_records_layout():
  words, lengths = shards.pair_records(flat([[5, 6], [], [7]]), flat([[8], [9, 10], []]))
  assert lengths.tolist() == [5, 4, 3]
  assert words.tolist() == [2, 1, 5, 6, 8, 0, 2, 9, 10, 1, 0, 7]


def random_pairs(seed, n, max_len=12):
  rng = np.random.default_rng(seed)
  return ([rng.integers(4, 500, rng.integers(0, max_len)).tolist() for _ in range(n)],
          [rng.integers(4, 500, rng.integers(0, max_len)).tolist() for _ in range(n)])


def test_frame_records_equals_tensorflow_writer(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sources, targets = random_pairs(0, 60)
  words, lengths = shards.pair_records(flat(sources), flat(targets))
  path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for src, tgt in zip(sources, targets):
      writer.write(np.array([len(src), len(tgt), *src, *tgt], "<i4").tobytes())
  with open(path, "rb") as f:
    assert shards.frame_records(words, lengths).tobytes() == f.read()


def test_frame_records_of_nothing():
  assert shards.frame_records(np.zeros(0, np.uint32), np.zeros(0, np.int64)).tobytes() == b""


def write_bucket(out_dir, split, sources, targets, chunks=1):
  writer = shards.ShardWriter(str(out_dir), split, 1)
  for part in np.array_split(np.arange(len(sources)), chunks):
    words, lengths = shards.pair_records(flat([sources[i] for i in part]),
                                         flat([targets[i] for i in part]))
    writer.write(0, shards.frame_records(words, lengths), lengths + 4)
  writer.close()
  return [os.path.join(str(out_dir), name) for name in writer.files[0]]


def test_writer_rolls_shards_and_leaves_no_partial(tmp_path, monkeypatch):
  monkeypatch.setattr(shards, "PAIRS_PER_SHARD", 7)
  sources, targets = random_pairs(1, 30)
  files = write_bucket(tmp_path, "train", sources, targets, chunks=4)
  assert [os.path.basename(f) for f in files] == [
      f"train-b0-{i:05d}.tfrecord" for i in range(5)]
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)
  words, lengths = shards.pair_records(flat(sources), flat(targets))
  data = b"".join(open(f, "rb").read() for f in files)
  assert data == shards.frame_records(words, lengths).tobytes()


def read_batches(files, bucket, batch_size, count=None, **kwargs):
  """Batches of bucket_dataset as NumPy BatchedInputs (all, or the first `count`), read
  in graph mode as training reads them (the process may have eager execution off)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  with tf.Graph().as_default() as graph:
    dataset = shards.bucket_dataset(files, bucket, batch_size, **kwargs)
    next_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
    out = []
    with tf1.Session(graph=graph) as session:
      while count is None or len(out) < count:
        try:
          out.append(batches.BatchedInput(*session.run(next_batch)))
        except tf.errors.OutOfRangeError:
          break
  return out


def read_all(files, bucket, batch_size):
  """Every batch of bucket_dataset, unshuffled."""
  return read_batches(files, bucket, batch_size, shuffle=False, repeat=False)


def test_read_back_equals_pad_batch(tmp_path):
  bucket = (12, 13)
  sources, targets = random_pairs(2, 25)
  files = write_bucket(tmp_path, "dev", sources, targets)
  got = read_all(files, bucket, batch_size=10)
  assert [len(b.encoder_inputs) for b in got] == [10, 10, 5]
  want = batches.pad_batch(sources, targets, bucket)
  for field, array in zip(batches.BatchedInput._fields, want):
    np.testing.assert_array_equal(np.concatenate([getattr(b, field) for b in got]), array,
                                  err_msg=field)
    assert np.concatenate([getattr(b, field) for b in got]).dtype == array.dtype


def test_shuffled_repeating_batches_have_the_bucket_shape(tmp_path):
  bucket = (12, 13)
  sources, targets = random_pairs(3, 9)
  files = write_bucket(tmp_path, "train", sources, targets)
  want = batches.pad_batch(sources, targets, bucket)
  rows = {tuple(r) for r in want.encoder_inputs.tolist()}
  seen = set()
  for batch in read_batches(files, bucket, 4, count=6, shuffle=True, repeat=True, seed=1):
    assert batch.encoder_inputs.shape == (4, 12) and batch.targets.shape == (4, 13)
    seen |= {tuple(r) for r in batch.encoder_inputs.tolist()}
  assert seen == rows  # 24 draws over 9 pairs, repeating: each comes back
