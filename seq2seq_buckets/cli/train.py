"""s2s-train: train (or resume) a bucketed model on a directory made by s2s-prepare."""

from absl import flags

from seq2seq_buckets.cli import common
from seq2seq_buckets.hparams import HParams

flags.DEFINE_string("data_dir", None, "Directory written by s2s-prepare.")
flags.DEFINE_string("train_dir", None, "Directory for checkpoints, hparams and logs; "
                    "rerunning with the same one resumes.")
flags.DEFINE_integer("max_steps", 100_000, "Stop at this global step.")
flags.DEFINE_float("max_time_minutes", 0, "Stop after this much training time (0: no limit).")
flags.DEFINE_integer("steps_per_checkpoint", 500, "Checkpoint and evaluate every N steps.")
flags.DEFINE_integer("steps_per_bleu", 1000, "Dev BLEU (greedy) every N steps (0: never); "
                     "a multiple of --steps_per_checkpoint.")
flags.DEFINE_integer("steps_per_log", 50, "One progress line every N steps.")
flags.DEFINE_integer("patience", 0, "Stop after N evaluations without improvement (0: never).")
flags.DEFINE_integer("keep_checkpoints", 5, "How many recent checkpoints to keep.")
flags.DEFINE_integer("dev_bleu_lines", 0, "Score dev BLEU on the first N dev lines (0: all).")

# Model flags: their defaults are HParams' defaults; only flags given on the command
# line (or in a --flagfile) override, and on resume they must match the saved model.
_MODEL_FLAGS = {
    "cell": (flags.DEFINE_enum, ["lstm", "gru"], "Recurrent cell."),
    "num_layers": (flags.DEFINE_integer, None, "Layers in encoder and decoder."),
    "size": (flags.DEFINE_integer, None, "Hidden units per layer."),
    "embedding_size": (flags.DEFINE_integer, None, "Embedding size."),
    "bidirectional_encoder": (flags.DEFINE_bool, None, "Bidirectional first encoder layer."),
    "attention": (flags.DEFINE_enum, ["bahdanau", "luong"], "Attention score."),
    "input_feeding": (flags.DEFINE_bool, None, "Feed the attentional output to the next step."),
    "dropout": (flags.DEFINE_float, None, "Dropout rate."),
    "reverse_source": (flags.DEFINE_bool, None, "Reverse source sentences (the classic trick)."),
    "num_samples": (flags.DEFINE_integer, None, "Sampled softmax samples (0: full softmax)."),
    "tie_embeddings": (flags.DEFINE_bool, None, "Tie target embedding and output projection."),
    "label_smoothing": (flags.DEFINE_float, None, "Label smoothing."),
    "optimizer": (flags.DEFINE_enum, ["adam", "sgd"], "Optimizer."),
    "learning_rate": (flags.DEFINE_float, None, "Initial learning rate."),
    "learning_rate_decay_factor": (flags.DEFINE_float, None,
                                   "Multiply the learning rate by this on a dev-loss plateau."),
    "max_gradient_norm": (flags.DEFINE_float, None, "Clip gradients to this global norm."),
    "batch_size": (flags.DEFINE_integer, None, "Sentence pairs per batch."),
    "seed": (flags.DEFINE_integer, None, "Random seed (graph, data order, bucket draws)."),
}
_DEFAULTS = HParams()
for _name, (_define, _extra, _help) in _MODEL_FLAGS.items():
  if _extra is None:
    _define(_name, getattr(_DEFAULTS, _name), _help)
  else:
    _define(_name, getattr(_DEFAULTS, _name), _extra, _help)
flags.mark_flag_as_required("data_dir")
flags.mark_flag_as_required("train_dir")
FLAGS = flags.FLAGS


def main():
  from seq2seq_buckets import trainer  # pylint: disable=g-import-not-at-top
  overrides = {name: FLAGS[name].value for name in _MODEL_FLAGS if FLAGS[name].present}
  if FLAGS.steps_per_bleu and FLAGS.steps_per_bleu % FLAGS.steps_per_checkpoint:
    raise common.UserError("--steps_per_bleu must be a multiple of --steps_per_checkpoint")
  options = trainer.TrainOptions(
      max_steps=FLAGS.max_steps, max_time_minutes=FLAGS.max_time_minutes,
      steps_per_checkpoint=FLAGS.steps_per_checkpoint, steps_per_bleu=FLAGS.steps_per_bleu,
      steps_per_log=FLAGS.steps_per_log, patience=FLAGS.patience,
      keep_checkpoints=FLAGS.keep_checkpoints, dev_bleu_lines=FLAGS.dev_bleu_lines)
  trainer.train(data_dir=FLAGS.data_dir, train_dir=FLAGS.train_dir, overrides=overrides,
                options=options, log=common.log)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
