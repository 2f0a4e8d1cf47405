"""Decoding: bucketed batching, greedy and beam search, the Translator and s2s-decode.

Beam search is checked against exhaustive search on toy language models (exact
when the beam holds every prefix), and on the tiny trained copy model against
greedy decoding. The CLI runs as a subprocess, interactive mode through a
pseudo-terminal.
"""

import itertools
import json
import math
import os
import pty
import random
import select
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from seq2seq_buckets import decoding
from seq2seq_buckets.errors import UserError
from seq2seq_buckets.vocab import EOS_ID, GO_ID

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


class GreedyStub:
  """Stands in for graphs.GreedyOps of a bucket (I, O): feed keys and an `ids` fetch."""

  def __init__(self, b, bucket):
    self.encoder_inputs, self.source_lengths = f"in_{b}", f"lengths_{b}"
    self.max_steps = f"max_steps_{b}"
    self.ids, self.bucket = object(), bucket


class EchoSession:
  """Stands in for a session running GreedyStub ops: outputs the source + 100, then EOS,
  at most max_steps columns."""

  def __init__(self, ops):
    self.ops, self.batch_sizes = ops, []

  def run(self, ids, feed):
    ops = next(o for o in self.ops if o.ids is ids)
    inputs, lengths = feed[ops.encoder_inputs], feed[ops.source_lengths]
    assert inputs.shape[1] == ops.bucket[0]
    self.batch_sizes.append(len(inputs))
    out = np.full([len(inputs), ops.bucket[1]], EOS_ID)
    for row, length in enumerate(lengths):
      out[row, :length] = inputs[row, :length] + 100
    return out[:, :feed[ops.max_steps]]


@pytest.mark.parametrize("seed", range(20))
def test_greedy_outputs_come_back_in_input_order(seed):
  rng = random.Random(seed)
  sources = random_sources(rng, rng.randint(1, 50))
  ops = [GreedyStub(b, bucket) for b, bucket in enumerate(BUCKETS)]
  session = EchoSession(ops)
  outputs, truncated = decoding.greedy_ids(session, ops, BUCKETS, sources, batch_size=4,
                                           max_length_ratio=10.0)
  for source, output in zip(sources, outputs):
    assert output == [x + 100 for x in source[:BUCKETS[-1][0]]]
  assert truncated == [i for i, s in enumerate(sources) if len(s) > BUCKETS[-1][0]]
  assert max(session.batch_sizes, default=0) <= 4


def test_output_limit():
  assert decoding.output_limit(3, 40, 2.0) == 3 * 2 + decoding.LENGTH_SLACK
  assert decoding.output_limit(30, 40, 2.0) == 39  # the bucket keeps a slot for EOS
  assert decoding.output_limit(0, 40, 0.1) == decoding.LENGTH_SLACK
  assert decoding.output_limit(5, 2, 2.0) == 1


# --- beam search on toy language models ---------------------------------------------------

class ToyDecoder:
  """A language model over V pieces: the log-probs of the next piece are a function of
  (source, prefix). The source travels as the encoder memory and the prefix as the
  decoder output (object arrays), so beam reordering and batch shrinking act on them
  as on the real graph's arrays."""

  def __init__(self, log_probs, buckets=BUCKETS):
    self.log_probs, self.buckets, self.steps, self.rows = log_probs, buckets, 0, []

  def encode(self, sources):
    memory, prefixes = np.empty(len(sources), dtype=object), np.empty(len(sources), dtype=object)
    memory[:], prefixes[:] = [tuple(s) for s in sources], [()] * len(sources)
    return (decoding.Encoded(memory, memory, np.ones(len(sources), np.int32)),
            decoding.Recurrent(prefixes, []))

  def step(self, encoded, recurrent, tokens, count):
    self.steps += 1
    self.rows.append(len(tokens))
    prefixes = np.empty(len(tokens), dtype=object)
    prefixes[:] = [p if t == GO_ID else p + (int(t),) for p, t in zip(recurrent.output, tokens)]
    log_probs = np.stack([self.log_probs(m, p) for m, p in zip(encoded.memory, prefixes)])
    ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(log_probs, ids, 1), ids, decoding.Recurrent(prefixes, [])


