#!/usr/bin/env python3
"""One run that measures the reference model on Multi30k En->De, and optionally the peer.

    python scripts/benchmark.py --quick            # < 3 minutes, few steps, test subset
    python scripts/benchmark.py                    # full: the README's numbers
    python scripts/benchmark.py --peer [--steps N] # also OpenNMT-py 3.5.1, side by side

What it measures (each TensorFlow part in a subprocess of its own, so every peak
RSS is that part's alone, read with os.wait4 or getrusage):

  machine   CPU model, cores, memory, load average; fp32 matmul GFLOP/s peak (large
            square matmul through TensorFlow, best of several runs; measured in
            the speed subprocess once its training sessions are closed).
  prepare   wall time of `s2s-prepare` (the recipe's buckets) on Multi30k; a second
            directory with one max-length bucket (the padded baseline) from the
            same SentencePiece models.
  speed     graph build (training graph, init, inference graph); training
            target tokens/s (real target tokens, EOS included, no padding) with
            the recipe's buckets and with the single bucket: same model, warmed up,
            repetitions interleaved, median per mode and their ratio; padding
            efficiency of both; model FLOPs per target token (analytic) and the
            fraction of the matmul peak that training reaches (mfu).
  train     the real trainer (`seq2seq_buckets.trainer.train`) for --steps
            steps: its peak RSS, and the model that decoding uses. --quick has
            --steps 0: no trainer run; decoding uses the model the speed run
            trained, and the training RSS is the speed process's before it
            builds the padded model.
  peer      (--peer) OpenNMT-py 3.5.1 in its own virtualenv (scripts/peer/setup_peer.sh),
            same architecture, same SentencePiece pieces, same steps and test set.
  decode    test_2016_flickr: batched greedy and beam-5 sentences/s, interactive
            (one sentence at a time, text in, text out) p50/p95 ms, BLEU, output
            pieces per sentence, peak RSS; with --peer, OpenNMT-py's decoding in the
            same rounds (see decode_rounds): speedups are medians of per-round ratios.

Writes benchmark.json (--json) and prints a markdown table for the README.
"""

import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from seq2seq_buckets.batches import DECODE_BATCH_SIZE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "multi30k"))
RECIPE_PREPARE = os.path.join(REPO, "configs", "multi30k_en_de.prepare.cfg")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "seq2seq_buckets")
DEFAULT_PEER_VENV = os.environ.get("S2S_PEER_VENV", os.path.join(CACHE, "peer_venv"))
PEER_SETUP = os.path.join(REPO, "scripts", "peer", "setup_peer.sh")
TEST_SET = "test_2016_flickr"

# Settings of the two modes; every value can be overridden by a flag.
MODES = {
    # steps 0: no separate trainer run; decoding uses the model of the speed run
    # decode_reps: rounds of batched decoding, ours then OpenNMT-py's (see
    # decode_rounds); the median counts (single runs of ~1-10 s moved by 20-40% on
    # this shared machine: ours greedy 701-1,005 sentences/s within one run of 3)
    "quick": dict(steps=0, speed_steps=5, speed_reps=2, warmup_steps=1, test_lines=50,
                  interactive_lines=10, matmul_size=2048, matmul_reps=3, decode_reps=1),
    "full": dict(steps=4000, speed_steps=60, speed_reps=5, warmup_steps=5, test_lines=0,
                 interactive_lines=200, matmul_size=4096, matmul_reps=5, decode_reps=5),
}

# Targets from the issues (name -> (comparison, value)); shown in the table, not enforced.
GOALS = {
    "bucket_speedup": (">=", 2.5),
    "peer_train_speedup": (">=", 1.5),
    "mfu": (">=", 0.5),
    "graph_build_s": ("<=", 10.0),
    "interactive_p50_ms": ("<=", 15.0),
    "interactive_beam_p50_ms": ("<=", 50.0),
    "prepare_s": ("<=", 6.0),
    "peer_decode_speedup_greedy": (">=", 3.0),
    "peer_decode_speedup": (">=", 2.0),
    "peer_decode_speedup_greedy_batch30": (">=", 3.0),
    "peer_decode_speedup_batch30": (">=", 2.0),
}


# --- pure helpers (no TensorFlow; tests call these) ------------------------------------

def cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def memory_gib():
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return None


def _hparam_getter(hp):
  """hp (a dict, or an object with the hparams as attributes) -> get(name, default=None)."""
  return hp.get if isinstance(hp, dict) else lambda name, default=None: getattr(hp, name, default)


