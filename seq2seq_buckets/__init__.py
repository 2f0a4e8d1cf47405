"""seq2seq_buckets: a bucketed attention encoder-decoder NMT trainer (tf.compat.v1 graph mode)."""

__version__ = "0.1.0"
