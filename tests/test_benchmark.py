"""Smoke tests of scripts/benchmark.py: its CLI starts, and its writers format a given dict.

No timing is run or asserted here.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark.py")


def _load():
  spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


RESULTS = {
    "mode": "quick", "date": "2026-11-28 10:00", "model_steps": 30,
    "settings": {"buckets": "auto:6"},
    "machine": {"cpu_model": "AMD EPYC 7B13", "cores": 2, "memory_gib": 23.4,
                "tensorflow": "2.21.0", "python": "3.11.7", "load_average": 3.1},
    "matmul_gflops": 101.25, "prepare_s": 4.2, "graph_build_s": 12.5,
    "train_tokens_per_s_bucketed": 6000.0, "train_tokens_per_s_padded": 2000.0,
    "bucket_speedup": 3.0, "mfu": 0.42, "decode_greedy_sent_per_s": 812.3,
    "interactive_p50_ms": 9.87, "peer_train_speedup": 1.25, "train_peak_rss_mb": 1500.4,
    "decode_beam_sent_per_s": None,
}


def test_help_runs():
  done = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert "--quick" in done.stdout and "--peer" in done.stdout


def test_markdown_table_formats_a_given_dict():
  table = _load().markdown_table(RESULTS)
  lines = table.splitlines()
  assert lines[0].startswith("Benchmark (quick mode, 2026-11-28 10:00; model trained 30 steps): AMD EPYC 7B13")
  assert "2 cores" in lines[0] and "101.2 GFLOP/s" in lines[0] and "load average" in lines[0]
  assert "| figure | value | goal |" in lines
  assert any(line.startswith("Note: the machine was busy (load average up to 3.1") for line in lines)
  assert "| training, target tokens/s, auto:6 buckets | 6,000 |  |" in lines
  assert "| bucket speedup (bucketed / padded) | 3.00 | >= 2.5 (met) |" in lines
  assert "| mfu (achieved / measured matmul peak) | 0.420 | >= 0.5 (missed) |" in lines
  assert "| interactive greedy p50 / sentence, ms | 9.9 | <= 15 (met) |" in lines
  assert "| training speedup over OpenNMT-py | 1.25 | >= 1.5 (missed) |" in lines
  # absent and None figures are left out, not printed as zeros
  assert "beam 5, sentences/s" not in table


def test_write_json_round_trips(tmp_path):
  path = str(tmp_path / "benchmark.json")
  _load().write_json(RESULTS, path)
  with open(path, encoding="utf-8") as f:
    assert json.load(f) == RESULTS
  assert not os.path.exists(path + ".tmp")


def test_table_notes_outputs_of_unlike_length():
  benchmark = _load()
  like = dict(RESULTS, decode_greedy_mean_output_pieces=13.3,
              peer_decode_greedy_mean_output_pieces=12.9)
  assert "unlike work" not in benchmark.markdown_table(like)
  unlike = dict(like, peer_decode_greedy_mean_output_pieces=47.0)
  table = benchmark.markdown_table(unlike)
  assert ("Note: greedy outputs are 13.3 pieces per sentence for ours and 47.0 for "
          "OpenNMT-py's: the greedy speedups compare unlike work.") in table


def test_round_ratios_pair_each_round_with_its_own():
  benchmark = _load()
  assert benchmark.round_ratios([900.0, 1200.0, 600.0], [300.0, 400.0, 300.0]) == [3.0, 3.0, 2.0]
  with pytest.raises(ValueError):
    benchmark.round_ratios([1.0], [1.0, 2.0])


def test_decode_rounds_compare_the_toolkits_at_the_same_batch_size(monkeypatch):
  """Each round's speedup at a batch size is ours at that batch over OpenNMT-py's at it
  (the workers and OpenNMT-py stubbed with fixed rates; nothing is timed)."""
  benchmark = _load()
  ours = {"": (1000.0, 200.0), "_batch30": (800.0, 150.0)}  # suffix -> (greedy, beam)
  peer = {(1, 128): 250.0, (5, 128): 100.0, (1, 30): 200.0, (5, 30): 50.0}
  asked = []

  def run_worker(name, args, work):
    assert name == "decode"
    asked.append(args["other_batches"])
    suffixes = [""] + [suffix for _, suffix in args["other_batches"]]
    out = {f"decode_{mode}_sent_per_s{suffix}": ours[suffix][i]
           for suffix in suffixes for i, mode in enumerate(("greedy", "beam"))}
    return out, 100.0

  def peer_translate(ctx, beam, batch_size, name):
    return peer[(beam, batch_size)], "hyp", 50.0

  monkeypatch.setattr(benchmark, "run_worker", run_worker)
  monkeypatch.setattr(benchmark, "peer_translate", peer_translate)
  monkeypatch.setattr(benchmark, "peer_output_figures", lambda *args: (20.0, 12.0))
  monkeypatch.setattr(benchmark, "_read_lines", lambda *args: [])
  settings = {"batch_size": 128, "beam": 5, "decode_reps": 2, "test_lines": 0,
              "interactive_lines": 0}
  out = benchmark.decode_rounds(settings, "model", {"test_src": "s", "test_tgt": "t"}, "w",
                                {"dir": "peer"})
  assert asked == [[(30, "_batch30")]] * 2
  assert out["peer_decode_speedup_greedy"] == 4.0 and out["peer_decode_speedup"] == 2.0
  assert out["peer_decode_speedup_greedy_batch30"] == 4.0
  assert out["peer_decode_speedup_batch30"] == 3.0
  assert out["decode_greedy_sent_per_s_batch30_runs"] == [800.0, 800.0]
  without_peer = benchmark.decode_rounds(settings, "model", {"test_src": "s", "test_tgt": "t"},
                                         "w", None)
  assert asked[-1] == [] and "decode_greedy_sent_per_s_batch30" not in without_peer


def test_peer_log_parser_reads_onmt_report_lines():
  text = ("[2026-11-27 10:00:01,000 INFO] Step 50/ 4000; acc: 10.1; ppl: 900.2; xent: 6.8; "
          "lr: 0.00100; sents:    3200; bsz:   14/  16/64; 1234/1456 tok/s;     21 sec;\n"
          "[2026-11-27 10:00:20,000 INFO] Step 100/ 4000; acc: 20.0; ppl: 300.0; xent: 5.7; "
          "lr: 0.00100; sents:    3200; bsz:   14/  16/64; 1300/1500 tok/s;     40 sec;\n")
  assert _load().parse_peer_train_log(text) == [(50, 1234.0, 1456.0, 21.0),
                                                (100, 1300.0, 1500.0, 40.0)]


def test_flops_count_the_projection_only_where_asked():
  """The output projection (2 H V per projected position) is the only term that
  projected_len changes; by default every target position is projected."""
  bench = _load()
  hp = {"size": 8, "embedding_size": 8, "num_layers": 2, "tgt_vocab_size": 100,
        "bidirectional_encoder": True}
  full = bench.forward_flops(hp, 5, 7)
  assert bench.forward_flops(hp, 5, 7, projected_len=7) == full
  assert full - bench.forward_flops(hp, 5, 7, projected_len=3) == 4 * 2 * 8 * 100
  assert bench.training_flops(hp, 5, 7, 3) == 3 * bench.forward_flops(hp, 5, 7, 3)


def test_decoding_flops_count_one_encoder_and_beam_rows_of_decoder_steps():
  """Greedy: the encoder once and output + 1 decoder steps (EOS too); the first LSTM
  layers' multiplies by embedding rows (gathered) are not counted, encoder's (both
  directions) or decoder's. Beam k runs the first step on one row and the others on
  k rows, over the same single encoding."""
  bench = _load()
  hp = {"size": 8, "embedding_size": 6, "num_layers": 2, "tgt_vocab_size": 100,
        "bidirectional_encoder": True}
  embedding_rows = 2 * 6 * 4 * 8  # per position, both directions or the decoder's layer
  encoder = bench.forward_flops(hp, 5, 0) - 5 * embedding_rows
  greedy = bench.decoding_flops(hp, 5, 6)
  assert greedy == bench.forward_flops(hp, 5, 7) - (5 + 7) * embedding_rows
  step = (greedy - encoder) / 7
  assert bench.decoding_flops(hp, 5, 6, beam=4) - encoder == (1 + 4 * 6) * step
  assert bench.decoding_flops(dict(hp, bidirectional_encoder=False), 5, 6) == (
      bench.forward_flops(dict(hp, bidirectional_encoder=False), 5, 7) - 12 * embedding_rows)
  gru = dict(hp, cell="gru")
  assert bench.decoding_flops(gru, 5, 6) == bench.forward_flops(gru, 5, 7)
