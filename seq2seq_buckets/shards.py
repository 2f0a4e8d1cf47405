"""Per-bucket TFRecord shards: the writer prepare uses and the tf.data reader training uses.

Record format: one pair per record, little-endian int32 values
[s, t, source piece ids (s), target piece ids (t)]. GO/EOS are not stored; the
reader adds them when it lays a pair out as a BatchedInput row.

The writer is NumPy only (TFRecord framing with CRC-32C computed for many
records at once), so prepare never imports TensorFlow; the reader imports it
when called.
"""

import os

import numpy as np

from seq2seq_buckets.batches import BatchedInput
from seq2seq_buckets.vocab import EOS_ID, GO_ID

PAIRS_PER_SHARD = 100_000
HEADER_WORDS = 3  # of a framed record, before its data: uint64 byte length, its crc
_CRC_MASK_DELTA = 0xA282EAD8


def segment_indices(starts, lengths):
  """Concatenated ranges starts[r] .. starts[r] + lengths[r] - 1: [n], [n] -> [sum(lengths)]."""
  ends = np.cumsum(lengths)
  return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def pair_records(source, target):
  """Records of pairs, back to back.

  source, target: (ids [sum(lengths)] int32, lengths [n] int64), the pieces of n
  pairs concatenated. Returns (words [sum(2 + s + t)] uint32, lengths [n] int64
  words per record), record r being [s_r, t_r, source_r, target_r].
  """
  (src_ids, src_lens), (tgt_ids, tgt_lens) = source, target
  lengths = 2 + src_lens + tgt_lens
  starts = np.cumsum(lengths) - lengths
  words = np.empty(int(lengths.sum()), np.uint32)
  words[starts], words[starts + 1] = src_lens, tgt_lens
  words[segment_indices(starts + 2, src_lens)] = src_ids
  words[segment_indices(starts + 2 + src_lens, tgt_lens)] = tgt_ids
  return words, lengths


def _crc32c_tables():
  """[2, 65536] uint32 tables for CRC-32C (Castagnoli) taking four bytes a step.

  Built from the byte table: tables[0][x] is the CRC contribution of the low two
  bytes x of a word, tables[1][x] that of its high two bytes.
  """
  byte = np.arange(256, dtype=np.uint32)
  for _ in range(8):
    byte = np.where(byte & 1, (byte >> 1) ^ np.uint32(0x82F63B78), byte >> 1)
  shifted = [byte]  # shifted[k][b]: byte b followed by k zero bytes
  for _ in range(3):
    shifted.append((shifted[-1] >> 8) ^ byte[shifted[-1] & 0xFF])
  low, high = np.arange(1 << 16, dtype=np.uint32) & 0xFF, np.arange(1 << 16, dtype=np.uint32) >> 8
  return np.stack([shifted[3][low] ^ shifted[2][high], shifted[1][low] ^ shifted[0][high]])


_TABLES = _crc32c_tables()


def masked_crc32c(words, lengths):
  """TFRecord's masked CRC-32C of each record.

  words: [sum(lengths)] uint32, records back to back (bytes in little-endian
  order); lengths: [n] words per record. Returns [n] uint32. The records are
  walked a word at a time, all of them together, longest first.
  """
  order = np.argsort(-lengths, kind="stable")
  starts = (np.cumsum(lengths) - lengths)[order]
  active = np.searchsorted(-lengths[order], -np.arange(lengths.max(initial=0)))
  crc = np.full(len(lengths), 0xFFFFFFFF, np.uint32)
  low, high = _TABLES
  for j, n in enumerate(active):
    c = crc[:n] ^ words[starts[:n] + j]
    crc[:n] = low[c & 0xFFFF] ^ high[c >> 16]
  crc ^= np.uint32(0xFFFFFFFF)
  masked = ((crc >> 15) | (crc << 17)) + np.uint32(_CRC_MASK_DELTA)
  out = np.empty_like(masked)
  out[order] = masked
  return out


def framed_pair_lengths(source_lens, target_lens):
  """Words of each framed pair record: header, [s, t], the pieces, data crc. [n] -> [n]."""
  return HEADER_WORDS + 2 + source_lens + target_lens + 1