def random_lm(vocab):
  """Deterministic random next-piece log-probs per (source, prefix); GO never follows."""
  def log_probs(source, prefix):
    rng = np.random.default_rng(zlib.crc32(repr((source, prefix)).encode()))
    logits = rng.normal(0.0, 2.0, vocab)
    logits[GO_ID] = -np.inf
    return logits - np.logaddexp.reduce(logits)
  return log_probs


def exhaustive(log_probs, source, vocab, limit, alpha):
  """Every hypothesis beam search may return, as (normalised score, ids), best first."""
  found = []
  pieces = [v for v in range(vocab) if v not in (EOS_ID, GO_ID)]
  for length in range(limit + 1):
    for ids in itertools.product(pieces, repeat=length):
      score = sum(log_probs(source, ids[:t])[ids[t]] for t in range(length))
      if length < limit:
        found.append(((score + log_probs(source, ids)[EOS_ID]) /
                      decoding.length_penalty_factor(length + 1, alpha), list(ids)))
      else:
        found.append((score / decoding.length_penalty_factor(length, alpha), list(ids)))
  return sorted(found, key=lambda f: -f[0])


@pytest.mark.parametrize("alpha", [0.0, 0.8])
@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_exhaustive_search(seed, alpha):
  vocab, n_best = 5, 3
  rng = random.Random(seed)
  limits = [rng.randint(1, 4) for _ in range(4)]
  lm = random_lm(vocab)
  sources = [[seed * 10 + s] for s in range(len(limits))]
  found = decoding.search_batch(ToyDecoder(lm), sources, limits, beam_size=27,
                                alpha=alpha, n_best=n_best)
  for source, limit, hypotheses in zip(sources, limits, found):
    best = exhaustive(lm, tuple(source), vocab, limit, alpha)[:n_best]
    assert [h.ids for h in hypotheses] == [ids for _, ids in best]
    np.testing.assert_allclose([h.score for h in hypotheses], [s for s, _ in best], rtol=1e-9)


def scripted_lm(table, vocab=6):
  """log-probs from {prefix: {piece: prob}}; unlisted pieces share what is left."""
  def log_probs(_, prefix):
    probs = table.get(prefix, {EOS_ID: 0.5, 4: 0.5})
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    return np.log(np.array([probs.get(v, rest) + 1e-12 for v in range(vocab)]))
  return log_probs


# After 4 the best path keeps going; its end is worse than stopping at once (EOS: 0.45).
EARLY_STOP = {(): {EOS_ID: 0.45, 4: 0.55}, (4,): {4: 0.6, EOS_ID: 0.4},
              (4, 4): {4: 0.6, EOS_ID: 0.4}, (4, 4, 4): {EOS_ID: 0.6, 4: 0.4}}


def test_finished_hypothesis_is_kept_while_others_continue():
  decoder = ToyDecoder(scripted_lm(EARLY_STOP))
  (best, second), = decoding.search_batch(decoder, [[0]], [6], beam_size=2, alpha=0.0, n_best=2)
  assert best.ids == [] and best.score == pytest.approx(math.log(0.45))
  assert second.ids == [4] and second.score == pytest.approx(math.log(0.55 * 0.4))
  assert decoder.steps >= 2  # the search went on after the first hypothesis finished


def test_beam_one_drops_what_ranks_below_the_live_beam():
  (only,), = decoding.search_batch(ToyDecoder(scripted_lm(EARLY_STOP)), [[0]], [6],
                                   beam_size=1, alpha=0.0, n_best=1)
  assert only.ids == [4, 4, 4]  # greedy: 0.55 beats 0.45 at the first step
  assert only.score == pytest.approx(math.log(0.55 * 0.6 * 0.6 * 0.6))


