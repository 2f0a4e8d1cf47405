"""Decoding: bucketed batching, greedy and beam search, the Translator and s2s-decode.

Beam search itself is checked on toy language models in test_beam_search.py;
here on the tiny trained copy model against greedy decoding. The CLI runs as a
subprocess, interactive mode through a pseudo-terminal.
"""

import json
import os
import pty
import random
import select
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from seq2seq_buckets import decoding
from seq2seq_buckets.errors import UserError
from seq2seq_buckets.vocab import EOS_ID

BUCKETS = [(3, 5), (6, 8), (10, 13)]


# --- batching and order -------------------------------------------------------------------

def random_sources(rng, count, max_len=14):
  return [[rng.randrange(4, 40) for _ in range(rng.randint(0, max_len))] for _ in range(count)]


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_every_source_once_in_its_bucket(seed):
  rng = random.Random(seed)
  sources = random_sources(rng, rng.randint(1, 60))
  batch_size = rng.randint(1, 7)
  plan = decoding.plan_batches(sources, BUCKETS, batch_size)
  seen = [i for batch in plan.batches for i in batch.indices]
  assert sorted(seen) == [i for i, s in enumerate(sources) if s]
  for batch in plan.batches:
    assert 1 <= len(batch.indices) <= batch_size
    lengths = [len(plan.sources[i]) for i in batch.indices]
    assert lengths == sorted(lengths)
    for i in batch.indices:
      smallest = next((b for b, (size, _) in enumerate(BUCKETS) if len(sources[i]) <= size),
                      len(BUCKETS) - 1)
      assert batch.bucket == smallest
  assert plan.truncated == [i for i, s in enumerate(sources) if len(s) > BUCKETS[-1][0]]
  for i in plan.truncated:
    assert plan.sources[i] == sources[i][:BUCKETS[-1][0]]


class OpsStub:
  """Stands in for graphs.GreedyOps and graphs.BeamOps: feed keys, and an `ids` (greedy)
  or `found` (beam) fetch."""

  def __init__(self):
    self.encoder_inputs, self.source_lengths = "in", "lengths"
    self.max_steps, self.limits = "max_steps", "limits"
    self.beam_size, self.n_best, self.alpha = "beam_size", "n_best", "alpha"
    self.ids, self.found = object(), object()


class EchoSession:
  """Stands in for a session running OpsStub ops on batches padded to a bucket's source
  length: outputs the source + 100, then EOS, at most the bucket's O, max_steps (greedy)
  or limits (beam, n_best copies) pieces. Each run first sleeps 0-2 ms, so that runs on
  several threads end in a random order."""

  def __init__(self, ops, seed):
    self.ops, self.batch_sizes, self.rng = ops, [], random.Random(seed)

  def run(self, fetch, feed):
    time.sleep(self.rng.random() * 0.002)
    ops = self.ops
    inputs, lengths = feed[ops.encoder_inputs], feed[ops.source_lengths]
    widths = [source_len for source_len, _ in BUCKETS]
    assert inputs.shape[1] in widths, inputs.shape
    bucket = BUCKETS[widths.index(inputs.shape[1])]
    self.batch_sizes.append(len(inputs))
    out = np.full([len(inputs), bucket[1]], EOS_ID)
    for row, length in enumerate(lengths):
      out[row, :length] = inputs[row, :length] + 100
    if fetch is ops.ids:
      return out[:, :feed[ops.max_steps]]
    n_best, limits = feed[ops.n_best], feed[ops.limits]
    ids = np.repeat(out[:, None, :limits.max()], n_best, axis=1)
    kept = np.minimum(lengths, limits)
    return ids, np.repeat(kept[:, None], n_best, axis=1), np.zeros([len(inputs), n_best])


