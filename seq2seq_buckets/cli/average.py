"""s2s-average: average the weights of a train_dir's last checkpoints for decoding."""

import os

from absl import flags

from seq2seq_buckets.cli import common

flags.DEFINE_string("train_dir", None, "Directory written by s2s-train.")
flags.DEFINE_integer("last", 3, "Average this many of the newest checkpoints.")
flags.DEFINE_string("output_dir", None, "Where to write the averaged checkpoint "
                    "(default: <train_dir>/averaged).")
flags.mark_flag_as_required("train_dir")
FLAGS = flags.FLAGS


def main():
  from seq2seq_buckets import averaging  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(FLAGS.train_dir):
    raise common.UserError(f"{FLAGS.train_dir}: no such directory")
  saved, paths = averaging.average(FLAGS.train_dir, FLAGS.last, FLAGS.output_dir)
  steps = ", ".join(p.rsplit("-", 1)[-1] for p in paths)
  note = "" if len(paths) == FLAGS.last else f" (only {len(paths)} there)"
  plural = "s" if len(paths) != 1 else ""
  common.log(f"averaged {len(paths)} checkpoint{plural}{note}, steps {steps}, into {saved}")
  if FLAGS.output_dir is None:
    common.log(f"decode it with: s2s-decode --train_dir={FLAGS.train_dir} "
               f"--checkpoint={averaging.AVERAGED_DIR}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
