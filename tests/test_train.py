"""s2s-train through the real CLI: learning, resume, kill -9, signals, NaN, configs, sampling."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from seq2seq_buckets.sampler import BucketSampler
from tests.conftest import REPO, write_copy_corpus

SMALL = ["--size=32", "--embedding_size=32", "--num_layers=1", "--batch_size=16",
         "--dropout=0.0", "--learning_rate=0.01", "--steps_per_log=10"]


def run(args, **kwargs):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kwargs)


def train_cmd(data_dir, train_dir, *extra):
  return ["s2s-train", f"--data_dir={data_dir}", f"--train_dir={train_dir}", *SMALL, *extra]


def checkpoint_steps(train_dir):
  return sorted(int(p.split("-")[-1].split(".")[0])
                for p in glob.glob(os.path.join(train_dir, "model.ckpt-*.index")))


def metrics(train_dir):
  with open(os.path.join(train_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_copy_task_learns_to_high_bleu(tmp_path):
  """The learning test: a small model learns to copy; greedy dev BLEU on held-out lines >= 90."""
  corpus = write_copy_corpus(str(tmp_path), train_lines=3000, dev_lines=200, seed=1)
  data = str(tmp_path / "data")
  prep = run(["s2s-prepare", f"--train_src={corpus['train_src']}",
              f"--train_tgt={corpus['train_tgt']}", f"--dev_src={corpus['dev_src']}",
              f"--dev_tgt={corpus['dev_tgt']}", f"--out_dir={data}", "--buckets=auto:2",
              "--src_vocab_size=40", "--tgt_vocab_size=40"])
  assert prep.returncode == 0, prep.stderr
  train_dir = str(tmp_path / "train")
  result = run(["s2s-train", f"--data_dir={data}", f"--train_dir={train_dir}", "--size=64",
                "--embedding_size=64", "--num_layers=1", "--batch_size=32", "--dropout=0.0",
                "--learning_rate=0.01", "--max_steps=600", "--steps_per_checkpoint=200",
                "--steps_per_bleu=200", "--steps_per_log=100"])
  assert result.returncode == 0, result.stderr
  assert metrics(train_dir)[-1]["dev_bleu"] >= 90.0, result.stderr


def test_rerun_resumes_from_the_checkpoint(prepared_copy, tmp_path):
  train_dir = str(tmp_path / "train")
  first = run(train_cmd(prepared_copy, train_dir, "--max_steps=20", "--steps_per_checkpoint=10",
                        "--steps_per_bleu=0"))
  assert first.returncode == 0, first.stderr
  assert checkpoint_steps(train_dir) == [10, 20]
  second = run(train_cmd(prepared_copy, train_dir, "--max_steps=30", "--steps_per_checkpoint=10",
                         "--steps_per_bleu=0"))
  assert second.returncode == 0, second.stderr
  assert "resumed from" in second.stderr and "model.ckpt-20" in second.stderr
  assert "step 30" in second.stderr and "step 10 " not in second.stderr
  assert checkpoint_steps(train_dir)[-1] == 30
  assert [m["step"] for m in metrics(train_dir)] == [10, 20, 30]


def test_patience_stops_after_evaluations_without_improvement(prepared_copy, tmp_path):
  """A model that cannot move (SGD at 1e-9) keeps its dev BLEU: the first evaluation
  improves on nothing, the next two do not, and --patience=2 stops the run there."""
  train_dir = str(tmp_path / "train")
  result = run(train_cmd(prepared_copy, train_dir, "--optimizer=sgd", "--learning_rate=1e-9",
                         "--max_steps=1000", "--steps_per_checkpoint=5", "--steps_per_bleu=5",
                         "--patience=2"))
  assert result.returncode == 0, result.stderr
  assert "no improvement in 2 evaluations (--patience)" in result.stderr
  assert [(m["step"], m["bad_evals"]) for m in metrics(train_dir)] == [(5, 0), (10, 1), (15, 2)]
  assert checkpoint_steps(train_dir)[-1] == 15


def test_resume_refuses_a_different_model_flag(prepared_copy, tmp_path):
  train_dir = str(tmp_path / "train")
  assert run(train_cmd(prepared_copy, train_dir, "--max_steps=1")).returncode == 0
  clash = run(train_cmd(prepared_copy, train_dir, "--max_steps=2", "--size=48"))
  assert clash.returncode == 2
  assert clash.stderr.strip().splitlines()[-1].startswith("error:")
  assert "size=32" in clash.stderr and "Traceback" not in clash.stderr


def test_kill_9_after_a_checkpoint_then_rerun_resumes(prepared_copy, tmp_path):
  train_dir = str(tmp_path / "train")
  proc = subprocess.Popen(train_cmd(prepared_copy, train_dir, "--max_steps=100000",
                                    "--steps_per_checkpoint=25", "--steps_per_bleu=0"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not [s for s in checkpoint_steps(train_dir) if s >= 25]:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  kept = checkpoint_steps(train_dir)
  assert kept and kept[-1] >= 25
  again = run(train_cmd(prepared_copy, train_dir, f"--max_steps={kept[-1] + 5}",
                        "--steps_per_checkpoint=25", "--steps_per_bleu=0"))
  assert again.returncode == 0, again.stderr
  assert f"model.ckpt-{kept[-1]}" in again.stderr
  assert checkpoint_steps(train_dir)[-1] == kept[-1] + 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits(prepared_copy, tmp_path, sig):
  train_dir = str(tmp_path / "train")
  proc = subprocess.Popen(train_cmd(prepared_copy, train_dir, "--max_steps=100000",
                                    "--steps_per_checkpoint=100000", "--steps_per_bleu=0"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if line.startswith("step 10 "):
      break
  proc.send_signal(sig)
  rest = proc.communicate(timeout=120)[1]
  assert proc.returncode == 0, "".join(lines) + rest
  assert f"received {signal.Signals(sig).name}" in rest
  assert checkpoint_steps(train_dir)[-1] >= 10


def test_divergence_stops_with_one_line_error_and_saves_no_bad_checkpoint(prepared_copy, tmp_path):
  # An absurd learning rate: the weights overflow after one update.
  bad_dir = str(tmp_path / "bad")
  result = run(train_cmd(prepared_copy, bad_dir, "--learning_rate=1e38", "--max_steps=50",
                         "--steps_per_checkpoint=1", "--steps_per_bleu=0"))
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "became nan" in last.lower() and "at step" in last
  assert "Traceback" not in result.stderr
  assert checkpoint_steps(bad_dir) == []  # no diverged weights were saved


def test_tensorboard_reads_the_summaries(trained_copy):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(trained_copy)
  acc.Reload()
  tags = acc.Tags()["scalars"]
  for tag in ("train/perplexity", "train/learning_rate", "train/tokens_per_s",
              "train/padding_efficiency", "dev/perplexity", "dev/perplexity_bucket_0"):
    assert tag in tags
  assert [e.step for e in acc.Scalars("dev/perplexity")] == [150, 300]


def test_bucket_draws_follow_bucket_sizes():
  sizes = [500, 0, 1500, 3000, 250]
  sampler = BucketSampler(sizes, seed=3)
  draws = np.bincount([sampler.draw(step) for step in range(20000)], minlength=len(sizes))
  assert draws[1] == 0  # an empty bucket is never drawn
  keep = [i for i, s in enumerate(sizes) if s]
  expected = np.array([sizes[i] for i in keep], float) / sum(sizes) * draws.sum()
  assert stats.chisquare(draws[keep], expected).pvalue > 0.001
  assert sampler.draw(1234) == BucketSampler(sizes, seed=3).draw(1234)  # resumable


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg"))))
def test_every_shipped_config_loads(config):
  """Each config parses with its command's flags and gives valid settings."""
  command = os.path.basename(config).split(".")[1] if config.count(".") > 1 else "train"
  code = f"""
import sys
from absl import flags
import seq2seq_buckets.cli.{command} as cli
FLAGS = flags.FLAGS
required = {{'train': ['--data_dir=d', '--train_dir=t'],
            'prepare': ['--train_src=a', '--train_tgt=b', '--dev_src=c', '--dev_tgt=d',
                        '--out_dir=o'],
            'decode': ['--train_dir=t']}}['{command}']
FLAGS(['x', '--flagfile={config}', *required])  # an unknown flag in the file fails here
if '{command}' == 'train':
  from seq2seq_buckets.hparams import HParams
  values = {{n: FLAGS[n].value for n in cli._MODEL_FLAGS}}
  HParams(src_vocab_size=8000, tgt_vocab_size=8000, buckets=[[10, 12]], **values).check()
elif '{command}' == 'prepare':
  from seq2seq_buckets.buckets import parse_buckets
  parse_buckets(FLAGS.buckets)
else:
  from seq2seq_buckets.translator import check_search
  check_search(FLAGS.beam_size, FLAGS.length_penalty, FLAGS.max_length_ratio, FLAGS.n_best,
               FLAGS.batch_size)
print('ok')
"""
  result = run([sys.executable, "-c", code], cwd=REPO)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
