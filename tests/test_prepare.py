"""prepare and the real s2s-prepare CLI: counts, shards, vocabularies, reuse and every bad input."""

import json
import os
import shutil
import struct
import subprocess

import pytest
import sentencepiece as spm

from seq2seq_buckets import buckets as bucket_lib
from seq2seq_buckets import manifest as manifest_lib
from seq2seq_buckets import prepare as prepare_lib
from seq2seq_buckets.errors import UserError
from seq2seq_buckets.prepare import prepare

CLI = shutil.which("s2s-prepare")
QUIET = {"log": lambda *_: None}
TINY = {"src_vocab_size": 40, "tgt_vocab_size": 40}


def write_lines(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  return str(path)


def read_lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def run_cli(*flags):
  assert CLI, "s2s-prepare is not installed (pip install -e .)"
  return subprocess.run([CLI, *flags], capture_output=True, text=True, timeout=300, check=False)


def corpus_flags(paths, out_dir, **extra):
  flags = {**paths, "out_dir": out_dir, **extra}
  return [f"--{k}={v}" for k, v in flags.items()]


def assert_user_error(proc, out_dir, *fragments):
  """Exit 2, one `error:` line naming `fragments`, no traceback, no manifest, nothing of ours."""
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2, proc.stderr
  assert len(errors) == 1, proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  for fragment in fragments:
    assert fragment in errors[0]
  assert not os.path.exists(os.path.join(out_dir, manifest_lib.MANIFEST))
  assert not os.path.isdir(out_dir) or os.listdir(out_dir) == []


def read_records(path):
  """(source ids, target ids) of every record of a TFRecord shard, read without TensorFlow."""
  with open(path, "rb") as f:
    data = f.read()
  records, at = [], 0
  while at < len(data):
    (length,) = struct.unpack_from("<Q", data, at)
    values = struct.unpack_from(f"<{length // 4}i", data, at + 12)
    s, t = values[0], values[1]
    records.append((list(values[2:2 + s]), list(values[2 + s:2 + s + t])))
    at += 16 + length
  return records


def check_shards(out_dir, manifest, split_counts):
  """Every record sits in the smallest bucket it fits and the counts add up; returns the records."""
  buckets = [(b["source_length"], b["target_length"]) for b in manifest["buckets"]]
  found = []
  for b, stat in enumerate(split_counts["buckets"]):
    records = [r for shard in stat["shards"] for r in read_records(os.path.join(out_dir, shard))]
    assert len(records) == stat["pairs"]
    assert sum(len(s) for s, _ in records) == stat["source_tokens"]
    assert sum(len(t) + 1 for _, t in records) == stat["target_tokens"]
    for s, t in records:
      assert bucket_lib.bucket_index(len(s), len(t), buckets) == b
    found += records
  return found


@pytest.fixture
def messy_corpus(copy_corpus, tmp_path):
  """The copy corpus (first 300 pairs) with 12 empty pairs and 4 too long for '6,7;30,31'."""
  src, tgt = read_lines(copy_corpus["train_src"])[:300], read_lines(copy_corpus["train_tgt"])[:300]
  long_line = " ".join(["ab", "cd", "ef"] * 20)  # 60 words: at least 60 pieces
  extra = ([("", "ab cd")] * 5 + [("ab cd", "")] * 3 + [("", "")] * 2 + [("  ", "ab")] * 2 +
           [(long_line, "ab"), ("ab", long_line), (long_line, long_line), (long_line, "")])
  for i, (s, t) in enumerate(extra):
    src.insert(20 * i + 7, s)
    tgt.insert(20 * i + 7, t)
  return {"train_src": write_lines(tmp_path / "train.src", src),
          "train_tgt": write_lines(tmp_path / "train.tgt", tgt),
          "dev_src": write_lines(tmp_path / "dev.src", src[:40] + [long_line]),
          "dev_tgt": write_lines(tmp_path / "dev.tgt", tgt[:40] + ["ab"])}


def test_manifest_reconciles_and_counts_drops(messy_corpus, tmp_path):
  out = str(tmp_path / "out")
  manifest = prepare(**messy_corpus, out_dir=out, buckets="6,7;30,31", **TINY, **QUIET)
  # (long_line, "") counts as empty: a pair with an empty side is never bucketed
  assert manifest["dropped"] == {"empty_line": 13, "too_long": 3}
  assert manifest["read"] == 316 and manifest["written"] == 300
  assert manifest["dev"]["read"] == 41 and manifest["dev"]["dropped"]["too_long"] == 1
  for split in (manifest, manifest["dev"]):
    assert split["read"] == split["written"] + sum(split["dropped"].values())
    assert split["written"] == sum(b["pairs"] for b in split["buckets"])
  assert manifest_lib.read_manifest(out) == manifest
  records = check_shards(out, manifest, manifest)
  src_spm = spm.SentencePieceProcessor(model_file=os.path.join(out, "source.spm.model"))
  tgt_spm = spm.SentencePieceProcessor(model_file=os.path.join(out, "target.spm.model"))
  want = [(src_spm.encode(s), tgt_spm.encode(t)) for s, t in
          zip(read_lines(messy_corpus["train_src"]), read_lines(messy_corpus["train_tgt"]))]
  want = [(s, t) for s, t in want if s and t and len(s) <= 30 and len(t) < 31]
  assert sorted(records) == sorted(want)
  check_shards(out, manifest, manifest["dev"])
  assert read_lines(os.path.join(out, prepare_lib.DEV_REF)) == \
      read_lines(messy_corpus["dev_tgt"])
  assert all(b["pairs"] > 0 for b in manifest["buckets"])
  shard_files = [f for split in (manifest, manifest["dev"]) for b in split["buckets"]
                 for f in b["shards"]]
  assert sorted(os.listdir(out)) == sorted(
      ["manifest.json", "dev.src.txt", "dev.ref.txt", "source.spm.model", "source.spm.vocab",
       "target.spm.model", "target.spm.vocab"] + shard_files)


def test_truncate_counts_and_cuts(messy_corpus, tmp_path):
  out = str(tmp_path / "out")
  manifest = prepare(**messy_corpus, out_dir=out, buckets="6,7;30,31", truncate=True,
                     **TINY, **QUIET)
  assert manifest["dropped"] == {"empty_line": 13, "too_long": 0}
  assert manifest["truncated"] == 3 and manifest["written"] == 303
  dev = manifest["dev"]
  assert dev["truncated"] == 1 and dev["written"] == dev["read"] - dev["dropped"]["empty_line"]
  records = check_shards(out, manifest, manifest)
  assert sum(1 for s, t in records if len(s) == 30 or len(t) == 30) == 3


def test_vocab_larger_than_the_corpus_is_recorded(copy_corpus, tmp_path):
  logged = []
  manifest = prepare(**copy_corpus, out_dir=str(tmp_path), buckets="auto:2",
                     src_vocab_size=2000, tgt_vocab_size=40, log=logged.append)
  source = manifest["vocab"]["source"]
  assert source["requested"] == 2000 and 40 < source["size"] < 2000
  target = manifest["vocab"]["target"]
  assert (target["size"], target["requested"]) == (40, 40)
  assert any(f"{source['size']} pieces (asked for 2000" in line for line in logged)


def test_shared_vocab(copy_corpus, tmp_path):
  manifest = prepare(**copy_corpus, out_dir=str(tmp_path), shared_vocab=True,
                     src_vocab_size=30, tgt_vocab_size=45, **QUIET)
  vocab = manifest["vocab"]
  assert vocab["shared"] and vocab["source"] == vocab["target"]
  assert vocab["source"]["model"] == "shared.spm.model" and vocab["source"]["requested"] == 45
  assert not os.path.exists(tmp_path / "source.spm.model")


def model_type(path):
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)


