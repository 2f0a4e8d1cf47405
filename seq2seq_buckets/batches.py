"""The batch layout every graph is fed with, and a NumPy builder for it (no TensorFlow)."""

import collections

import numpy as np

from seq2seq_buckets.vocab import EOS_ID, GO_ID, PAD_ID

# Sentences per decoding batch by default (s2s-decode, s2s-evaluate, the benchmark):
# against 64, one process alternating passes over test_2016_flickr ran greedy 1.12x
# and beam 5 1.09x, with the same outputs.
DECODE_BATCH_SIZE = 128

# One batch for bucket (I, O); B = batch size.
#   encoder_inputs  [B, I] int32   source pieces, right-padded with PAD
#   source_lengths  [B]    int32   real source pieces (the attention and encoder mask)
#   decoder_inputs  [B, O] int32   GO + target pieces, right-padded
#   targets         [B, O] int32   target pieces + EOS, right-padded
#   target_weights  [B, O] float32 1.0 on the t + 1 real target slots, else 0.0
BatchedInput = collections.namedtuple(
    "BatchedInput",
    ["encoder_inputs", "source_lengths", "decoder_inputs", "targets", "target_weights"])


def pad_batch(sources, targets, bucket):
  """Builds a NumPy BatchedInput for `bucket` from lists of source and target id lists.

  Every pair must fit the bucket (see buckets.fits); `targets` may be empty lists
  when only the encoder side matters (decoding).
  """
  source_len, target_len = bucket
  n = len(sources)
  enc = np.full((n, source_len), PAD_ID, np.int32)
  dec = np.full((n, target_len), PAD_ID, np.int32)
  out = np.full((n, target_len), PAD_ID, np.int32)
  weights = np.zeros((n, target_len), np.float32)
  lengths = np.zeros((n,), np.int32)
  for row, (src, tgt) in enumerate(zip(sources, targets)):
    if len(src) > source_len or len(tgt) + 1 > target_len:
      raise ValueError(f"pair of lengths ({len(src)}, {len(tgt)}) does not fit bucket {bucket}")
    enc[row, :len(src)] = src
    lengths[row] = len(src)
    dec[row, 0] = GO_ID
    dec[row, 1:len(tgt) + 1] = tgt
    out[row, :len(tgt)] = tgt
    out[row, len(tgt)] = EOS_ID
    weights[row, :len(tgt) + 1] = 1.0
  return BatchedInput(enc, lengths, dec, out, weights)