def test_length_penalty_favours_longer_hypotheses():
  table = {(): {EOS_ID: 0.45, 4: 0.55}, (4,): {4: 0.9}, (4, 4): {4: 0.9},
           (4, 4, 4): {EOS_ID: 0.9}}
  plain, = decoding.search_batch(ToyDecoder(scripted_lm(table)), [[0]], [6], 3, 0.0, 1)
  penalised, = decoding.search_batch(ToyDecoder(scripted_lm(table)), [[0]], [6], 3, 1.0, 1)
  assert plain[0].ids == [] and penalised[0].ids == [4, 4, 4]
  assert penalised[0].score == pytest.approx(math.log(0.55 * 0.9 ** 3) / (9 / 6))


def test_finished_sentences_leave_the_batch():
  stops, goes_on = scripted_lm({(): {EOS_ID: 0.99}}), scripted_lm({(): {4: 0.9}, (4,): {4: 0.9}})
  decoder = ToyDecoder(lambda s, p: (stops if s == (0,) else goes_on)(s, p))
  found = decoding.search_batch(decoder, [[0], [1]], [8, 8], beam_size=3, alpha=0.0, n_best=1)
  assert found[0][0].ids == []
  assert decoder.rows[0] == 6 and decoder.rows[-1] == 3  # sentence 0 stopped after one step


@pytest.mark.parametrize("seed", range(10))
def test_beam_outputs_come_back_in_input_order(seed):
  rng = random.Random(seed)
  sources = random_sources(rng, rng.randint(1, 30))
  found, truncated = decoding.beam_search(ToyDecoder(random_lm(6)), sources, beam_size=3,
                                          batch_size=4, n_best=2)
  for source, hypotheses in zip(sources, found):
    alone, _ = decoding.beam_search(ToyDecoder(random_lm(6)), [source], 3, 1, n_best=2)
    assert hypotheses == alone[0]
    assert (hypotheses == [decoding.Hypothesis([], 0.0)]) == (not source)
  assert truncated == [i for i, s in enumerate(sources) if len(s) > BUCKETS[-1][0]]


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


def test_beam_one_equals_greedy(translator, dev_lines):
  sources = translator.source_spm.encode(dev_lines + ["ab cd " * 12])
  greedy, greedy_cut = decoding.greedy_ids(translator.session, translator.graph.greedy,
                                           translator.buckets, sources, 16)
  beam, beam_cut = decoding.beam_search(translator.step_decoder, sources, 1, 16)
  assert [b[0].ids for b in beam] == greedy
  assert beam_cut == greedy_cut == [len(dev_lines)]


def model_score(translator, source, ids, limit):
  """Log-prob of `ids` (+ EOS when shorter than limit) under the step graph."""
  decoder = translator.step_decoder
  encoded, recurrent = decoder.encode([source])
  targets = ids + ([EOS_ID] if len(ids) < limit else [])
  total = 0.0
  for previous, target in zip([GO_ID] + ids, targets):
    log_probs, pieces, recurrent = decoder.step(encoded, recurrent, np.array([previous]), 10**6)
    total += log_probs[0, list(pieces[0]).index(target)]
  return total


def test_beam_scores_at_least_greedy(translator, dev_lines):
  sources = translator.source_spm.encode(dev_lines[:20])
  greedy, _ = decoding.greedy_ids(translator.session, translator.graph.greedy,
                                  translator.buckets, sources, 16)
  beam, _ = decoding.beam_search(translator.step_decoder, sources, 5, 16)
  for source, ids, found in zip(sources, greedy, beam):
    b = decoding.plan_batches([source], translator.buckets, 1).batches[0].bucket
    limit = decoding.output_limit(len(source), translator.buckets[b][1], 2.0)
    greedy_score = model_score(translator, source, ids, limit)
    assert found[0].score >= greedy_score - 1e-4
    if found[0].ids == ids:
      assert found[0].score == pytest.approx(greedy_score, abs=1e-4)


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