def test_bpe_models(copy_corpus, tmp_path):
  manifest = prepare(**copy_corpus, out_dir=str(tmp_path), spm_model_type="bpe", **TINY, **QUIET)
  assert manifest["settings"]["spm_model_type"] == "bpe"
  assert model_type(tmp_path / "source.spm.model") == "BPE"
  assert model_type(tmp_path / "target.spm.model") == "BPE"


def test_given_models_are_used(copy_corpus, prepared_copy, tmp_path):
  given = [os.path.join(prepared_copy, f"{side}.spm.model") for side in ("source", "target")]
  logged = []
  manifest = prepare(**copy_corpus, out_dir=str(tmp_path), src_spm_model=given[0],
                     tgt_spm_model=given[1], log=logged.append)
  for side, path in zip(("source", "target"), given):
    assert manifest["vocab"][side]["sha256"] == manifest_lib.sha256_file(path)
    assert manifest["vocab"][side]["requested"] is None
  assert manifest["settings"]["src_spm_model"] == manifest_lib.sha256_file(given[0])
  assert not any("trained SentencePiece" in line for line in logged)


def test_rerun_reuses_and_refuses_other_settings(copy_corpus, tmp_path):
  out = str(tmp_path / "out")
  first = prepare(**copy_corpus, out_dir=out, buckets="auto:2", **TINY, **QUIET)
  stamp = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
  logged = []
  assert prepare(**copy_corpus, out_dir=out, buckets="auto:2", **TINY, log=logged.append) == first
  assert "reusing" in logged[0]
  assert os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == stamp
  with pytest.raises(UserError, match="--overwrite"):
    prepare(**copy_corpus, out_dir=out, buckets="auto:3", **TINY, **QUIET)
  assert manifest_lib.read_manifest(out) == first  # refused: untouched
  third = prepare(**copy_corpus, out_dir=out, buckets="auto:3", overwrite=True, **TINY, **QUIET)
  assert len(third["buckets"]) == 3 and not any("-b3-" in n for n in os.listdir(out))
  assert manifest_lib.read_manifest(out) == third


