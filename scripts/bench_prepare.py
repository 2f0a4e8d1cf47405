#!/usr/bin/env python3
"""Benchmark of s2s-prepare on Multi30k: wall time, encode+write speed, padding, 1M-pair memory.

  python scripts/bench_prepare.py [--quick] [--json=out.json] [--runs=3]

Measures, on ../shared/data/multi30k En->De with 8000 pieces a side:
  prepare_s                   wall seconds of a fresh `s2s-prepare --buckets=auto:4`
                              subprocess, process start included (best of --runs)
  encode_write_pairs_per_s    training pairs encoded, bucketed and written to shards per
                              second, in process with the trained models (best of --runs)
  auto4_padding_efficiency    and single_bucket_padding_efficiency, from the manifest
  prepare_1m_peak_rss_mb      peak RSS of s2s-prepare on 1M pairs (Multi30k repeated,
                              written under --work); skipped with --quick
The machine is shared, so every run's time is printed next to the load average.
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(REPO, "..", "shared", "data", "multi30k")
MB = 1024  # ru_maxrss is in KiB on Linux


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=MULTI30K, help="directory with train/val.{src,tgt}")
  parser.add_argument("--src", default="en")
  parser.add_argument("--tgt", default="de")
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--buckets", default="auto:4")
  parser.add_argument("--runs", type=int, default=3, help="repetitions of each timing")
  parser.add_argument("--pairs", type=int, default=1_000_000, help="size of the large run")
  parser.add_argument("--quick", action="store_true", help="skip the 1M-pair run")
  parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
  parser.add_argument("--json", default=None, help="write the results here ('-': stdout)")
  return parser.parse_args(argv)


def log(message):
  print(message, file=sys.stderr, flush=True)


def run_measured(cmd):
  """Runs cmd; returns (wall seconds, peak RSS MiB, stderr text). Raises if it fails."""
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as err:
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    text = err.read()
  if child.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{text}")
  return wall, usage.ru_maxrss / MB, text


def prepare_cmd(paths, out_dir, args):
  cli = shutil.which("s2s-prepare") or sys.exit("s2s-prepare is not installed (pip install -e .)")
  return [cli, *(f"--{k}={v}" for k, v in paths.items()), f"--out_dir={out_dir}",
          f"--buckets={args.buckets}", f"--src_vocab_size={args.vocab_size}",
          f"--tgt_vocab_size={args.vocab_size}"]


def time_prepare(paths, work, args):
  """Best wall time of fresh s2s-prepare runs; returns (seconds, all runs, out_dir)."""
  out_dir = os.path.join(work, "multi30k")
  runs = []
  for _ in range(args.runs):
    shutil.rmtree(out_dir, ignore_errors=True)
    wall, rss, _ = run_measured(prepare_cmd(paths, out_dir, args))
    runs.append(round(wall, 2))
    log(f"  s2s-prepare {wall:.2f}s wall, peak RSS {rss:.0f} MiB, "
        f"load average {os.getloadavg()[0]:.1f}")
  return min(runs), runs, out_dir


def time_encode_write(paths, data_dir, manifest, args):
  """Best training pairs per second of encode_split + write_split, with the trained models."""
  from seq2seq_buckets import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  from seq2seq_buckets import vocab  # pylint: disable=g-import-not-at-top
  models = [vocab.load_spm(os.path.join(data_dir, manifest["vocab"][side]["model"]))
            for side in ("source", "target")]
  buckets = [(b["source_length"], b["target_length"]) for b in manifest["buckets"]]
  scratch = tempfile.mkdtemp(dir=os.path.dirname(data_dir))
  best = 0.0
  try:
    for _ in range(args.runs):
      start, cpu = time.perf_counter(), time.process_time()
      spooled = prepare_lib.encode_split(scratch, "train", paths["train_src"],
                                         paths["train_tgt"], *models)
      counts, _ = prepare_lib.write_split(scratch, "train", spooled, buckets, truncate=False)
      wall, cpu = time.perf_counter() - start, time.process_time() - cpu
      log(f"  encode+write {counts['written']} pairs: {wall:.3f}s wall, {cpu:.3f}s CPU "
          f"({counts['written'] / wall:,.0f} pairs/s)")
      best = max(best, counts["written"] / wall)
  finally:
    shutil.rmtree(scratch)
  return best


def write_repeated(paths, work, pairs):
  """The first `pairs` lines of the training sides repeated; returns the new paths."""
  big = dict(paths)
  for side in ("train_src", "train_tgt"):
    with open(paths[side], encoding="utf-8") as f:
      lines = f.read().splitlines(keepends=True)
    big[side] = os.path.join(work, f"big.{side}")
    with open(big[side], "w", encoding="utf-8") as f:
      f.writelines(itertools.islice(itertools.cycle(lines), pairs))
  return big


def measure_large(paths, work, args):
  """(peak RSS MiB, wall seconds) of s2s-prepare on args.pairs repeated pairs."""
  big = write_repeated(paths, work, args.pairs)
  out_dir = os.path.join(work, "large")
  wall, rss, text = run_measured(prepare_cmd(big, out_dir, args))
  log(f"  s2s-prepare on {args.pairs:,} pairs: {wall:.1f}s wall, peak RSS {rss:.0f} MiB")
  log("    " + text.strip().splitlines()[-1])
  for side in ("train_src", "train_tgt"):
    os.remove(big[side])
  shutil.rmtree(out_dir)
  return rss, wall


def main(argv):
  args = parse_args(argv)
  paths = {"train_src": f"train.{args.src}", "train_tgt": f"train.{args.tgt}",
           "dev_src": f"val.{args.src}", "dev_tgt": f"val.{args.tgt}"}
  paths = {k: os.path.join(args.data, v) for k, v in paths.items()}
  work = args.work or tempfile.mkdtemp(prefix="bench_prepare_")
  os.makedirs(work, exist_ok=True)
  log(f"bench_prepare: {args.data} {args.src}->{args.tgt}, {args.vocab_size} pieces, "
      f"{args.buckets}, {os.cpu_count()} cores, work dir {work}")
  results = {"load_average_start": round(os.getloadavg()[0], 2)}
  try:
    results["prepare_s"], results["prepare_runs_s"], data_dir = time_prepare(paths, work, args)
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
    results["auto4_padding_efficiency"] = manifest["padding_efficiency"]
    results["single_bucket_padding_efficiency"] = manifest["single_bucket_padding_efficiency"]
    results["buckets"] = [[b["source_length"], b["target_length"]] for b in manifest["buckets"]]
    results["vocab_sizes"] = [manifest["vocab"][s]["size"] for s in ("source", "target")]
    results["encode_write_pairs_per_s"] = round(
        time_encode_write(paths, data_dir, manifest, args))
    results["prepare_1m_peak_rss_mb"] = results["prepare_1m_s"] = None
    if not args.quick:
      rss, wall = measure_large(paths, work, args)
      results["prepare_1m_peak_rss_mb"], results["prepare_1m_s"] = round(rss), round(wall, 1)
  finally:
    if not args.work:
      shutil.rmtree(work, ignore_errors=True)
  results["load_average_end"] = round(os.getloadavg()[0], 2)
  report(results)
  if args.json == "-":
    print(json.dumps(results, indent=1))
  elif args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


def report(r):
  print(f"prepare (whole s2s-prepare, best of {len(r['prepare_runs_s'])}): {r['prepare_s']:.2f} s"
        f"   runs {r['prepare_runs_s']}   target <= 6 s")
  print(f"encode+write: {r['encode_write_pairs_per_s']:,} pairs/s   target >= 100,000")
  print(f"padding efficiency: buckets {r['buckets']} {r['auto4_padding_efficiency']:.3f}, "
        f"one bucket {r['single_bucket_padding_efficiency']:.3f}   target >= 0.75")
  if r["prepare_1m_peak_rss_mb"] is not None:
    print(f"1M pairs: peak RSS {r['prepare_1m_peak_rss_mb']} MiB in {r['prepare_1m_s']} s"
          f"   target <= 1024 MiB")
  print(f"load average {r['load_average_start']} -> {r['load_average_end']} on "
        f"{os.cpu_count()} cores")


if __name__ == "__main__":
  main(sys.argv[1:])
