"""s2s-prepare: SentencePiece models, per-bucket TFRecord shards and manifest.json."""

from absl import flags

from seq2seq_buckets.cli import common

flags.DEFINE_string("train_src", None, "Training source text, one sentence a line.")
flags.DEFINE_string("train_tgt", None, "Training target text, parallel to --train_src.")
flags.DEFINE_string("dev_src", None, "Dev source text.")
flags.DEFINE_string("dev_tgt", None, "Dev target text, parallel to --dev_src.")
flags.DEFINE_string("out_dir", None, "Directory for shards, models and manifest.json.")
flags.DEFINE_string("buckets", "auto:4",
                    "Buckets as 'I,O;I,O;...' (source, target lengths in pieces, increasing) "
                    "or 'auto:N' to choose N from the length distribution.")
flags.DEFINE_integer("src_vocab_size", 8000, "Source SentencePiece vocabulary size.")
flags.DEFINE_integer("tgt_vocab_size", 8000, "Target SentencePiece vocabulary size.")
flags.DEFINE_bool("shared_vocab", False, "One SentencePiece model for both sides.")
flags.DEFINE_enum("spm_model_type", "unigram", ["unigram", "bpe"], "SentencePiece model type.")
flags.DEFINE_string("src_spm_model", None, "Use this SentencePiece model for the source.")
flags.DEFINE_string("tgt_spm_model", None, "Use this SentencePiece model for the target.")
flags.DEFINE_bool("truncate", False, "Truncate pairs that fit no bucket instead of dropping them.")
flags.DEFINE_bool("overwrite", False, "Replace a directory prepared with other settings.")
for _name in ("train_src", "train_tgt", "dev_src", "dev_tgt", "out_dir"):
  flags.mark_flag_as_required(_name)
FLAGS = flags.FLAGS


def main():
  from seq2seq_buckets.prepare import prepare  # pylint: disable=g-import-not-at-top
  prepare(train_src=FLAGS.train_src, train_tgt=FLAGS.train_tgt, dev_src=FLAGS.dev_src,
          dev_tgt=FLAGS.dev_tgt, out_dir=FLAGS.out_dir, buckets=FLAGS.buckets,
          src_vocab_size=FLAGS.src_vocab_size, tgt_vocab_size=FLAGS.tgt_vocab_size,
          shared_vocab=FLAGS.shared_vocab, spm_model_type=FLAGS.spm_model_type,
          src_spm_model=FLAGS.src_spm_model, tgt_spm_model=FLAGS.tgt_spm_model,
          truncate=FLAGS.truncate, overwrite=FLAGS.overwrite, log=common.log)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