def forward_flops(hp, source_len, target_len, projected_len=None):
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one sentence pair.

  hp: a dict (or object) with the model hparams; the encoder runs over
  `source_len` positions, the decoder over `target_len` positions attending to
  `source_len` positions, the output projection over `projected_len` of them
  (default all: training projects only the real target positions, so for a
  padded pair that is its real length). Counted: LSTM/GRU gate matmuls of every
  layer, the attention (keys, query, scores, context, attentional output) and
  the output projection; embeddings, softmax and elementwise work are not counted.
  """
  get = _hparam_getter(hp)
  h, e, layers = get("size"), get("embedding_size"), get("num_layers")
  v = get("tgt_vocab_size")
  gates = 4 if get("cell", "lstm") == "lstm" else 3

  def cell(inputs, units):
    return 2 * (inputs + units) * gates * units

  if get("bidirectional_encoder", False):
    enc0 = 2 * cell(e, h // 2)
  else:
    enc0 = cell(e, h)
  encoder = source_len * (enc0 + (layers - 1) * cell(h, h) + 2 * h * h)  # + attention keys
  feed = h if get("input_feeding", True) else 0
  dec = cell(e + feed, h) + (layers - 1) * cell(h, h)
  attention = 2 * 2 * source_len * h + 2 * 2 * h * h  # scores + context; output [2H]x[H]
  if get("attention", "bahdanau") == "bahdanau":
    attention += 2 * h * h  # query projection
  projection = 2 * h * v
  projected_len = target_len if projected_len is None else projected_len
  return encoder + target_len * (dec + attention) + projected_len * projection


def decoding_flops(hp, source_len, output_len, beam=1):
  """Matmul FLOPs of decoding one sentence: the encoder over source_len pieces, then
  1 + beam * output_len decoder rows (the first step, which sees no output yet, on
  one row; a step per output piece and EOS, on each of the beam's rows), less the
  first LSTM layers' embedding rows, encoder's and decoder's, whose share of the
  gates decoding gathers (LSTMCell.cache_step_weights). A lower bound for beam
  search, which may search on after its best hypothesis has ended; greedy decoding
  runs exactly these steps, but its argmax computes only part of the projection
  (seq2seq_buckets/screening.py), so it runs fewer FLOPs."""
  get = _hparam_getter(hp)
  rows = 1 + beam * output_len
  gathered = 0
  if get("cell", "lstm") == "lstm":  # a bidirectional layer: two of H/2 units
    gathered = (source_len + rows) * 2 * get("embedding_size") * 4 * get("size")
  return forward_flops(hp, source_len, rows) - gathered


def training_flops(hp, source_len, target_len, projected_len=None):
  """Forward + backward (2x forward) matmul FLOPs of one training pass over one pair."""
  return 3 * forward_flops(hp, source_len, target_len, projected_len)


def recipe_buckets():
  """The --buckets value of the Multi30k En->De recipe (the reference model's buckets)."""
  with open(RECIPE_PREPARE, encoding="utf-8") as f:
    for line in f:
      if line.startswith("--buckets="):
        return line.strip().split("=", 1)[1]
  raise ValueError(f"{RECIPE_PREPARE}: no --buckets line")


def median(values):
  return float(statistics.median(values)) if values else None


def percentile(values, q):
  """The q-th percentile (0..100) by linear interpolation; None for no values."""
  if not values:
    return None
  data = sorted(values)
  pos = (len(data) - 1) * q / 100.0
  lo, hi = int(math.floor(pos)), int(math.ceil(pos))
  return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def round_ratios(ours, peer):
  """Rates of the same rounds, in round order -> [ours / peer] per round."""
  if len(ours) != len(peer):
    raise ValueError(f"{len(ours)} rounds of ours against {len(peer)} of the peer")
  return [a / b for a, b in zip(ours, peer)]


def ratio(a, b):
  return a / b if a and b else None


def _fmt(value, digits=None):
  if value is None:
    return "n/a"
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, int):
    return f"{value:,}"
  if isinstance(value, float):
    if digits is not None:
      return f"{value:,.{digits}f}"
    if abs(value) >= 100:
      return f"{value:,.0f}"
    if abs(value) >= 10:
      return f"{value:.1f}"
    return f"{value:.2f}"
  return str(value)


# (key, label, digits) rows of the table, in order; absent keys are skipped.
TABLE_ROWS = [
    ("prepare_s", "prepare Multi30k (s2s-prepare, {buckets} buckets), s", 1),
    ("graph_build_s", "build training + inference graphs and init, s", 1),
    ("first_run_s", "first step of every bucket (TensorFlow graph optimisation), s", 1),
    ("train_tokens_per_s_bucketed", "training, target tokens/s, {buckets} buckets", 0),
    ("train_tokens_per_s_padded", "training, target tokens/s, one max-length bucket", 0),
    ("bucket_speedup", "bucket speedup (bucketed / padded)", 2),
    ("bucket_speedup_flop_bound", "executed FLOPs per target token, padded / bucketed", 2),
    ("padding_efficiency_bucketed", "padding efficiency, {buckets} buckets", 3),
    ("padding_efficiency_padded", "padding efficiency, one bucket", 3),
    ("flops_per_target_token", "model FLOPs per target token (training, analytic)", None),
    ("achieved_gflops", "achieved model GFLOP/s (bucketed training)", 1),
    ("mfu", "mfu (achieved / measured matmul peak)", 3),
    ("matmul_gflops_one_thread", "fp32 matmul peak on one thread, GFLOP/s", 1),
    ("matmul_gflops_streams", "fp32 matmul peak, one thread per core side by side, GFLOP/s", 1),
    ("train_peak_rss_mb", "training peak RSS, MB", 0),
    ("decode_greedy_sent_per_s", "decoding greedy, sentences/s (batched)", 1),
    ("decode_beam_sent_per_s", "decoding beam 5, sentences/s (batched)", 1),
    ("interactive_p50_ms", "interactive greedy p50 / sentence, ms", 1),
    ("interactive_p95_ms", "interactive greedy p95 / sentence, ms", 1),
    ("interactive_beam_p50_ms", "interactive beam 5 p50 / sentence, ms", 1),
    ("interactive_beam_p95_ms", "interactive beam 5 p95 / sentence, ms", 1),
    ("decode_greedy_gflops",
     "decoding greedy, model GFLOP/s (analytic, whole projection; it runs fewer)", 1),
    ("decode_beam_gflops", "decoding beam 5, model GFLOP/s (analytic lower bound)", 1),
    ("decode_beam_sent_per_s_at_peak", "beam-5 sentences/s if all ran at that peak (at most)", 0),
    ("decode_peak_rss_mb", "decoding peak RSS, MB", 0),
    ("bleu_greedy", "BLEU greedy (sacreBLEU, test subset as decoded)", 2),
    ("bleu_beam", "BLEU beam 5", 2),
    ("decode_greedy_mean_output_pieces", "output pieces per sentence, greedy", 2),
    ("decode_beam_mean_output_pieces", "output pieces per sentence, beam 5", 2),
    ("peer_train_tokens_per_s", "OpenNMT-py training, target tokens/s", 0),
    ("peer_train_speedup", "training speedup over OpenNMT-py", 2),
    ("peer_decode_greedy_sent_per_s", "OpenNMT-py greedy, sentences/s", 1),
    ("peer_decode_beam_sent_per_s", "OpenNMT-py beam 5, sentences/s", 1),
    ("peer_decode_speedup_greedy", "greedy decoding speedup over OpenNMT-py (median of rounds)", 2),
    ("peer_decode_speedup", "beam-5 decoding speedup over OpenNMT-py (median of rounds)", 2),
    ("peer_decode_speedup_at_peak", "beam-5 speedup over OpenNMT-py at that peak (at most)", 2),
    ("decode_greedy_sent_per_s_batch30", "decoding greedy, batch 30, sentences/s", 1),
    ("decode_beam_sent_per_s_batch30", "decoding beam 5, batch 30, sentences/s", 1),
    ("peer_decode_greedy_sent_per_s_batch30", "OpenNMT-py greedy, batch 30, sentences/s", 1),
    ("peer_decode_beam_sent_per_s_batch30", "OpenNMT-py beam 5, batch 30, sentences/s", 1),
    ("peer_decode_speedup_greedy_batch30",
     "greedy speedup over OpenNMT-py, both at batch 30 (median of rounds)", 2),
    ("peer_decode_speedup_batch30",
     "beam-5 speedup over OpenNMT-py, both at batch 30 (median of rounds)", 2),
    ("peer_train_peak_rss_mb", "OpenNMT-py training peak RSS, MB", 0),
    ("peer_bleu_greedy", "OpenNMT-py BLEU greedy", 2),
    ("peer_bleu_beam", "OpenNMT-py BLEU beam 5", 2),
    ("peer_decode_greedy_mean_output_pieces", "OpenNMT-py output pieces per sentence, greedy", 2),
    ("peer_decode_beam_mean_output_pieces", "OpenNMT-py output pieces per sentence, beam 5", 2),
]


def machine_line(results):
  m = results.get("machine", {})
  gflops = results.get("matmul_gflops")
  parts = [m.get("cpu_model", "unknown CPU"), f"{m.get('cores', '?')} cores"]
  if m.get("memory_gib"):
    parts.append(f"{m['memory_gib']} GiB")
  if gflops:
    parts.append(f"fp32 matmul peak {gflops:,.1f} GFLOP/s")
  if m.get("tensorflow"):
    parts.append(f"TensorFlow {m['tensorflow']}")
  if m.get("python"):
    parts.append(f"Python {m['python']}")
  if m.get("load_average") is not None:
    parts.append(f"load average at start {m['load_average']:.2f}")
  return "; ".join(parts)


def _goal_text(key, value):
  if key not in GOALS:
    return ""
  op, target = GOALS[key]
  if value is None:
    return f"{op} {target:g}"
  met = value >= target if op == ">=" else value <= target
  return f"{op} {target:g} ({'met' if met else 'missed'})"


def unlike_outputs(results):
  """Warnings for decoding modes whose two models' outputs differ by more than a fifth in
  pieces per sentence: their sentences/s then compare unlike work."""
  found = []
  for name in ("greedy", "beam"):
    ours = results.get(f"decode_{name}_mean_output_pieces")
    peer = results.get(f"peer_decode_{name}_mean_output_pieces")
    if ours and peer and max(ours, peer) > 1.2 * min(ours, peer):
      found.append(f"{name} outputs are {ours:.1f} pieces per sentence for ours and {peer:.1f} "
                   f"for OpenNMT-py's: the {name} speedups compare unlike work.")
  return found


def markdown_table(results):
  """The README table: a heading line with mode, date and machine, then figure | value | goal."""
  m = results.get("machine", {})
  lines = [f"Benchmark ({results.get('mode', '?')} mode, {results.get('date', '?')}; "
           f"model trained {results.get('model_steps', '?')} steps): {machine_line(results)}",
           "",
           "| figure | value | goal |", "|---|---|---|"]
  load = max(m.get("load_average") or 0, m.get("load_average_end") or 0)
  if m.get("cores") and load > 0.5 * m["cores"]:
    lines[1:1] = ["", f"Note: the machine was busy (load average up to {load:.1f} on "
                  f"{m['cores']} cores): these figures are noisy, and the OpenNMT-py ones "
                  "suffer most (its OpenMP threads stall when cores are oversubscribed)."]
  lines[1:1] = [f"\nNote: {text}" for text in unlike_outputs(results)]
  buckets = results.get("settings", {}).get("buckets", "auto")
  for key, label, digits in TABLE_ROWS:
    if results.get(key) is None:
      continue
    lines.append(f"| {label.format(buckets=buckets)} | {_fmt(results[key], digits)} | "
                 f"{_goal_text(key, results[key])} |")
  return "\n".join(lines) + "\n"


def write_json(results, path):
  """Writes `results` as indented, key-sorted JSON (atomically)."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)


def log(message):
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- subprocess plumbing --------------------------------------------------------------

def run_measured(cmd, env=None, stdout=None, stderr=None, cwd=None):
  """Runs cmd to completion; returns (exit status, wall seconds, peak RSS MB of it)."""
  start = time.time()
  proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, cwd=cwd)
  try:
    _, status, usage = os.wait4(proc.pid, 0)
  except BaseException:  # interrupted or terminated: take the child down with us
    proc.kill()
    proc.wait()
    raise
  proc.returncode = os.waitstatus_to_exitcode(status)
  return proc.returncode, time.time() - start, usage.ru_maxrss / 1024.0  # KiB on Linux


def run_worker(name, args, work_dir):
  """Runs this script's worker `name` in a fresh Python; returns (result dict, peak RSS MB)."""
  out = os.path.join(work_dir, f"worker-{name}.json")
  if os.path.exists(out):
    os.remove(out)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
         "--worker_args", json.dumps(args), "--worker_out", out]
  code, wall, rss = run_measured(cmd, env=env)
  if code != 0 or not os.path.exists(out):
    raise RuntimeError(f"worker {name} failed with exit status {code}")
  with open(out, encoding="utf-8") as f:
    result = json.load(f)
  log(f"worker {name}: {wall:.1f}s, peak RSS {rss:.0f} MB")
  return result, rss


