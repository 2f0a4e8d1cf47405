"""s2s-average: the mean of the last checkpoints' weights, restorable by s2s-decode."""

import os
import shutil
import subprocess

import numpy as np
import tensorflow as tf

from seq2seq_buckets import averaging


def run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def test_average_of_the_last_checkpoints_decodes(trained_copy, tmp_path, monkeypatch):
  shutil.copytree(trained_copy, tmp_path / "train")
  monkeypatch.chdir(tmp_path)
  train_dir = "train"  # relative, as the quick start gives it
  paths = averaging.recent_checkpoints(train_dir, 2)
  assert len(paths) == 2 and all(p.startswith(os.path.join(train_dir, "")) for p in paths)
  result = run(["s2s-average", f"--train_dir={train_dir}", "--last=2"])
  assert result.returncode == 0, result.stderr
  assert "averaged 2 checkpoints" in result.stderr
  saved = tf.train.latest_checkpoint(os.path.join(train_dir, averaging.AVERAGED_DIR))
  averaged = tf.train.load_checkpoint(saved)
  readers = [tf.train.load_checkpoint(p) for p in paths]
  kernel = "model/decoder/layer_0/kernel"
  np.testing.assert_allclose(averaged.get_tensor(kernel),
                             (readers[0].get_tensor(kernel) + readers[1].get_tensor(kernel)) / 2,
                             rtol=1e-6)
  assert averaged.get_tensor("global_step") == readers[1].get_tensor("global_step")
  assert not any("Adam" in name for name in averaged.get_variable_to_shape_map())
  decoded = subprocess.run(["s2s-decode", f"--train_dir={train_dir}", "--checkpoint=averaged"],
                           input="ab cd ef\n", capture_output=True, text=True, timeout=600)
  assert decoded.returncode == 0, decoded.stderr
  assert len(decoded.stdout.splitlines()) == 1


def test_average_errors_are_one_line(tmp_path):
  for args, message in (([f"--train_dir={tmp_path}"], "no checkpoint yet"),
                        ([f"--train_dir={tmp_path}", "--last=0"], "last must be >= 1"),
                        ([f"--train_dir={tmp_path / 'missing'}"], "no such directory")):
    result = run(["s2s-average", *args])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