def test_longest_batches_run_first():
  """Batches start in decreasing sentences x longest source (the row-steps they run),
  whatever their bucket, so that no core is left with a long batch at the end."""
  ops = OpsStub()
  session = EchoSession(ops, seed=0)
  work, run = [], session.run

  def recording(fetch, feed):
    work.append(len(feed[ops.source_lengths]) * feed[ops.source_lengths].max())
    return run(fetch, feed)

  session.run = recording
  decoding.greedy_ids(session, ops, BUCKETS, random_sources(random.Random(3), 60), 4)
  assert work == sorted(work, reverse=True)
  assert len(set(work)) > 3


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("beam", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_outputs_come_back_in_input_order(seed, beam, workers):
  rng = random.Random(seed)
  sources = random_sources(rng, rng.randint(1, 50))
  ops = OpsStub()
  session = EchoSession(ops, seed)
  if beam:
    found, truncated = decoding.beam_search(session, ops, BUCKETS, sources, beam_size=3,
                                            batch_size=4, n_best=2, max_length_ratio=10.0,
                                            workers=workers)
    outputs = [hypotheses[0].ids for hypotheses in found]
    assert all(len(h) == (2 if s else 1) for h, s in zip(found, sources))
  else:
    outputs, truncated = decoding.greedy_ids(session, ops, BUCKETS, sources, batch_size=4,
                                             max_length_ratio=10.0, workers=workers)
  for source, output in zip(sources, outputs):
    assert output == [x + 100 for x in source[:BUCKETS[-1][0]]]
  assert truncated == [i for i, s in enumerate(sources) if len(s) > BUCKETS[-1][0]]
  assert max(session.batch_sizes, default=0) <= 4


# --- the trained copy model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def translator(trained_copy):
  from seq2seq_buckets.translator import Translator
  with Translator(trained_copy) as t:
    yield t


@pytest.fixture(scope="module")
def dev_lines(copy_corpus):
  with open(copy_corpus["dev_src"], encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f][:40]


def beam(translator, sources, beam_size, batch_size=16):
  return decoding.beam_search(translator.session, translator.graph.beam, translator.buckets,
                              sources, beam_size, batch_size)


def test_batches_decoded_on_several_threads_give_what_one_thread_gives(translator, dev_lines):
  sources = translator.source_spm.encode(dev_lines)
  args = (translator.session, translator.graph.greedy, translator.buckets, sources, 4)
  assert decoding.greedy_ids(*args, workers=3) == decoding.greedy_ids(*args, workers=1)
  args = (translator.session, translator.graph.beam, translator.buckets, sources, 3, 4)
  assert decoding.beam_search(*args, workers=3) == decoding.beam_search(*args, workers=1)


def test_beam_one_equals_greedy(translator, dev_lines):
  sources = translator.source_spm.encode(dev_lines + ["ab cd " * 12])
  greedy, greedy_cut = decoding.greedy_ids(translator.session, translator.graph.greedy,
                                           translator.buckets, sources, 16)
  found, beam_cut = beam(translator, sources, 1)
  assert [b[0].ids for b in found] == greedy
  assert beam_cut == greedy_cut == [len(dev_lines)]


@pytest.fixture(scope="module")
def scorer(trained_copy):
  """score(source, ids): the model's log-prob of ids + EOS by teacher forcing through
  the training graph (independent of the decoding graphs)."""
  from seq2seq_buckets import graphs, hparams
  from seq2seq_buckets.batches import pad_batch
  from seq2seq_buckets.buckets import bucket_index
  hp = hparams.load(trained_copy)
  tg = graphs.build_training_graph(hp)
  session = tf.compat.v1.Session(graph=tg.graph)
  tg.saver.restore(session, tf.train.latest_checkpoint(trained_copy))

  def score(source, ids):
    b = bucket_index(len(source), len(ids), hp.buckets)
    batch = pad_batch([source] * hp.batch_size, [ids] * hp.batch_size, hp.buckets[b])
    ops = tg.buckets[b]
    nll = session.run(ops.nll_sum, {**dict(zip(ops.inputs, batch)), tg.model.dropout_rate: 0.0})
    return -nll / hp.batch_size

  yield score
  session.close()


def test_beam_scores_at_least_greedy(translator, scorer, dev_lines):
  sources = translator.source_spm.encode(dev_lines[:20])
  greedy, _ = beam(translator, sources, 1)
  found, _ = beam(translator, sources, 5)
  for source, (greedy_best,), hypotheses in zip(sources, greedy, found):
    greedy_score = scorer(source, greedy_best.ids)
    assert greedy_best.score == pytest.approx(greedy_score, abs=1e-3)
    assert hypotheses[0].score >= greedy_score - 1e-3
    assert hypotheses[0].score == pytest.approx(scorer(source, hypotheses[0].ids), abs=1e-3)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translations_do_not_depend_on_order_or_batching(translator, dev_lines, beam_size):
  lines = dev_lines[:24] + ["", "ab " * 20]
  alone = [translator.translate([line], beam_size=beam_size).hypotheses[0][0].text
           for line in lines]
  for seed in range(2):
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    result = translator.translate([lines[i] for i in order], beam_size=beam_size, batch_size=5)
    assert [h[0].text for h in result.hypotheses] == [alone[i] for i in order]


def test_one_sentence_runs_the_compiled_loops_with_the_same_results(translator, dev_lines,
                                                                    monkeypatch):
  """A single sentence goes through the XLA-compiled greedy and beam loops (fixed
  shapes, plain-op LSTM steps, encoding padded to the largest bucket): the same
  hypotheses and scores as the batched while loops, n-best lists and length penalty
  included, in every bucket."""
  lines = dev_lines[:12] + ["ab", "ab cd " * 3, "ab " * 20]
  fetched = []
  run = translator.session.run
  monkeypatch.setattr(translator.session, "run",
                      lambda fetch, *args, **kw: fetched.append(fetch) or run(fetch, *args, **kw))
  graph = translator.graph
  for beam_size, n_best, penalty in ((1, 1, 0.0), (3, 2, 0.6), (4, 1, 0.0)):
    options = dict(beam_size=beam_size, n_best=n_best, length_penalty=penalty)
    batched = translator.translate(lines, **options).hypotheses
    for line, expected in zip(lines, batched):
      fetched.clear()
      alone = translator.translate([line], **options).hypotheses[0]
      compiled = graph.greedy.single_ids if beam_size == 1 else graph.beam.single_found
      assert len(fetched) == 1 and fetched[0] is compiled
      assert [h.text for h in alone] == [h.text for h in expected]
      if beam_size > 1:
        assert [h.score for h in alone] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_empty_lines_give_empty_output(translator, dev_lines):
  for beam_size, n_best in ((1, 1), (3, 2)):
    result = translator.translate(["", "   ", dev_lines[0], ""], beam_size=beam_size,
                                  n_best=n_best)
    assert [h[0].text for h in result.hypotheses][:2] == ["", ""]
    assert result.hypotheses[3][0].text == ""
    assert result.hypotheses[2][0].text
  assert translator.translate([]).hypotheses == []


def test_too_long_input_is_cut_and_reported(translator, dev_lines):
  long_line = " ".join(["ab", "cd"] * 40)
  result = translator.translate([dev_lines[0], long_line], beam_size=2)
  pieces = len(translator.source_spm.encode(long_line))
  assert pieces > translator.max_source_pieces
  assert result.truncated == [(1, pieces)]
  assert len(result.hypotheses) == 2


def test_n_best_lists_are_sorted_and_distinct(translator, dev_lines):
  result = translator.translate(dev_lines[:10], beam_size=4, n_best=4, length_penalty=0.6)
  for hypotheses in result.hypotheses:
    scores = [h.score for h in hypotheses]
    assert scores == sorted(scores, reverse=True) and len(hypotheses) == 4


@pytest.mark.parametrize("options, message", [
    ({"beam_size": 0}, "beam_size must be >= 1"),
    ({"beam_size": 2, "n_best": 3}, "n_best must be between 1 and beam_size"),
    ({"length_penalty": -1.0}, "length_penalty must be >= 0"),
    ({"max_length_ratio": 0.0}, "max_length_ratio must be positive"),
    ({"batch_size": 0}, "batch_size must be >= 1")])
def test_bad_search_settings(translator, options, message):
  with pytest.raises(UserError, match=message):
    translator.translate(["ab"], **options)


def train_dir_without_checkpoint(trained_copy, directory):
  for name in os.listdir(trained_copy):
    if name.endswith((".json", ".model")):
      shutil.copy(os.path.join(trained_copy, name), directory)
  return str(directory)


def test_translator_errors(trained_copy, tmp_path):
  from seq2seq_buckets.translator import Translator
  with pytest.raises(UserError, match="no such directory"):
    Translator(str(tmp_path / "missing"))
  with pytest.raises(UserError, match="not a directory written by s2s-train"):
    Translator(str(tmp_path))
  with pytest.raises(UserError, match="no checkpoint yet"):
    Translator(train_dir_without_checkpoint(trained_copy, tmp_path))
  with pytest.raises(UserError, match="checkpoint nope: not found"):
    Translator(trained_copy, checkpoint="nope")
  other = tmp_path / "other"
  other.mkdir()
  train_dir_without_checkpoint(trained_copy, other)
  hparams = json.loads((other / "hparams.json").read_text())
  (other / "hparams.json").write_text(json.dumps({**hparams, "size": 2 * hparams["size"]}))
  with pytest.raises(UserError, match="has shape .* but the hyperparameters make it"):
    Translator(str(other), checkpoint=os.path.join(trained_copy, "model.ckpt-300"))


def test_checkpoint_choice(trained_copy, translator, dev_lines):
  from seq2seq_buckets.translator import find_checkpoint
  first = find_checkpoint(trained_copy, "model.ckpt-150")
  assert first == os.path.join(trained_copy, "model.ckpt-150")
  assert find_checkpoint(trained_copy) == translator.checkpoint
  assert find_checkpoint(trained_copy, first) == first


# --- the CLI -------------------------------------------------------------------------------

def decode_cli(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "seq2seq_buckets.cli.decode", *args],
                        capture_output=True, text=True, timeout=300, check=False, **kwargs)


