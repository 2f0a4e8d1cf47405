"""Checkpoint averaging: the element-wise mean of the model weights of a train_dir's
last N checkpoints, saved as a checkpoint that s2s-decode and s2s-evaluate restore
with --checkpoint=averaged.

Only what decoding reads is written: the model variables (averaged) and the
global step of the newest checkpoint. Optimizer slots are left out, so the
result is for translating, not for resuming training.
"""

import os

import numpy as np
import tensorflow as tf

from seq2seq_buckets import trainer
from seq2seq_buckets.errors import UserError

tf1 = tf.compat.v1
AVERAGED_DIR = "averaged"


def recent_checkpoints(train_dir, last):
  """The newest `last` checkpoint prefixes of train_dir, oldest first."""
  state = tf.train.get_checkpoint_state(train_dir)  # relative paths come joined to train_dir
  paths = [p for p in (state.all_model_checkpoint_paths if state else [])
           if os.path.isfile(p + ".index")]
  if not paths:
    raise UserError(f"{train_dir}: no checkpoint yet; train a model there with s2s-train")
  return paths[-last:]


def _model_variable(name):
  return name.startswith("model/") and "/Adam" not in name


def average(train_dir, last=3, out_dir=None):
  """Averages the newest `last` checkpoints of train_dir into out_dir (default
  train_dir/averaged) -> (saved checkpoint prefix, the prefixes averaged)."""
  if last < 1:
    raise UserError(f"last must be >= 1, not {last}")
  paths = recent_checkpoints(train_dir, last)
  readers = [tf.train.load_checkpoint(p) for p in paths]
  names = sorted(n for n in readers[-1].get_variable_to_shape_map() if _model_variable(n))
  values = {n: np.mean([r.get_tensor(n) for r in readers], axis=0, dtype=np.float64)
            .astype(readers[-1].get_tensor(n).dtype) for n in names}
  values["global_step"] = readers[-1].get_tensor("global_step")
  out_dir = out_dir or os.path.join(train_dir, AVERAGED_DIR)
  os.makedirs(out_dir, exist_ok=True)
  graph = tf.Graph()
  with graph.as_default():
    feeds, variables = {}, []
    for name, value in values.items():
      initial = tf1.placeholder(tf.as_dtype(value.dtype), value.shape)
      variables.append(tf1.Variable(initial, name=name))
      feeds[initial] = value
    saver = tf1.train.Saver(variables, max_to_keep=1, save_relative_paths=True)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer(), feeds)
      saved = saver.save(session, os.path.join(out_dir, trainer.CHECKPOINT_PREFIX),
                         global_step=int(values["global_step"]))
  return saved, paths