def frame_records(words, lengths):
  """TFRecord framing of records back to back in `words` (see pair_records).

  Each record becomes [byte length: uint64][masked crc of the length: uint32]
  [data][masked crc of the data: uint32]. Returns [sum(lengths + 4)] uint32,
  little-endian: the bytes of a TFRecord file holding these records in order.
  """
  n = len(lengths)
  header = np.zeros((n, 2), np.uint32)
  header[:, 0] = lengths * 4
  framed_lengths = lengths + HEADER_WORDS + 1
  starts = np.cumsum(framed_lengths) - framed_lengths
  out = np.empty(int(framed_lengths.sum()), "<u4")
  out[starts], out[starts + 1] = header[:, 0], 0
  out[starts + 2] = masked_crc32c(header.ravel(), np.full(n, 2))
  out[segment_indices(starts + HEADER_WORDS, lengths)] = words
  out[starts + HEADER_WORDS + lengths] = masked_crc32c(words, lengths)
  return out


class ShardWriter:
  """Writes the pairs of one split into per-bucket shards of at most PAIRS_PER_SHARD pairs.

  Shards are written under a '.partial' name and renamed when closed, so an
  interrupted prepare leaves no file that looks finished.
  """

  def __init__(self, out_dir, split, num_buckets):
    self._out_dir, self._split = out_dir, split
    self._files = [None] * num_buckets
    self._counts = [0] * num_buckets
    self.files = [[] for _ in range(num_buckets)]

  def write(self, bucket_id, framed, framed_lengths):
    """Appends framed records (see frame_records) of framed_lengths[i] words each."""
    ends = np.cumsum(framed_lengths)
    done = 0
    while done < len(framed_lengths):
      if self._files[bucket_id] is None or self._counts[bucket_id] == PAIRS_PER_SHARD:
        self._roll(bucket_id)
      take = min(len(framed_lengths) - done, PAIRS_PER_SHARD - self._counts[bucket_id])
      self._files[bucket_id].write(framed[ends[done - 1] if done else 0:ends[done + take - 1]])
      self._counts[bucket_id] += take
      done += take

  def _roll(self, bucket_id):
    self._close_one(bucket_id)
    name = f"{self._split}-b{bucket_id}-{len(self.files[bucket_id]):05d}.tfrecord"
    self.files[bucket_id].append(name)
    self._files[bucket_id] = open(os.path.join(self._out_dir, name + ".partial"), "wb")
    self._counts[bucket_id] = 0

  def _close_one(self, bucket_id):
    if self._files[bucket_id] is not None:
      self._files[bucket_id].close()
      path = os.path.join(self._out_dir, self.files[bucket_id][-1])
      os.replace(path + ".partial", path)
      self._files[bucket_id] = None

  def close(self):
    for bucket_id in range(len(self._files)):
      self._close_one(bucket_id)


def _layout(record, bucket):
  """One record -> one BatchedInput row (tensors without the batch dimension)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  source_len, target_len = bucket
  values = tf.io.decode_raw(record, tf.int32, little_endian=True)
  s, t = values[0], values[1]
  source = values[2:2 + s]
  target = values[2 + s:2 + s + t]
  pad_source = source_len - s
  pad_target = target_len - t - 1
  return BatchedInput(
      encoder_inputs=tf.pad(source, [[0, pad_source]]),
      source_lengths=s,
      decoder_inputs=tf.pad(tf.concat([[GO_ID], target], 0), [[0, pad_target]]),
      targets=tf.pad(tf.concat([target, [EOS_ID]], 0), [[0, pad_target]]),
      target_weights=tf.pad(tf.ones([t + 1], tf.float32), [[0, pad_target]]))


def bucket_dataset(files, bucket, batch_size, shuffle=True, repeat=True, seed=None):
  """A tf.data.Dataset of BatchedInput batches of shape bucket (I, O) from `files`.

  Shapes: encoder_inputs [B, I], source_lengths [B], decoder_inputs, targets and
  target_weights [B, O]; B = batch_size (the last batch may be smaller unless
  repeating).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  source_len, target_len = bucket
  files = list(files)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed)
  dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                               num_parallel_calls=1)
  if shuffle:
    dataset = dataset.shuffle(20_000, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.map(lambda r: _layout(r, bucket), num_parallel_calls=1)
  dataset = dataset.batch(batch_size, drop_remainder=repeat)
  dataset = dataset.map(lambda b: BatchedInput(
      tf.ensure_shape(b.encoder_inputs, [None, source_len]), b.source_lengths,
      tf.ensure_shape(b.decoder_inputs, [None, target_len]),
      tf.ensure_shape(b.targets, [None, target_len]),
      tf.ensure_shape(b.target_weights, [None, target_len])))
  return dataset.prefetch(2)