def test_cli_pipe_one_line_out_per_line_in(trained_copy, translator, dev_lines):
  long_line = " ".join(["ab", "cd"] * 40)
  lines = [dev_lines[0], "", dev_lines[1], long_line, dev_lines[2]]
  done = decode_cli(f"--train_dir={trained_copy}", input="\n".join(lines) + "\n")
  assert done.returncode == 0, done.stderr
  expected = [h[0].text for h in translator.translate(lines).hypotheses]
  assert done.stdout.split("\n") == expected + [""]
  assert "warning: line 4:" in done.stderr and "truncated" in done.stderr
  assert "translated 5 lines (1 empty, 1 truncated to the largest bucket)" in done.stderr
  assert "Traceback" not in done.stderr


def test_cli_files_n_best(trained_copy, translator, dev_lines, tmp_path):
  src, out = tmp_path / "in.txt", tmp_path / "out.txt"
  src.write_text("\n".join([dev_lines[0], "", dev_lines[1]]) + "\n", encoding="utf-8")
  done = decode_cli(f"--train_dir={trained_copy}", f"--input={src}", f"--output={out}",
                    "--beam_size=3", "--n_best=2", "--length_penalty=0.6")
  assert done.returncode == 0, done.stderr
  rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
  expected = translator.translate([dev_lines[0], "", dev_lines[1]], beam_size=3, n_best=2,
                                  length_penalty=0.6).hypotheses
  assert [r[0] for r in rows] == ["1", "1", "2", "3", "3"]
  assert [r[2] for r in rows] == [h.text for line in expected for h in line]
  np.testing.assert_allclose([float(r[1]) for r in rows],
                             [h.score for line in expected for h in line], atol=1e-3)


