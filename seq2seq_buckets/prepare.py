"""prepare: SentencePiece models, bucketing, per-bucket shards and the manifest.

`prepare(...)` streams the corpus in chunks, so memory stays bounded whatever its
size; with 'auto:N' buckets it makes two encoding passes (lengths, then shards).
"""

import codecs
import hashlib
import glob
import os
import shutil
import time

from seq2seq_buckets import buckets as bucket_lib
from seq2seq_buckets import manifest as manifest_lib
from seq2seq_buckets import vocab
from seq2seq_buckets.errors import UserError

CHUNK_PAIRS = 20_000
SRC_SPM, TGT_SPM, SHARED_SPM = "source.spm", "target.spm", "shared.spm"
DEV_SRC, DEV_REF = "dev.src.txt", "dev.ref.txt"


def scan_text_file(path):
  """(sha256, line count) of a UTF-8 text file; UserError naming file:line if it is not UTF-8."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  decoder = codecs.getincrementaldecoder("utf-8")()
  digest = hashlib.sha256()
  lines, last = 0, b""
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
      try:
        decoder.decode(chunk)
      except UnicodeDecodeError as e:
        bad_line = lines + chunk[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{bad_line}: invalid UTF-8") from None
      lines += chunk.count(b"\n")
      last = chunk[-1:]
  try:
    decoder.decode(b"", final=True)
  except UnicodeDecodeError:
    raise UserError(f"{path}:{lines + 1}: invalid UTF-8 (truncated character at end)") from None
  if last and last != b"\n":
    lines += 1
  return digest.hexdigest(), lines


def read_pair_chunks(src_path, tgt_path):
  """Yields lists of (source line, target line) of up to CHUNK_PAIRS pairs, newlines removed."""
  with open(src_path, encoding="utf-8", newline="\n") as src, \
       open(tgt_path, encoding="utf-8", newline="\n") as tgt:
    chunk = []
    for s, t in zip(src, tgt):
      chunk.append((s.rstrip("\r\n"), t.rstrip("\r\n")))
      if len(chunk) == CHUNK_PAIRS:
        yield chunk
        chunk = []
    if chunk:
      yield chunk


def encode_chunks(src_path, tgt_path, src_spm, tgt_spm):
  """Yields lists of (source ids or None, target ids or None); None marks an empty line."""
  threads = os.cpu_count() or 1
  for chunk in read_pair_chunks(src_path, tgt_path):
    keep = [i for i, (s, t) in enumerate(chunk) if s.strip() and t.strip()]
    src_ids = src_spm.encode([chunk[i][0] for i in keep], num_threads=threads)
    tgt_ids = tgt_spm.encode([chunk[i][1] for i in keep], num_threads=threads)
    pairs = [(None, None)] * len(chunk)
    for i, s, t in zip(keep, src_ids, tgt_ids):
      pairs[i] = (s, t)
    yield pairs


def _check_inputs(paths):
  """Scans every input; returns {name: {path, sha256, lines}} or raises UserError."""
  info = {}
  for name, path in paths.items():
    sha, lines = scan_text_file(path)
    info[name] = {"path": os.path.abspath(path), "sha256": sha, "lines": lines}
  for split in ("train", "dev"):
    s, t = info[f"{split}_src"], info[f"{split}_tgt"]
    if s["lines"] != t["lines"]:
      raise UserError(f"{s['path']} has {s['lines']} lines but {t['path']} has {t['lines']}: "
                      "source and target must be parallel")
    if s["lines"] == 0:
      raise UserError(f"{s['path']}: empty corpus")
  return info


def _our_files(out_dir):
  names = [manifest_lib.MANIFEST, DEV_SRC, DEV_REF]
  names += [p + ext for p in (SRC_SPM, TGT_SPM, SHARED_SPM) for ext in (".model", ".vocab")]
  found = [os.path.join(out_dir, n) for n in names]
  found += glob.glob(os.path.join(out_dir, "*.tfrecord*"))
  return [p for p in found if os.path.exists(p)]


def _build_vocabs(out_dir, train_src, train_tgt, settings, src_model, tgt_model, log):
  """Trains (or copies given) SentencePiece models into out_dir; returns (src, tgt, info)."""
  def place(given, prefix, inputs, size):
    target = os.path.join(out_dir, prefix + ".model")
    if given:
      vocab.load_spm(given)  # checks special ids before copying
      shutil.copyfile(given, target)
      return vocab.load_spm(target)
    start = time.time()
    model = vocab.train_spm(inputs, os.path.join(out_dir, prefix), size, settings["spm_model_type"])
    reached = model.get_piece_size()
    note = "" if reached == size else f" (asked for {size}; the corpus yields no more)"
    log(f"trained SentencePiece {prefix}: {reached} pieces{note} in {time.time() - start:.1f}s")
    return model

  if settings["shared_vocab"]:
    size = max(settings["src_vocab_size"], settings["tgt_vocab_size"])
    src = tgt = place(src_model, SHARED_SPM, [train_src, train_tgt], size)
    names = (SHARED_SPM, SHARED_SPM)
  else:
    src = place(src_model, SRC_SPM, [train_src], settings["src_vocab_size"])
    tgt = place(tgt_model, TGT_SPM, [train_tgt], settings["tgt_vocab_size"])
    names = (SRC_SPM, TGT_SPM)
  info = {"shared": settings["shared_vocab"]}
  for side, model, name, asked in (("source", src, names[0], settings["src_vocab_size"]),
                                   ("target", tgt, names[1], settings["tgt_vocab_size"])):
    path = os.path.join(out_dir, name + ".model")
    info[side] = {"model": name + ".model", "sha256": manifest_lib.sha256_file(path),
                  "size": model.get_piece_size(), "requested": asked}
  return src, tgt, info


def _write_split(out_dir, split, src_path, tgt_path, src_spm, tgt_spm, buckets, truncate):
  """Encodes one split into per-bucket shards; returns its counts and length histogram."""
  from seq2seq_buckets import shards  # TensorFlow is only needed from here on
  writer = shards.ShardWriter(out_dir, split, len(buckets))
  stats = [{"source_length": i, "target_length": o, "pairs": 0, "source_tokens": 0,
            "target_tokens": 0} for i, o in buckets]
  dropped = {"empty_line": 0, "too_long": 0}
  read = truncated = 0
  histogram = bucket_lib.LengthHistogram()
  try:
    for chunk in encode_chunks(src_path, tgt_path, src_spm, tgt_spm):
      for src_ids, tgt_ids in chunk:
        read += 1
        if src_ids is None:
          dropped["empty_line"] += 1
          continue
        b = bucket_lib.bucket_index(len(src_ids), len(tgt_ids), buckets)
        if b is None:
          if not truncate:
            dropped["too_long"] += 1
            continue
          b = len(buckets) - 1
          s, t = bucket_lib.truncate_to(len(src_ids), len(tgt_ids), buckets[b])
          src_ids, tgt_ids = src_ids[:s], tgt_ids[:t]
          truncated += 1
        writer.write(b, src_ids, tgt_ids)
        histogram.add(len(src_ids), len(tgt_ids))
        stats[b]["pairs"] += 1
        stats[b]["source_tokens"] += len(src_ids)
        stats[b]["target_tokens"] += len(tgt_ids) + 1
  finally:
    writer.close()
  for stat, files in zip(stats, writer.files):
    stat["shards"] = files
  written = sum(s["pairs"] for s in stats)
  return {"buckets": stats, "read": read, "written": written, "dropped": dropped,
          "truncated": truncated}, histogram


def _length_histogram(src_path, tgt_path, src_spm, tgt_spm):
  histogram = bucket_lib.LengthHistogram()
  for chunk in encode_chunks(src_path, tgt_path, src_spm, tgt_spm):
    for src_ids, tgt_ids in chunk:
      if src_ids is not None:
        histogram.add(len(src_ids), len(tgt_ids))
  if not histogram.counts:
    raise UserError(f"{src_path}: empty corpus (every line pair has an empty side)")
  return histogram


def prepare(*, train_src, train_tgt, dev_src, dev_tgt, out_dir, buckets="auto:4",
            src_vocab_size=8000, tgt_vocab_size=8000, shared_vocab=False,
            spm_model_type="unigram", src_spm_model=None, tgt_spm_model=None,
            truncate=False, overwrite=False, log=print):
  """Prepares a parallel corpus for training into `out_dir`; returns the manifest dict."""
  start = time.time()
  spec = bucket_lib.parse_buckets(buckets)
  if spm_model_type not in ("unigram", "bpe"):
    raise UserError(f"--spm_model_type must be unigram or bpe, not {spm_model_type!r}")
  for name, size in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
    if size < 5:
      raise UserError(f"--{name}={size} is too small: the 4 special ids need room")
  inputs = _check_inputs({"train_src": train_src, "train_tgt": train_tgt,
                          "dev_src": dev_src, "dev_tgt": dev_tgt})
  settings = {"buckets": buckets, "src_vocab_size": src_vocab_size,
              "tgt_vocab_size": tgt_vocab_size, "shared_vocab": shared_vocab,
              "spm_model_type": spm_model_type, "truncate": truncate,
              "src_spm_model": src_spm_model and manifest_lib.sha256_file(src_spm_model),
              "tgt_spm_model": tgt_spm_model and manifest_lib.sha256_file(tgt_spm_model)}

  manifest_path = os.path.join(out_dir, manifest_lib.MANIFEST)
  if os.path.exists(manifest_path):
    old = manifest_lib.read_manifest(out_dir)
    same_inputs = {k: v["sha256"] for k, v in old["inputs"].items()} == \
                  {k: v["sha256"] for k, v in inputs.items()}
    if old["settings"] == settings and same_inputs:
      log(f"{out_dir} is already prepared from these inputs and settings; reusing it")
      return old
    if not overwrite:
      raise UserError(f"{out_dir} was prepared from other inputs or settings; "
                      "pass --overwrite to replace it")
  os.makedirs(out_dir, exist_ok=True)
  for path in _our_files(out_dir):
    os.remove(path)

  src_spm, tgt_spm, vocab_info = _build_vocabs(
      out_dir, train_src, train_tgt, settings, src_spm_model, tgt_spm_model, log)

  if spec[0] == "auto":
    histogram = _length_histogram(train_src, train_tgt, src_spm, tgt_spm)
    chosen = bucket_lib.choose_buckets(histogram, spec[1])
    single = bucket_lib.choose_buckets(histogram, 1)
    log(f"auto:{spec[1]} buckets {bucket_lib.format_buckets(chosen)}: padding efficiency "
        f"{bucket_lib.padding_efficiency(histogram, chosen):.3f} "
        f"(one bucket {bucket_lib.format_buckets(single)}: "
        f"{bucket_lib.padding_efficiency(histogram, single):.3f})")
    spec = chosen

  train, histogram = _write_split(out_dir, "train", train_src, train_tgt, src_spm, tgt_spm,
                                  spec, truncate)
  if train["written"] == 0:
    raise UserError(f"{train_src}: no pair fits the buckets {bucket_lib.format_buckets(spec)}")
  dev, _ = _write_split(out_dir, "dev", dev_src, dev_tgt, src_spm, tgt_spm, spec, truncate)
  shutil.copyfile(dev_src, os.path.join(out_dir, DEV_SRC))
  shutil.copyfile(dev_tgt, os.path.join(out_dir, DEV_REF))

  one_bucket = [(max(s for s, _ in histogram.counts), max(t for _, t in histogram.counts) + 1)]
  manifest = dict(train)
  manifest.update({
      "format": manifest_lib.FORMAT,
      "padding_efficiency": round(bucket_lib.padding_efficiency(histogram, spec), 4),
      "single_bucket_padding_efficiency":
          round(bucket_lib.padding_efficiency(histogram, one_bucket), 4),
      "dev": dev, "vocab": vocab_info, "inputs": inputs, "settings": settings})
  manifest_lib.write_manifest(out_dir, manifest)
  drops = ", ".join(f"{k} {v}" for k, v in train["dropped"].items() if v) or "none"
  log(f"prepared {out_dir} in {time.time() - start:.1f}s: train read {train['read']}, "
      f"written {train['written']}, dropped: {drops}, truncated {train['truncated']}; "
      f"dev written {dev['written']} of {dev['read']}; padding efficiency "
      f"{manifest['padding_efficiency']:.3f} (one bucket: "
      f"{manifest['single_bucket_padding_efficiency']:.3f})")
  return manifest