def test_changed_input_is_refused_and_damaged_manifest_overwritten(copy_corpus, tmp_path):
  out = str(tmp_path / "out")
  paths = {k: shutil.copy(v, tmp_path / os.path.basename(v)) for k, v in copy_corpus.items()}
  prepare(**paths, out_dir=out, buckets="auto:2", **TINY, **QUIET)
  with open(paths["dev_tgt"], "a", encoding="utf-8") as f:
    f.write("ab\n")
  with open(paths["dev_src"], "a", encoding="utf-8") as f:
    f.write("ab\n")
  with pytest.raises(UserError, match="other inputs"):
    prepare(**paths, out_dir=out, buckets="auto:2", **TINY, **QUIET)
  with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="damaged"):
    prepare(**paths, out_dir=out, buckets="auto:2", **TINY, **QUIET)
  manifest = prepare(**paths, out_dir=out, buckets="auto:2", overwrite=True, **TINY, **QUIET)
  assert manifest["dev"]["read"] == 101


@pytest.mark.parametrize("content, line", [
    (b"ok\nok\n\xff\n", 3),
    (b"ok\n" + b"x" * (1 << 20) + b"\n\xc3\n", 3),                     # past the first MiB
    (b"a" * ((1 << 20) - 1) + b"\xc3\xa9\nok\n" + b"\xe2\x82\n", 3),   # char split by the MiB
    (b"ok\nok\xe2\x82", 2),                                             # cut at the end
])
def test_scan_names_the_invalid_utf8_line(tmp_path, content, line):
  path = tmp_path / "bad.txt"
  path.write_bytes(content)
  with pytest.raises(UserError, match=f"^{path}:{line}: invalid UTF-8"):
    prepare_lib.scan_text_file(str(path))


@pytest.mark.parametrize("content, lines, has_text", [
    (b"", 0, False), (b"\n \n", 2, False), (b"a\nb", 2, True), (b"a\r\nb\r\n", 2, True),
    (b"a" * ((1 << 20) - 1) + "é".encode() + b"\n", 1, True),
])
def test_scan_counts_lines(tmp_path, content, lines, has_text):
  path = tmp_path / "ok.txt"
  path.write_bytes(content)
  assert prepare_lib.scan_text_file(str(path))[1:] == (lines, has_text)


def test_cli_on_a_tiny_corpus_with_a_flagfile(copy_corpus, tmp_path):
  out = str(tmp_path / "out")
  flagfile = write_lines(tmp_path / "flags", corpus_flags(
      copy_corpus, out, buckets="auto:3", src_vocab_size=40, tgt_vocab_size=40))
  proc = run_cli(f"--flagfile={flagfile}")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "auto:3 buckets" in proc.stderr and f"prepared {out} in" in proc.stderr
  manifest = manifest_lib.read_manifest(out)
  assert manifest["read"] == 2000 and len(manifest["buckets"]) == 3
  assert manifest["padding_efficiency"] >= manifest["single_bucket_padding_efficiency"]
  rerun = run_cli(f"--flagfile={flagfile}", "--buckets=auto:2")
  assert rerun.returncode == 2 and "--overwrite" in rerun.stderr.splitlines()[-1]
  assert "Traceback" not in rerun.stderr
  assert manifest_lib.read_manifest(out) == manifest


@pytest.mark.parametrize("options, message", [
    ({"spm_model_type": "char"}, "unigram or bpe"),
    ({"src_vocab_size": 4}, "--src_vocab_size=4 is too small"),
    ({"tgt_vocab_size": -1}, "--tgt_vocab_size=-1 is too small"),
    ({"buckets": "auto:0"}, "auto:N"),
])
def test_bad_options_fail_before_writing(copy_corpus, tmp_path, options, message):
  out = tmp_path / "out"
  with pytest.raises(UserError, match=message):
    prepare(**copy_corpus, out_dir=out, **{**TINY, **options}, **QUIET)
  assert not out.exists()