def test_cli_chunks_keep_order_and_line_numbers(trained_copy, translator, dev_lines, tmp_path):
  lines = dev_lines + ["", dev_lines[0]]  # 42 lines: chunks of 16, 16 and 10
  src, out = tmp_path / "in.txt", tmp_path / "out.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  done = decode_cli(f"--train_dir={trained_copy}", f"--input={src}", f"--output={out}",
                    "--beam_size=3", "--n_best=2", "--chunk_lines=16")
  assert done.returncode == 0, done.stderr
  expected = translator.translate(lines, beam_size=3, n_best=2).hypotheses
  rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
  assert [(int(r[0]), r[2]) for r in rows] == [
      (i + 1, h.text) for i, line in enumerate(expected) for h in line]
  progress = [line for line in done.stderr.splitlines() if "ETA" in line]
  assert [line.split()[1] for line in progress] == ["16/42", "32/42"], done.stderr
  assert "translated 42 lines (1 empty, 0 truncated" in done.stderr


def test_cli_ctrl_c_keeps_the_chunks_done(trained_copy, translator, dev_lines, tmp_path):
  lines = dev_lines * 2000  # 80,000 lines: far more than are done before the interrupt
  src, out = tmp_path / "in.txt", tmp_path / "out.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  # Ctrl-C's SIGINT as in a terminal's foreground: a test run started as a background
  # job of a script would pass on an ignored SIGINT, which s2s-decode then ignores too.
  process = subprocess.Popen(
      [sys.executable, "-m", "seq2seq_buckets.cli.decode", f"--train_dir={trained_copy}",
       f"--input={src}", f"--output={out}", "--chunk_lines=400"],
      stderr=subprocess.PIPE, text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  seen = ""
  while "ETA" not in seen:  # logged once the first chunk is written
    line = process.stderr.readline()
    assert line, seen
    seen += line
  process.send_signal(signal.SIGINT)
  seen += process.communicate(timeout=120)[1]
  assert process.returncode == 130, seen
  assert "Traceback" not in seen
  written = out.read_text(encoding="utf-8").splitlines()
  assert 400 <= len(written) < len(lines) and len(written) % 400 == 0
  assert f"the translations of the first {len(written)} of {len(lines)} input lines" in seen
  expected = [h[0].text for h in translator.translate(dev_lines).hypotheses]
  assert written == (expected * 2000)[:len(written)]


def test_cli_errors(trained_copy, tmp_path):
  empty = train_dir_without_checkpoint(trained_copy, tmp_path)
  for args, message in (
      ([f"--train_dir={trained_copy}", f"--input={tmp_path}/missing.txt"], "no such file"),
      ([f"--train_dir={empty}"], "no checkpoint yet")):
    done = decode_cli(*args, input="ab\n")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in done.stderr and "Traceback" not in done.stderr


class Terminal:
  """A child process on a pseudo-terminal: stdin, stdout and stderr all on the pty."""

  def __init__(self, args):
    self.master, slave = pty.openpty()
    self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    self.seen = ""

  def read_until(self, text, timeout=120):
    deadline = time.time() + timeout
    while text not in self.seen:
      ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.time()))
      if not ready:
        raise AssertionError(f"no {text!r} within {timeout}s; got {self.seen!r}")
      try:
        self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
      except OSError:  # the child closed the terminal
        raise AssertionError(f"no {text!r}; got {self.seen!r}") from None
    head, _, self.seen = self.seen.partition(text)
    return head

  def write(self, data):
    os.write(self.master, data)

  def close(self):
    os.close(self.master)


def test_interactive_mode_through_a_terminal(trained_copy, translator, dev_lines):
  terminal = Terminal([sys.executable, "-m", "seq2seq_buckets.cli.decode",
                       f"--train_dir={trained_copy}", "--beam_size=2"])
  try:
    terminal.read_until("Ctrl-D quits")
    terminal.read_until("> ")
    for line in [dev_lines[0], "", dev_lines[1]]:
      terminal.write(line.encode() + b"\n")
      echoed_and_output = terminal.read_until("> ").replace("\r\n", "\n").split("\n")
      expected = translator.translate([line], beam_size=2).hypotheses[0][0].text
      assert echoed_and_output[:2] == [line, expected]
    terminal.write(b"\x04")  # Ctrl-D
    assert "translated 3 lines (1 empty, 0 truncated" in terminal.read_until("beam 2")
    assert terminal.process.wait(timeout=60) == 0
  finally:
    terminal.process.kill()
    terminal.close()