# --- workers: each runs in its own process ----------------------------------------------

def _session(graph, threads=None):
  """A session as training's; threads: threads per op, when not training's (this holds
  only if the process's op thread pool is not made yet; see trainer.session_config)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import trainer  # pylint: disable=g-import-not-at-top
  return tf.compat.v1.Session(graph=graph, config=trainer.session_config(
      intra_op_threads=threads or trainer.CORES))


def worker_matmul(a):
  """fp32 GFLOP/s of n x n matmuls through TensorFlow (best of reps, and median), on
  a["threads"] threads per op (default: every core, as training runs).

  With a["streams"] (one thread per op): also `streams` independent matmuls run side
  by side in one session.run, as decoding runs one batch per core
  (`matmul_gflops_streams`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import graphs  # noqa: F401  (graph mode, as the project runs)
  tf1 = tf.compat.v1
  if a.get("threads"):
    # The process-wide op pool is made once, from this setting if TensorFlow's runtime
    # starts first, else from the first session's (_session): both ask for `threads`.
    tf.config.threading.set_intra_op_parallelism_threads(a["threads"])
  n = a["size"]
  graph = tf.Graph()
  with graph.as_default():
    products = []
    for i in range(a.get("streams", 1)):
      x, y = (tf1.get_variable(f"{name}{i}", [n, n], initializer=tf1.random_normal_initializer())
              for name in "xy")
      products.append(tf.matmul(x, y).op)
    init = tf1.global_variables_initializer()
  with _session(graph, a.get("threads")) as session:
    session.run(init)

    def rates(ops):
      session.run(ops)  # first run: kernel selection, allocation
      found = []
      for _ in range(a["reps"]):
        start = time.perf_counter()
        session.run(ops)
        found.append(2.0 * n ** 3 * len(ops) / (time.perf_counter() - start) / 1e9)
      return found

    one = rates(products[:1])
    out = {"matmul_gflops": max(one), "matmul_gflops_median": median(one), "matmul_size": n,
           "tensorflow": tf.__version__}
    if len(products) > 1:
      out["matmul_gflops_streams"] = max(rates(products))
  return out


def _hparams(data_dir, overrides):
  from seq2seq_buckets import hparams as hparams_lib  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(data_dir)
  values = dict(overrides)
  values.update(src_vocab_size=manifest["vocab"]["source"]["size"],
                tgt_vocab_size=manifest["vocab"]["target"]["size"],
                buckets=[[b["source_length"], b["target_length"]] for b in manifest["buckets"]])
  return hparams_lib.HParams.from_dict(values).check(), manifest


def worker_speed(a):
  """Graph build, first-run cost, then interleaved training-speed repetitions, bucketed vs padded.

  The bucketed model is built and warmed up first and the process's peak RSS is
  read before the padded model exists (`bucketed_peak_rss_mb`). With a["save_dir"]
  the bucketed model is saved there as a train_dir (hparams, SentencePiece models,
  checkpoint) for decoding.
  """
  import resource  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import graphs, trainer  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import hparams as hparams_lib  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets.sampler import BucketSampler  # pylint: disable=g-import-not-at-top
  runs, out = {}, {}

  def build(mode):
    data_dir = a["data_dirs"][mode]
    hp, manifest = _hparams(data_dir, a["overrides"])
    start = time.perf_counter()
    tg = graphs.build_training_graph(hp)
    out[f"train_graph_build_s_{mode}"] = time.perf_counter() - start
    with tg.graph.as_default():
      nexts = trainer.train_batches(manifest, data_dir, hp)
    session = _session(tg.graph)
    start = time.perf_counter()
    session.run(tg.init)
    out[f"init_s_{mode}"] = time.perf_counter() - start
    sizes = [b["pairs"] for b in manifest["buckets"]]
    run = runs[mode] = dict(hp=hp, tg=tg, session=session, nexts=nexts, data_dir=data_dir,
                            manifest=manifest, sampler=BucketSampler(sizes, hp.seed), step=0)
    # First run of every bucket's update: TensorFlow prunes, optimises and builds an
    # executor for each new set of fetches; a user pays this once per bucket.
    # (The fetches must be the ones of run_steps: each new fetch set pays again.)
    start = time.perf_counter()
    for b, bt in enumerate(tg.buckets):
      if nexts[b] is not None:
        batch = session.run(nexts[b])
        session.run(train_fetches(bt), dict(zip(bt.inputs, batch)))
    out[f"first_run_s_{mode}"] = time.perf_counter() - start
    start = time.perf_counter()
    run_steps(run, a["warmup_steps"])
    out[f"warmup_s_{mode}"] = time.perf_counter() - start
    return run

  def train_fetches(bt):
    return [bt.loss, bt.grad_norm, bt.tokens, bt.update]  # what the trainer fetches

  def run_steps(run, count):
    """count training steps as the trainer runs them (fetch a batch, then update)."""
    totals = dict(time=0.0, wait=0.0, tokens=0.0, slots=0.0, useful=0.0, executed=0.0)
    hp_dict = json.loads(run["hp"].to_json())
    for _ in range(count):
      b = run["sampler"].draw(run["step"])
      run["step"] += 1
      bt = run["tg"].buckets[b]
      t0 = time.perf_counter()
      batch = run["session"].run(run["nexts"][b])
      t1 = time.perf_counter()
      _, _, tokens, _ = run["session"].run(train_fetches(bt), dict(zip(bt.inputs, batch)))
      t2 = time.perf_counter()
      source_len, target_len = run["hp"].buckets[b]
      lengths = batch.source_lengths
      totals["time"] += t2 - t0
      totals["wait"] += t1 - t0
      totals["tokens"] += float(tokens)
      totals["slots"] += float(len(lengths) * target_len)
      real_targets = batch.target_weights.sum(axis=1)
      totals["useful"] += sum(training_flops(hp_dict, int(s), int(t))
                              for s, t in zip(lengths, real_targets))
      totals["executed"] += sum(training_flops(hp_dict, source_len, target_len, int(t))
                                for t in real_targets)
    return totals

  bucketed = build("bucketed")
  out["bucketed_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  hp = bucketed["hp"]
  out["train_graph_build_s"] = out["train_graph_build_s_bucketed"]
  out["init_s"] = out["init_s_bucketed"]
  out["first_run_s"] = out["first_run_s_bucketed"]
  out["buckets"] = hp.buckets
  out["hparams"] = json.loads(hp.to_json())
  out["trainable_parameters"] = int(sum(
      np.prod(v.shape.as_list()) for v in bucketed["tg"].graph.get_collection("trainable_variables")))
  build("padded")

  reps = {mode: [] for mode in runs}
  for r in range(a["reps"]):
    order = ["bucketed", "padded"] if r % 2 == 0 else ["padded", "bucketed"]
    for mode in order:
      reps[mode].append(run_steps(runs[mode], a["steps"]))
  for mode, totals in reps.items():
    rates = [t["tokens"] / t["time"] for t in totals]
    out[f"train_tokens_per_s_{mode}"] = median(rates)
    out[f"train_tokens_per_s_{mode}_reps"] = rates
    tokens = sum(t["tokens"] for t in totals)
    seconds = sum(t["time"] for t in totals)
    out[f"input_wait_{mode}"] = sum(t["wait"] for t in totals) / seconds
    out[f"target_padding_efficiency_{mode}"] = tokens / sum(t["slots"] for t in totals)
    out[f"padding_efficiency_{mode}"] = runs[mode]["manifest"]["padding_efficiency"]
    out[f"useful_flops_per_target_token_{mode}"] = sum(t["useful"] for t in totals) / tokens
    out[f"executed_flops_per_target_token_{mode}"] = sum(t["executed"] for t in totals) / tokens
    out[f"step_s_{mode}"] = seconds / (a["steps"] * a["reps"])

  if a.get("save_dir"):
    # The bucketed model as a train_dir that decoding reads (the trainer's layout).
    save_dir = a["save_dir"]
    os.makedirs(save_dir, exist_ok=True)
    hparams_lib.save(save_dir, hp)
    vocab_info = bucketed["manifest"]["vocab"]
    for side, name in (("source", trainer.SRC_MODEL), ("target", trainer.TGT_MODEL)):
      shutil.copyfile(os.path.join(bucketed["data_dir"], vocab_info[side]["model"]),
                      os.path.join(save_dir, name))
    session = bucketed["session"]
    step = int(session.run(bucketed["tg"].state.global_step))
    bucketed["tg"].saver.save(session, os.path.join(save_dir, trainer.CHECKPOINT_PREFIX),
                              global_step=step)
    out["saved_model_steps"] = step
  for run in runs.values():
    run["session"].close()
  if a.get("matmul"):
    # The machine's peak, measured here to spare --quick another TensorFlow start-up;
    # after the RSS reading above, with the training sessions closed.
    out.update(worker_matmul(a["matmul"]))
  return out


def worker_train(a):
  """The real trainer for a["steps"] steps (a fresh train_dir); returns its progress figures."""
  from seq2seq_buckets import trainer  # pylint: disable=g-import-not-at-top
  steps = a["steps"]
  lines = []

  def capture(message):
    lines.append(message)
    print(message, file=sys.stderr, flush=True)

  every = max(1, min(100, steps // 5))
  options = trainer.TrainOptions(max_steps=steps, max_time_minutes=0, steps_per_checkpoint=steps,
                                 steps_per_bleu=0, steps_per_log=every, patience=0,
                                 keep_checkpoints=1, dev_bleu_lines=0)
  start = time.time()
  trainer.train(data_dir=a["data_dir"], train_dir=a["train_dir"], overrides=a["overrides"],
                options=options, log=capture)
  rates = [float(m.group(1)) for m in (re.search(r"tok/s (\d+)", line) for line in lines) if m]
  return {"trainer_wall_s": time.time() - start,
          # the first window holds the first-run cost of each bucket; skip it when we can
          "trainer_tokens_per_s": median(rates[1:] or rates)}


def _read_lines(path, limit=0):
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\r\n") for line in f]
  return lines[:limit] if limit else lines


def worker_decode(a):
  """Batched greedy and beam-5 sentences/s, interactive latency and BLEU on the test set.

  Decodes through seq2seq_buckets.translator.Translator, as s2s-decode does: text
  in, SentencePiece, bucketed decoding, detokenized text out.
  """
  import sacrebleu  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import graphs, translator, vocab  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import hparams as hparams_lib  # pylint: disable=g-import-not-at-top

  out = {}
  build = graphs.build_inference_graph

  def timed_build(hp):  # the Translator builds the graph; time that part of its loading
    start = time.perf_counter()
    result = build(hp)
    out["inference_graph_build_s"] = time.perf_counter() - start
    return result

  graphs.build_inference_graph = timed_build
  translator.one_thread_per_op()  # as s2s-decode
  start = time.perf_counter()
  model = translator.Translator(a["train_dir"])
  out["decode_load_s"] = time.perf_counter() - start
  translator.freeze_loaded_objects()  # as s2s-decode
  graphs.build_inference_graph = build
  sources = _read_lines(a["src"], a["lines"])
  refs = _read_lines(a["ref"], a["lines"])
  hp = hparams_lib.load(a["train_dir"])
  source_lens = [min(len(ids), model.max_source_pieces)
                 for ids in vocab.encode_lines(model.source_spm, sources)]

  def texts(lines, beam, batch):
    found = model.translate(lines, beam_size=beam, batch_size=batch).hypotheses
    return [h[0].text if h else "" for h in found]

  for name, beam in (("greedy", 1), ("beam", a["beam"])):
    start = time.perf_counter()
    model.warm_up(beam_size=beam)  # first run of each bucket's graphs, paid once per process
    out[f"decode_{name}_first_run_s"] = time.perf_counter() - start
    for batch, suffix in a.get("other_batches", []):  # as OpenNMT-py is also run
      start = time.perf_counter()
      texts(sources, beam, batch)
      out[f"decode_{name}_sent_per_s{suffix}"] = len(sources) / (time.perf_counter() - start)
    start = time.perf_counter()
    hyps = texts(sources, beam, a["batch_size"])
    seconds = time.perf_counter() - start
    out[f"decode_{name}_sent_per_s"] = len(sources) / seconds
    out[f"bleu_{name}"] = sacrebleu.corpus_bleu(hyps, [refs]).score
    output_lens = [len(p) for p in model.target_spm.encode(hyps)]
    out[f"decode_{name}_mean_output_pieces"] = sum(output_lens) / max(len(hyps), 1)
    # analytic (see decoding_flops): a lower bound for beam search; for greedy the whole
    # projection is counted, of which its screened argmax runs a part
    flops = sum(decoding_flops(hp, s, o, beam) for s, o in zip(source_lens, output_lens))
    out[f"decode_{name}_gflops"] = flops / seconds / 1e9
    latencies = []  # interactive: one sentence at a time, text in, text out
    for line in sources[:a["interactive_lines"]]:
      start = time.perf_counter()
      texts([line], beam, 1)
      latencies.append(1000.0 * (time.perf_counter() - start))
    if latencies:
      key = "interactive" if name == "greedy" else "interactive_beam"
      out[f"{key}_p50_ms"] = percentile(latencies, 50)
      out[f"{key}_p95_ms"] = percentile(latencies, 95)
  out["decode_sentences"] = len(sources)
  model.close()
  return out


WORKERS = {"matmul": worker_matmul, "speed": worker_speed, "train": worker_train,
           "decode": worker_decode}


# --- prepare ----------------------------------------------------------------------------

def corpus_paths(data, src, tgt):
  return {"train_src": os.path.join(data, f"train.{src}"),
          "train_tgt": os.path.join(data, f"train.{tgt}"),
          "dev_src": os.path.join(data, f"val.{src}"),
          "dev_tgt": os.path.join(data, f"val.{tgt}"),
          "test_src": os.path.join(data, f"{TEST_SET}.{src}"),
          "test_tgt": os.path.join(data, f"{TEST_SET}.{tgt}")}


def run_prepare(paths, out_dir, buckets, vocab_size, spm_models=None):
  """`s2s-prepare` into a fresh out_dir; returns (wall seconds, its own reported seconds)."""
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  cmd = [sys.executable, "-m", "seq2seq_buckets.cli.prepare",
         f"--train_src={paths['train_src']}", f"--train_tgt={paths['train_tgt']}",
         f"--dev_src={paths['dev_src']}", f"--dev_tgt={paths['dev_tgt']}",
         f"--out_dir={out_dir}", f"--buckets={buckets}",
         f"--src_vocab_size={vocab_size}", f"--tgt_vocab_size={vocab_size}"]
  if spm_models:
    cmd += [f"--src_spm_model={spm_models[0]}", f"--tgt_spm_model={spm_models[1]}"]
  logfile = out_dir + ".log"
  with open(logfile, "w", encoding="utf-8") as f:
    code, wall, _ = run_measured(cmd, stdout=f, stderr=subprocess.STDOUT)
  text = open(logfile, encoding="utf-8").read()
  if code != 0:
    raise RuntimeError(f"s2s-prepare failed ({code}):\n{text}")
  found = re.search(r"prepared .* in ([\d.]+)s", text)
  return wall, float(found.group(1)) if found else None


# --- the peer: OpenNMT-py ---------------------------------------------------------------

def peer_setup(venv):
  code, wall, _ = run_measured(["bash", PEER_SETUP, venv])
  if code != 0:
    raise RuntimeError(f"{PEER_SETUP} failed with exit status {code}")
  log(f"peer venv ready in {wall:.0f}s: {venv}")


def write_pieces(spm_path, src_path, dst_path, limit=0):
  """Text -> space-joined SentencePiece pieces, one line per line."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  model = spm.SentencePieceProcessor(model_file=spm_path)
  lines = _read_lines(src_path, limit)
  with open(dst_path, "w", encoding="utf-8") as f:
    for pieces in model.encode(lines, out_type=str):
      f.write(" ".join(pieces) + "\n")
  return len(lines)


def peer_config(hp, buckets, peer_dir, steps, report_every):
  """The onmt yaml (as a dict) for the same architecture and data as ours."""
  return {
      "save_data": os.path.join(peer_dir, "run"),
      "src_vocab": os.path.join(peer_dir, "vocab.src"),
      "tgt_vocab": os.path.join(peer_dir, "vocab.tgt"),
      "src_vocab_size": hp["src_vocab_size"] + 100,  # keep every piece (onmt adds specials)
      "tgt_vocab_size": hp["tgt_vocab_size"] + 100,
      "overwrite": True,
      "data": {
          "corpus_1": {"path_src": os.path.join(peer_dir, "train.src"),
                       "path_tgt": os.path.join(peer_dir, "train.tgt"),
                       "transforms": ["filtertoolong"]},
          "valid": {"path_src": os.path.join(peer_dir, "valid.src"),
                    "path_tgt": os.path.join(peer_dir, "valid.tgt"),
                    "transforms": ["filtertoolong"]},
      },
      # the same pairs as our largest bucket keeps: s <= I, t + 1 <= O (onmt counts BOS+EOS)
      "src_seq_length": max(b[0] for b in buckets),
      "tgt_seq_length": max(b[1] for b in buckets) + 1,
      "encoder_type": "brnn" if hp["bidirectional_encoder"] else "rnn",
      "decoder_type": "rnn",
      "rnn_type": hp["cell"].upper(),
      "layers": hp["num_layers"],
      "hidden_size": hp["size"],
      "word_vec_size": hp["embedding_size"],
      "global_attention": "mlp" if hp["attention"] == "bahdanau" else "general",
      "input_feed": 1 if hp["input_feeding"] else 0,
      "dropout": [hp["dropout"]],
      "optim": hp["optimizer"],
      "learning_rate": hp["learning_rate"],
      "max_grad_norm": hp["max_gradient_norm"],
      "batch_size": hp["batch_size"],
      "batch_type": "sents",
      "valid_batch_size": hp["batch_size"],
      "seed": hp["seed"],
      "train_steps": steps,
      "valid_steps": steps + 1,  # no validation inside the timed run
      "save_checkpoint_steps": steps,
      "save_model": os.path.join(peer_dir, "model"),
      "report_every": report_every,
      "num_workers": 0,
      "bucket_size": 29000,
      "param_init": 0.1,
      "log_file": os.path.join(peer_dir, "train.log"),
  }


def write_yaml(config, path):
  """A small YAML writer for the flat/nested dict above (no PyYAML needed here)."""
  def scalar(v):
    if isinstance(v, bool):
      return "true" if v else "false"
    if isinstance(v, (int, float)):
      return repr(v)
    return json.dumps(str(v))

  def emit(d, indent):
    out = []
    for k, v in d.items():
      if isinstance(v, dict):
        out.append(" " * indent + f"{k}:")
        out.extend(emit(v, indent + 2))
      elif isinstance(v, list):
        out.append(" " * indent + f"{k}: [{', '.join(scalar(x) for x in v)}]")
      else:
        out.append(" " * indent + f"{k}: {scalar(v)}")
    return out

  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(emit(config, 0)) + "\n")


# One onmt report line: "Step 50/ 4000; acc: ...; 1234/ 1456 tok/s;     12 sec"
PEER_STEP = re.compile(r"Step\s+(\d+)/\s*\d+;.*?([\d.]+)/\s*([\d.]+) tok/s;\s*([\d.]+) sec")
PEER_AVG_MS = re.compile(r"Average translation time \(ms\): ([\d.]+)")
# onmt_translate's batch in ../shared/docs/PEER.md, whose sentences/s the decoding goals
# quote; the benchmark also decodes the peer at our batch size (the goal rows).
PEER_MD_BATCH = 30
PEER_MD_SUFFIX = f"_batch{PEER_MD_BATCH}"


def parse_peer_train_log(text):
  """[(step, src tok/s, tgt tok/s, seconds since start)] from onmt_train's report lines."""
  return [(int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)))
          for m in PEER_STEP.finditer(text)]


def train_peer(args, settings, hp, buckets, data_dir, paths, work, steps):
  """Sets up OpenNMT-py and trains it `steps` steps on our pieces -> (a context for
  peer_translate, the peer_* training figures)."""
  venv = args.peer_venv
  peer_setup(venv)
  peer_dir = os.path.join(work, "peer")
  if os.path.exists(peer_dir):
    shutil.rmtree(peer_dir)
  os.makedirs(peer_dir)
  manifest = json.load(open(os.path.join(data_dir, "manifest.json"), encoding="utf-8"))
  src_model = os.path.join(data_dir, manifest["vocab"]["source"]["model"])
  write_pieces(src_model, paths["train_src"], os.path.join(peer_dir, "train.src"))
  tgt_model = os.path.join(data_dir, manifest["vocab"]["target"]["model"])
  write_pieces(tgt_model, paths["train_tgt"], os.path.join(peer_dir, "train.tgt"))
  write_pieces(src_model, paths["dev_src"], os.path.join(peer_dir, "valid.src"))
  write_pieces(tgt_model, paths["dev_tgt"], os.path.join(peer_dir, "valid.tgt"))
  ctx = {"dir": peer_dir, "tgt_model": tgt_model, "buckets": buckets,
         "bin": os.path.join(venv, "bin"),
         "checkpoint": os.path.join(peer_dir, f"model_step_{steps}.pt"),
         "env": dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"),
         "lines": write_pieces(src_model, paths["test_src"], os.path.join(peer_dir, "test.src"),
                               settings["test_lines"])}
  report_every = max(1, min(50, steps // 6))
  config = os.path.join(peer_dir, "config.yaml")
  write_yaml(peer_config(hp, buckets, peer_dir, steps, report_every), config)
  run_onmt(ctx, "onmt_build_vocab", ["-config", config, "-n_sample", "-1"], "build_vocab.log")
  log(f"peer: training {steps} steps")
  text, wall, rss = run_onmt(ctx, "onmt_train", ["-config", config], "train.stdout.log")
  reports = parse_peer_train_log(text)
  # Windows between reports: target tokens/s of each (onmt resets its counters per report).
  rates = [r[2] for r in reports]
  out = {"peer_train_tokens_per_s": median(rates[1:] or rates),
         "peer_train_tokens_per_s_reports": rates, "peer_train_wall_s": wall,
         "peer_train_peak_rss_mb": rss}
  found = re.search(r"number of parameters: (\d+)", text)
  out["peer_trainable_parameters"] = int(found.group(1)) if found else None
  return ctx, out


def run_onmt(ctx, tool, extra, logname):
  """Runs an OpenNMT-py tool in the peer directory -> (its output, wall s, peak RSS MB)."""
  path = os.path.join(ctx["dir"], logname)
  with open(path, "w", encoding="utf-8") as f:
    code, wall, rss = run_measured([os.path.join(ctx["bin"], tool)] + extra, env=ctx["env"],
                                   stdout=f, stderr=subprocess.STDOUT, cwd=ctx["dir"])
  text = open(path, encoding="utf-8").read()
  if code != 0:
    raise RuntimeError(f"{tool} failed ({code}); last lines:\n" + "\n".join(
        text.splitlines()[-15:]))
  return text, wall, rss


def peer_translate(ctx, beam, batch_size, name):
  """One onmt_translate run over the test set -> (sentences/s of its translation loop,
  model loading excluded; the output path (pieces); peak RSS MB)."""
  hyp_path = os.path.join(ctx["dir"], f"test.{name}.pieces")
  text, wall, rss = run_onmt(ctx, "onmt_translate", [
      "-model", ctx["checkpoint"], "-src", os.path.join(ctx["dir"], "test.src"),
      "-output", hyp_path, "-beam_size", str(beam), "-batch_size", str(batch_size),
      "-batch_type", "sents", "-gpu", "-1", "-report_time", "-max_length",
      str(max(b[1] for b in ctx["buckets"]))], f"translate.{name}.log")
  found = PEER_AVG_MS.search(text)
  return (1000.0 / float(found.group(1)) if found else ctx["lines"] / wall), hyp_path, rss


def peer_output_figures(ctx, hyp_path, refs):
  """OpenNMT-py's output (pieces, one line per sentence) -> (sacreBLEU against refs, mean
  output pieces per sentence)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  tgt_spm = spm.SentencePieceProcessor(model_file=ctx["tgt_model"])
  pieces = [line.split() for line in _read_lines(hyp_path)]
  bleu = sacrebleu.corpus_bleu([tgt_spm.decode(p) for p in pieces], [refs]).score
  return bleu, sum(map(len, pieces)) / max(len(pieces), 1)


# --- decoding: ours and OpenNMT-py's in alternation ---------------------------------------

def decode_rounds(settings, model_dir, paths, work, peer_ctx):
  """Batched decoding of the test set in settings["decode_reps"] rounds; each round decodes
  greedy and beam with ours (a decode worker, one pass of each at our batch size and, with
  peer_ctx, one at PEER_MD_BATCH), then, with peer_ctx, with OpenNMT-py at both batch
  sizes. A figure is the median over rounds; a speedup compares the two toolkits at the
  same batch size, the median of the rounds' ratios, each measured within a minute, so that
  the machine's drift over a run (both toolkits' speeds moved by 20-40% between runs
  minutes apart) does not fall on one side (the speeds also move within a minute, so
  the rounds' ratios still scatter: 2.55-3.64 greedy in two runs of 2026-11-28). The
  first round also measures loading, first runs, interactive latency and BLEU -> the
  decode_* and peer_decode_* figures."""
  out, runs = {}, collections.defaultdict(list)
  batches = [(settings["batch_size"], "")]
  if peer_ctx and settings["batch_size"] != PEER_MD_BATCH:  # also as PEER.md measured it
    batches.append((PEER_MD_BATCH, PEER_MD_SUFFIX))
  for round_ in range(settings["decode_reps"]):
    decoded, rss = run_worker("decode", {
        "train_dir": model_dir, "src": paths["test_src"], "ref": paths["test_tgt"],
        "lines": settings["test_lines"], "batch_size": settings["batch_size"],
        "other_batches": batches[1:], "beam": settings["beam"],
        "interactive_lines": settings["interactive_lines"] if round_ == 0 else 0}, work)
    out["decode_peak_rss_mb"] = max(out.get("decode_peak_rss_mb", 0), rss)
    for name in ("greedy", "beam"):
      for _, suffix in batches:
        key = f"decode_{name}_sent_per_s{suffix}"
        runs[key].append(decoded.pop(key))
    if round_ == 0:
      out.update(decoded)
    if peer_ctx:
      for name, beam in (("greedy", 1), ("beam", settings["beam"])):
        for batch_size, suffix in batches:
          rate, hyp_path, rss = peer_translate(peer_ctx, beam, batch_size, name + suffix)
          runs[f"peer_decode_{name}_sent_per_s{suffix}"].append(rate)
          out["peer_decode_peak_rss_mb"] = max(out.get("peer_decode_peak_rss_mb", 0), rss)
          if round_ == 0 and not suffix:
            (out[f"peer_bleu_{name}"], out[f"peer_decode_{name}_mean_output_pieces"]) = (
                peer_output_figures(peer_ctx, hyp_path,
                                    _read_lines(paths["test_tgt"], settings["test_lines"])))
    log(f"decoding round {round_ + 1}: " + ", ".join(
        f"{key.replace('_sent_per_s', '')} {values[-1]:.0f}" for key, values in runs.items()))
  for key, values in runs.items():
    out[key], out[key + "_runs"] = median(values), values
  if peer_ctx:
    for name, key in (("greedy", "peer_decode_speedup_greedy"), ("beam", "peer_decode_speedup")):
      for _, suffix in batches:
        ratios = round_ratios(runs[f"decode_{name}_sent_per_s{suffix}"],
                              runs[f"peer_decode_{name}_sent_per_s{suffix}"])
        out[key + suffix], out[key + suffix + "_runs"] = median(ratios), ratios
  return out


# --- the run ----------------------------------------------------------------------------

def _terminated(signum, _):
  raise SystemExit(128 + signum)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Numbers from a loaded machine are noisy: the table records the load average.")
  parser.add_argument("--quick", action="store_true",
                      help="few steps and a test subset; finishes in under 3 minutes")
  parser.add_argument("--peer", action="store_true",
                      help="also set up, train and decode OpenNMT-py 3.5.1 (see docs PEER.md)")
  parser.add_argument("--data", default=DEFAULT_DATA, help="Multi30k raw text directory")
  parser.add_argument("--src", default="en")
  parser.add_argument("--tgt", default="de")
  parser.add_argument("--work_dir", default=None,
                      help="scratch directory (prepared data, models); default: a temp dir")
  parser.add_argument("--keep_work_dir", action="store_true",
                      help="do not delete the scratch directory at the end")
  parser.add_argument("--json", default=os.path.join(REPO, "benchmark.json"),
                      help="where to write the results")
  parser.add_argument("--peer_venv", default=DEFAULT_PEER_VENV,
                      help="virtualenv for OpenNMT-py (created by scripts/peer/setup_peer.sh)")
  parser.add_argument("--buckets", default=recipe_buckets(),
                      help="buckets of the bucketed mode (default: the recipe's, from "
                      f"{os.path.relpath(RECIPE_PREPARE, REPO)})")
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--hparams", default="{}",
                      help="JSON of hyperparameter overrides (default: the reference model)")
  parser.add_argument("--beam", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=DECODE_BATCH_SIZE,
                      help="decoding batch size in sentences, for both toolkits (s2s-decode's "
                      "default)")
  for key, value in MODES["full"].items():
    parser.add_argument(f"--{key}", type=int, default=None,
                        help=f"(full {value}, quick {MODES['quick'][key]})")
  parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument("--worker_args", help=argparse.SUPPRESS)
  parser.add_argument("--worker_out", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  signal.signal(signal.SIGTERM, _terminated)
  if args.worker:
    result = WORKERS[args.worker](json.loads(args.worker_args))
    write_json(result, args.worker_out)
    return 0

  mode = "quick" if args.quick else "full"
  settings = {k: (getattr(args, k) if getattr(args, k) is not None else v)
              for k, v in MODES[mode].items()}
  settings.update(beam=args.beam, batch_size=args.batch_size, buckets=args.buckets)
  overrides = json.loads(args.hparams)
  paths = corpus_paths(args.data, args.src, args.tgt)
  for path in paths.values():
    if not os.path.isfile(path):
      print(f"error: {path}: no such file (see --data)", file=sys.stderr)
      return 2
  work = args.work_dir or tempfile.mkdtemp(prefix="s2s_benchmark_")
  os.makedirs(work, exist_ok=True)
  started = time.time()
  results = {
      "mode": mode, "settings": settings,
      "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
      "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
                  "python": platform.python_version(), "load_average": os.getloadavg()[0]},
  }
  try:
    log(f"{mode} mode, work dir {work}, load average {os.getloadavg()[0]:.2f}")
    bucketed_dir = os.path.join(work, "data_bucketed")
    padded_dir = os.path.join(work, "data_padded")
    results["prepare_s"], results["prepare_internal_s"] = run_prepare(
        paths, bucketed_dir, args.buckets, args.vocab_size)
    manifest = json.load(open(os.path.join(bucketed_dir, "manifest.json"), encoding="utf-8"))
    largest = manifest["buckets"][-1]
    single = f"{largest['source_length']},{largest['target_length']}"
    spm_models = [os.path.join(bucketed_dir, manifest["vocab"][side]["model"])
                  for side in ("source", "target")]
    results["prepare_padded_s"], _ = run_prepare(paths, padded_dir, single, args.vocab_size,
                                                 spm_models)
    log(f"prepare {results['prepare_s']:.1f}s (wall, incl. Python and imports)")

    quick_model = os.path.join(work, "model_from_speed_run")
    speed, _ = run_worker("speed", {
        "data_dirs": {"bucketed": bucketed_dir, "padded": padded_dir}, "overrides": overrides,
        "steps": settings["speed_steps"], "reps": settings["speed_reps"],
        "warmup_steps": settings["warmup_steps"],
        "save_dir": None if settings["steps"] else quick_model,
        "matmul": {"size": settings["matmul_size"], "reps": settings["matmul_reps"]}}, work)
    results["machine"]["tensorflow"] = speed.pop("tensorflow")
    results.update(speed)
    one_thread, _ = run_worker("matmul", {"size": settings["matmul_size"],
                                          "reps": settings["matmul_reps"], "threads": 1,
                                          "streams": results["machine"]["cores"]}, work)
    results["matmul_gflops_one_thread"] = one_thread["matmul_gflops"]
    results["matmul_gflops_streams"] = one_thread["matmul_gflops_streams"]
    log(f"matmul peak {results['matmul_gflops']:.1f} GFLOP/s; one thread "
        f"{results['matmul_gflops_one_thread']:.1f}, one per core side by side "
        f"{results['matmul_gflops_streams']:.1f}")
    results["bucket_speedup"] = ratio(results["train_tokens_per_s_bucketed"],
                                      results["train_tokens_per_s_padded"])
    results["flops_per_target_token"] = results["useful_flops_per_target_token_bucketed"]
    results["achieved_gflops"] = (results["train_tokens_per_s_bucketed"] *
                                  results["flops_per_target_token"] / 1e9)
    results["mfu"] = results["achieved_gflops"] / results["matmul_gflops"]
    # hardware utilisation: FLOPs executed, padded positions included; and the bucket
    # speedup that the executed FLOPs alone would give (at equal FLOP rates)
    results["bucket_speedup_flop_bound"] = ratio(
        results["executed_flops_per_target_token_padded"],
        results["executed_flops_per_target_token_bucketed"])
    for mode in ("bucketed", "padded"):
      results[f"mfu_executed_{mode}"] = (results[f"train_tokens_per_s_{mode}"] *
                                         results[f"executed_flops_per_target_token_{mode}"] /
                                         1e9 / results["matmul_gflops"])
    log(f"training {results['train_tokens_per_s_bucketed']:.0f} vs "
        f"{results['train_tokens_per_s_padded']:.0f} tok/s: bucket speedup "
        f"{results['bucket_speedup']:.2f}, mfu {results['mfu']:.3f}")

    if settings["steps"]:
      # The real trainer for --steps steps: its peak RSS, and the model decoding uses.
      model_dir = os.path.join(work, "train")
      if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
      trained, rss = run_worker("train", {"data_dir": bucketed_dir, "train_dir": model_dir,
                                          "overrides": overrides, "steps": settings["steps"]},
                                work)
      results.update(trained)
      results["train_peak_rss_mb"] = rss
      results["train_peak_rss_source"] = "trainer.train subprocess"
      results["model_steps"] = settings["steps"]
    else:
      # --quick: no separate trainer run; RSS of the speed worker before the padded graph.
      model_dir = quick_model
      results["train_peak_rss_mb"] = results["bucketed_peak_rss_mb"]
      results["train_peak_rss_source"] = "speed worker, bucketed graph only"
      results["model_steps"] = results["saved_model_steps"]

    peer_ctx = None
    if args.peer:
      peer_ctx, trained = train_peer(args, settings, results["hparams"], results["buckets"],
                                     bucketed_dir, paths, work, results["model_steps"])
      results.update(trained)
      results["peer_train_speedup"] = ratio(results.get("train_tokens_per_s_bucketed"),
                                            results["peer_train_tokens_per_s"])
      results["peer_train_speedup_trainer"] = ratio(results.get("trainer_tokens_per_s"),
                                                    results["peer_train_tokens_per_s"])
    results.update(decode_rounds(settings, model_dir, paths, work, peer_ctx))
    # decoding's peak: the better of one matmul on every core and one per core side by side
    peak = max(results["matmul_gflops"], results["matmul_gflops_streams"])
    for name in ("greedy", "beam"):
      # the worker's GFLOP/s is of the first round; scaled to the median round
      gflops = (results[f"decode_{name}_gflops"] * results[f"decode_{name}_sent_per_s"] /
                results[f"decode_{name}_sent_per_s_runs"][0])
      results[f"decode_{name}_gflops"] = gflops
    # beam search's sentences/s if its matmul FLOPs all ran at that peak (greedy's
    # model FLOPs count the whole projection, of which its screened argmax runs a
    # part, see seq2seq_buckets/screening.py: no such bound for it)
    results["decode_beam_sent_per_s_at_peak"] = (
        results["decode_beam_sent_per_s"] * peak / results["decode_beam_gflops"])
    if args.peer:
      results["peer_decode_speedup_at_peak"] = ratio(results["decode_beam_sent_per_s_at_peak"],
                                                     results["peer_decode_beam_sent_per_s"])
    results["graph_build_s"] = (results["train_graph_build_s"] + results["init_s"] +
                                results["inference_graph_build_s"])
  finally:
    results["benchmark_wall_s"] = time.time() - started
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    write_json(results, args.json)
    if not args.work_dir and not args.keep_work_dir:
      shutil.rmtree(work, ignore_errors=True)
  log(f"wrote {args.json} ({results['benchmark_wall_s']:.0f}s)")
  print(markdown_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