def test_out_dir_that_is_a_file(copy_corpus, tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="cannot create the output directory"):
    prepare(**copy_corpus, out_dir=tmp_path / "file", **TINY, **QUIET)


def bad_id_model(tmp_path, corpus):
  """A SentencePiece model with SentencePiece's default ids (unk=0, no pad)."""
  prefix = str(tmp_path / "default_ids")
  spm.SentencePieceTrainer.train(input=corpus["train_src"], model_prefix=prefix, vocab_size=40,
                                 minloglevel=2)
  return prefix + ".model"


@pytest.mark.parametrize("case", [
    "missing_file", "line_counts", "invalid_utf8", "empty_corpus", "blank_corpus",
    "malformed_spec", "decreasing_spec", "vocab_too_small", "wrong_special_ids",
    "missing_model", "shared_with_two_models", "nothing_fits"])
def test_cli_bad_input(case, copy_corpus, tmp_path):
  paths, extra = dict(copy_corpus), {"src_vocab_size": 40, "tgt_vocab_size": 40}
  train = read_lines(copy_corpus["train_src"])
  if case == "missing_file":
    paths["dev_tgt"] = str(tmp_path / "nope.txt")
    want = [f"{paths['dev_tgt']}: no such file"]
  elif case == "line_counts":
    paths["train_tgt"] = write_lines(tmp_path / "short.tgt", train[:-1])
    want = [paths["train_src"], paths["train_tgt"], "2000 lines", "1999"]
  elif case == "invalid_utf8":
    paths["train_tgt"] = str(tmp_path / "bad.tgt")
    with open(paths["train_tgt"], "wb") as f:
      f.write("\n".join(train[:41] + ["caf\xe9"]).encode("latin-1") + b"\n")
      f.write(("\n".join(train[42:]) + "\n").encode())
    want = [f"{paths['train_tgt']}:42: invalid UTF-8"]
  elif case == "empty_corpus":
    paths["train_src"] = paths["train_tgt"] = write_lines(tmp_path / "empty", [])
    want = [paths["train_src"], "empty corpus"]
  elif case == "blank_corpus":
    paths["dev_src"] = paths["dev_tgt"] = write_lines(tmp_path / "blank", ["", " "] * 50)
    want = [paths["dev_src"], "empty corpus"]
  elif case == "malformed_spec":
    extra["buckets"] = "10,15;20"
    want = ["malformed bucket spec '10,15;20'"]
  elif case == "decreasing_spec":
    extra["buckets"] = "10,15;20,12"
    want = ["increase", "(10,15) then (20,12)"]
  elif case == "vocab_too_small":
    extra["tgt_vocab_size"] = 12
    want = ["vocab size 12 is too small", paths["train_tgt"], "need at least"]
  elif case == "wrong_special_ids":
    extra["src_spm_model"] = bad_id_model(tmp_path, copy_corpus)
    want = [extra["src_spm_model"], "special ids"]
  elif case == "missing_model":
    extra["tgt_spm_model"] = str(tmp_path / "none.model")
    want = [extra["tgt_spm_model"], "not found"]
  elif case == "shared_with_two_models":
    extra.update(shared_vocab=True, tgt_spm_model=bad_id_model(tmp_path, copy_corpus))
    want = ["--shared_vocab"]
  else:
    extra["buckets"] = "1,2"  # every line has two words or more
    want = ["no pair fits the buckets 1,2", paths["train_src"]]
  out = str(tmp_path / "out")
  assert_user_error(run_cli(*corpus_flags(paths, out, **extra)), out, *want)


def test_cli_on_multi30k(multi30k, tmp_path):
  out = str(tmp_path / "m30k")
  paths = {"train_src": "train.en", "train_tgt": "train.de", "dev_src": "val.en",
           "dev_tgt": "val.de"}
  proc = run_cli(*corpus_flags({k: os.path.join(multi30k, v) for k, v in paths.items()}, out,
                               buckets="auto:4", src_vocab_size=8000, tgt_vocab_size=8000))
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["read"] == manifest["written"] == 29000
  assert manifest["dev"]["read"] == 1014
  assert len(manifest["buckets"]) == 4
  assert manifest["padding_efficiency"] >= 0.75
  assert manifest["single_bucket_padding_efficiency"] < 0.35
  for side in ("source", "target"):
    assert manifest["vocab"][side]["requested"] == 8000
    assert 7500 < manifest["vocab"][side]["size"] <= 8000
