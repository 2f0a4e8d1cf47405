"""Per-bucket TFRecord shards: the writer prepare uses and the tf.data reader training uses.

Record format: one pair per record, little-endian int32 values
[s, t, source piece ids (s), target piece ids (t)]. GO/EOS are not stored; the
reader adds them when it lays a pair out as a BatchedInput row.
"""

import os

import numpy as np
import tensorflow as tf

from seq2seq_buckets.batches import BatchedInput
from seq2seq_buckets.vocab import EOS_ID, GO_ID

PAIRS_PER_SHARD = 100_000


def encode_pair(source_ids, target_ids):
  """Serialized record bytes for one pair."""
  return np.array([len(source_ids), len(target_ids), *source_ids, *target_ids],
                  dtype="<i4").tobytes()


def shard_pattern(split, bucket_id):
  return f"{split}-b{bucket_id}-*.tfrecord"


class ShardWriter:
  """Writes the pairs of one split into per-bucket shards of at most PAIRS_PER_SHARD pairs.

  Shards are written under a '.partial' name and renamed when closed, so an
  interrupted prepare leaves no file that looks finished.
  """

  def __init__(self, out_dir, split, num_buckets):
    self._out_dir, self._split = out_dir, split
    self._writers = [None] * num_buckets
    self._counts = [0] * num_buckets
    self._shard_ids = [0] * num_buckets
    self.files = [[] for _ in range(num_buckets)]

  def write(self, bucket_id, source_ids, target_ids):
    if self._writers[bucket_id] is None or self._counts[bucket_id] == PAIRS_PER_SHARD:
      self._roll(bucket_id)
    self._writers[bucket_id].write(encode_pair(source_ids, target_ids))
    self._counts[bucket_id] += 1

  def _roll(self, bucket_id):
    self._close_one(bucket_id)
    name = f"{self._split}-b{bucket_id}-{self._shard_ids[bucket_id]:05d}.tfrecord"
    self._shard_ids[bucket_id] += 1
    self.files[bucket_id].append(name)
    self._writers[bucket_id] = tf.io.TFRecordWriter(os.path.join(self._out_dir, name + ".partial"))
    self._counts[bucket_id] = 0

  def _close_one(self, bucket_id):
    writer = self._writers[bucket_id]
    if writer is not None:
      writer.close()
      name = self.files[bucket_id][-1]
      path = os.path.join(self._out_dir, name)
      os.replace(path + ".partial", path)
      self._writers[bucket_id] = None

  def close(self):
    for bucket_id in range(len(self._writers)):
      self._close_one(bucket_id)


def _layout(record, bucket):
  """One record -> one BatchedInput row (tensors without the batch dimension)."""
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
