"""prepare: SentencePiece models, bucketing, per-bucket shards and the manifest.

`prepare(...)` streams the corpus in chunks of CHUNK_PAIRS pairs, so memory stays
bounded whatever its size. Each split is encoded once, its non-empty pairs
framed as TFRecords into a spool file while its length histogram is counted;
'auto:N' buckets are chosen from that histogram, then each spooled record is
copied to the shard of its bucket. TensorFlow is never imported.
"""

import codecs
import collections
import concurrent.futures
import glob
import hashlib
import itertools
import os
import shutil
import time

import numpy as np

from seq2seq_buckets import buckets as bucket_lib
from seq2seq_buckets import manifest as manifest_lib
from seq2seq_buckets import shards
from seq2seq_buckets import vocab
from seq2seq_buckets.errors import UserError

CHUNK_PAIRS = 10_000
SRC_SPM, TGT_SPM, SHARED_SPM = "source.spm", "target.spm", "shared.spm"
DEV_SRC, DEV_REF = "dev.src.txt", "dev.ref.txt"

# A split encoded into its spool: chunks written, pairs read, pairs dropped as
# empty, LengthHistogram of the non-empty pairs.
Spooled = collections.namedtuple("Spooled", ["chunks", "read", "empty", "histogram"])


def scan_text_file(path):
  """(sha256, line count, whether any line has text) of a UTF-8 text file.

  Raises UserError naming file:line if the file is missing or not UTF-8.
  """
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  decoder = codecs.getincrementaldecoder("utf-8")()
  digest = hashlib.sha256()
  lines, last, has_text = 0, b"", False
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
      pending = len(decoder.getstate()[0])
      try:
        decoder.decode(chunk)
      except UnicodeDecodeError as e:
        bad_line = lines + chunk[:max(0, e.start - pending)].count(b"\n") + 1
        raise UserError(f"{path}:{bad_line}: invalid UTF-8") from None
      lines += chunk.count(b"\n")
      has_text = has_text or bool(chunk.strip())
      last = chunk[-1:]
  try:
    decoder.decode(b"", final=True)
  except UnicodeDecodeError:
    raise UserError(f"{path}:{lines + 1}: invalid UTF-8 (truncated character at end)") from None
  if last and last != b"\n":
    lines += 1
  return digest.hexdigest(), lines, has_text


def read_pair_chunks(src_path, tgt_path):
  """Yields (source lines, target lines): lists of up to CHUNK_PAIRS lines, newlines removed.

  Lines are UTF-8 bytes (scan_text_file has checked them): SentencePiece takes
  them as they are, which spares decoding them here and encoding them again there.
  """
  with open(src_path, "rb") as src, open(tgt_path, "rb") as tgt:
    while True:
      src_lines = [line.rstrip(b"\r\n") for line in itertools.islice(src, CHUNK_PAIRS)]
      if not src_lines:
        return
      yield src_lines, [line.rstrip(b"\r\n") for line in itertools.islice(tgt, len(src_lines))]


def _flatten(id_lists):
  """(ids [total] int32, lengths [n] int64) of n lists of piece ids."""
  lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
  return np.fromiter(itertools.chain.from_iterable(id_lists), np.int32, lengths.sum()), lengths


def _take(part, rows, lengths):
  """(ids, lengths) of the first lengths[i] pieces of pair rows[i] of part = (ids, lengths)."""
  ids, all_lengths = part
  starts = np.cumsum(all_lengths) - all_lengths
  return ids[shards.segment_indices(starts[rows], lengths)], lengths


def encode_chunks(src_path, tgt_path, src_spm, tgt_spm):
  """Yields (source, target) per chunk, each (ids, lengths) as in _flatten.

  Every line is encoded; an empty line (or one with no pieces) has length 0.
  """
  threads = os.cpu_count() or 1
  for src_lines, tgt_lines in read_pair_chunks(src_path, tgt_path):
    yield (_flatten(src_spm.encode(src_lines, num_threads=threads)),
           _flatten(tgt_spm.encode(tgt_lines, num_threads=threads)))


def _ahead(iterator):
  """Yields the items of `iterator` while a thread already computes the next one.

  SentencePiece releases the GIL while it encodes, so the next chunk encodes
  while this one is framed and spooled.
  """
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(next, iterator, None)
    while (item := pending.result()) is not None:
      pending = pool.submit(next, iterator, None)
      yield item


def _spool_path(out_dir, split):
  return os.path.join(out_dir, f"{split}.spool.partial")


def encode_split(out_dir, split, src_path, tgt_path, src_spm, tgt_spm):
  """Encodes a split into its spool; returns its Spooled counts.

  The spool holds, per chunk, the non-empty pairs as framed TFRecords (which
  do not depend on the buckets) and their source and target lengths.
  """
  histogram = bucket_lib.LengthHistogram()
  chunks = read = empty = 0
  with open(_spool_path(out_dir, split), "wb") as spool:
    for source, target in _ahead(encode_chunks(src_path, tgt_path, src_spm, tgt_spm)):
      rows = np.flatnonzero((source[1] > 0) & (target[1] > 0))
      read += len(source[1])
      empty += len(source[1]) - len(rows)
      source, target = (_take(part, rows, part[1][rows]) for part in (source, target))
      for array in (shards.frame_records(*shards.pair_records(source, target)),
                    source[1], target[1]):
        np.save(spool, array)
      histogram.add(source[1], target[1])
      chunks += 1
  return Spooled(chunks, read, empty, histogram)


def _read_spool(out_dir, split, spooled):
  """Yields the (framed, source lengths, target lengths) chunks of a spool, then deletes it."""
  path = _spool_path(out_dir, split)
  with open(path, "rb") as spool:
    for _ in range(spooled.chunks):
      yield np.load(spool), np.load(spool), np.load(spool)
  os.remove(path)


def _truncated(framed, starts, s, t, bucket):
  """Framed records of pairs cut to fit `bucket`, read back from their framed records.

  framed, starts: the pairs' framed records and where each starts; s, t: [n]
  lengths. Returns (framed, cut s, cut t).
  """
  cut_s, cut_t = bucket_lib.truncate_to(s, t, bucket)
  first = starts + shards.HEADER_WORDS + 2  # past the length header and [s, t]
  source = framed[shards.segment_indices(first, cut_s)]
  target = framed[shards.segment_indices(first + s, cut_t)]
  records = shards.pair_records((source, cut_s), (target, cut_t))
  return shards.frame_records(*records), cut_s, cut_t


class _SplitCounts:
  """What write_split counts: pairs and tokens per bucket, drops, truncations, lengths."""

  def __init__(self, buckets, spooled):
    self.buckets = [{"source_length": i, "target_length": o, "pairs": 0, "source_tokens": 0,
                     "target_tokens": 0} for i, o in buckets]
    self.dropped = {"empty_line": spooled.empty, "too_long": 0}
    self.read, self.truncated = spooled.read, 0
    self.histogram = bucket_lib.LengthHistogram()

  def add(self, bucket_id, s, t):
    """Counts pairs written to a bucket; s, t: [n] lengths."""
    stat = self.buckets[bucket_id]
    stat["pairs"] += len(s)
    stat["source_tokens"] += int(s.sum())
    stat["target_tokens"] += int(t.sum()) + len(t)  # + EOS
    self.histogram.add(s, t)

  def summary(self, files):
    for stat, names in zip(self.buckets, files):
      stat["shards"] = names
    return {"buckets": self.buckets, "read": self.read,
            "written": sum(b["pairs"] for b in self.buckets), "dropped": self.dropped,
            "truncated": self.truncated}


def write_split(out_dir, split, spooled, buckets, truncate):
  """Sends each spooled pair to the shards of its bucket; returns (counts, written histogram).

  A pair that fits no bucket is dropped, or with `truncate` cut to the last one.
  """
  counts = _SplitCounts(buckets, spooled)
  writer = shards.ShardWriter(out_dir, split, len(buckets))
  try:
    for framed, s, t in _read_spool(out_dir, split, spooled):
      index = bucket_lib.bucket_indices(s, t, buckets)
      lengths = shards.framed_pair_lengths(s, t)
      starts = np.cumsum(lengths) - lengths
      for b in range(len(buckets)):
        rows = np.flatnonzero(index == b)
        if len(rows):
          writer.write(b, framed[shards.segment_indices(starts[rows], lengths[rows])],
                       lengths[rows])
          counts.add(b, s[rows], t[rows])
      rows = np.flatnonzero(index < 0)
      if truncate and len(rows):
        cut, cut_s, cut_t = _truncated(framed, starts[rows], s[rows], t[rows], buckets[-1])
        writer.write(len(buckets) - 1, cut, shards.framed_pair_lengths(cut_s, cut_t))
        counts.add(len(buckets) - 1, cut_s, cut_t)
        counts.truncated += len(rows)
      else:
        counts.dropped["too_long"] += len(rows)
  finally:
    writer.close()
  return counts.summary(writer.files), counts.histogram


def _check_inputs(paths):
  """Scans every input; returns {name: {path, sha256, lines, bytes}} or raises UserError."""
  info = {}
  for name, path in paths.items():
    sha, lines, has_text = scan_text_file(path)
    if not has_text:
      raise UserError(f"{path}: empty corpus (no line has text)")
    info[name] = {"path": os.path.abspath(path), "sha256": sha, "lines": lines,
                  "bytes": os.path.getsize(path)}
  for split in ("train", "dev"):
    s, t = info[f"{split}_src"], info[f"{split}_tgt"]
    if s["lines"] != t["lines"]:
      raise UserError(f"{s['path']} has {s['lines']} lines but {t['path']} has {t['lines']}: "
                      "source and target must be parallel")
  return info


def _our_files(out_dir):
  names = [manifest_lib.MANIFEST, DEV_SRC, DEV_REF]
  names += [p + ext for p in (SRC_SPM, TGT_SPM, SHARED_SPM) for ext in (".model", ".vocab")]
  found = [os.path.join(out_dir, n) for n in names]
  for pattern in ("*.tfrecord", "*.partial"):
    found += glob.glob(os.path.join(out_dir, pattern))
  return [p for p in found if os.path.exists(p)]


def _place_vocab(out_dir, prefix, given, inputs, size, model_type, threads, log):
  """Copies the given SentencePiece model (checked) or trains one; returns (model, info).

  inputs: the training files' info from _check_inputs.
  """
  target = os.path.join(out_dir, prefix + ".model")
  if given:
    shutil.copyfile(given, target)
    model, requested = vocab.load_spm(target), None
  else:
    start = time.time()
    sample = vocab.sample_lines(sum(i["bytes"] for i in inputs), sum(i["lines"] for i in inputs))
    model = vocab.train_spm([i["path"] for i in inputs], os.path.join(out_dir, prefix), size,
                            model_type, max_lines=sample, threads=threads)
    requested = size
    reached = model.get_piece_size()
    note = "" if reached == size else f" (asked for {size}; the corpus yields no more)"
    log(f"trained SentencePiece {prefix}: {reached} pieces{note} in {time.time() - start:.1f}s")
  return model, {"model": prefix + ".model", "sha256": manifest_lib.sha256_file(target),
                 "size": model.get_piece_size(), "requested": requested}


def _build_vocabs(out_dir, inputs, settings, src_model, tgt_model, log):
  """Trains (or copies given) SentencePiece models into out_dir; returns (src, tgt, info).

  The source and target models train at the same time (SentencePiece releases
  the GIL), sharing the cores between them: more threads than cores only make
  SentencePiece's workers wait for each other.
  """
  model_type = settings["spm_model_type"]
  if settings["shared_vocab"]:
    size = max(settings["src_vocab_size"], settings["tgt_vocab_size"])
    jobs = {"source": (SHARED_SPM, src_model, [inputs["train_src"], inputs["train_tgt"]], size)}
  else:
    jobs = {"source": (SRC_SPM, src_model, [inputs["train_src"]], settings["src_vocab_size"]),
            "target": (TGT_SPM, tgt_model, [inputs["train_tgt"]], settings["tgt_vocab_size"])}
  threads = max(1, (os.cpu_count() or 1) // len(jobs))
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    futures = {side: pool.submit(_place_vocab, out_dir, *job, model_type, threads, log)
               for side, job in jobs.items()}
    done = {side: future.result() for side, future in futures.items()}
  src, src_info = done["source"]
  tgt, tgt_info = done.get("target", done["source"])
  return src, tgt, {"shared": settings["shared_vocab"], "source": src_info, "target": tgt_info}


def _check_options(spm_model_type, vocab_sizes, shared_vocab, tgt_spm_model):
  """Raises UserError for settings that cannot work together."""
  if spm_model_type not in ("unigram", "bpe"):
    raise UserError(f"--spm_model_type must be unigram or bpe, not {spm_model_type!r}")
  for name, size in vocab_sizes.items():
    if size < 5:
      raise UserError(f"--{name}={size} is too small: the 4 special ids need room")
  if shared_vocab and tgt_spm_model:
    raise UserError("--shared_vocab uses one model: give it as --src_spm_model only")


def _model_checksum(path):
  """sha256 of a given SentencePiece model, checked first (None when none is given)."""
  if path is None:
    return None
  vocab.load_spm(path)
  return manifest_lib.sha256_file(path)


def _reusable(out_dir, inputs, settings, overwrite):
  """The manifest when out_dir already holds this very preparation, else None.

  Raises UserError when out_dir holds another preparation and not `overwrite`.
  """
  if not os.path.exists(os.path.join(out_dir, manifest_lib.MANIFEST)):
    return None
  try:
    old = manifest_lib.read_manifest(out_dir)
  except UserError:
    old = None
  if old and old["settings"] == settings and \
     {k: v["sha256"] for k, v in old["inputs"].items()} == \
     {k: v["sha256"] for k, v in inputs.items()}:
    return old
  if not overwrite:
    raise UserError(f"{out_dir} was prepared from other inputs or settings (or is damaged); "
                    "pass --overwrite to replace it")
  return None


def _choose(spec, histogram, log):
  """Explicit buckets as given; 'auto:N' chosen from the training length histogram."""
  if spec[0] != "auto":
    return spec
  chosen = bucket_lib.choose_buckets(histogram, spec[1])
  single = bucket_lib.choose_buckets(histogram, 1)
  log(f"auto:{spec[1]} buckets {bucket_lib.format_buckets(chosen)}: padding efficiency "
      f"{bucket_lib.padding_efficiency(histogram, chosen):.3f} "
      f"(one bucket {bucket_lib.format_buckets(single)}: "
      f"{bucket_lib.padding_efficiency(histogram, single):.3f})")
  return chosen


def _prepare_into(out_dir, paths, spec, settings, inputs, spm_models, log):
  """The work of prepare() once out_dir is clear; returns the manifest."""
  src_spm, tgt_spm, vocab_info = _build_vocabs(out_dir, inputs, settings, *spm_models, log)
  spooled = {split: encode_split(out_dir, split, paths[f"{split}_src"], paths[f"{split}_tgt"],
                                  src_spm, tgt_spm) for split in ("train", "dev")}
  if not spooled["train"].histogram.counts:
    raise UserError(f"{paths['train_src']}: empty corpus (every line pair has an empty side)")
  buckets = _choose(spec, spooled["train"].histogram, log)
  train, histogram = write_split(out_dir, "train", spooled["train"], buckets, settings["truncate"])
  if train["written"] == 0:
    raise UserError(f"{paths['train_src']}: no pair fits the buckets "
                    f"{bucket_lib.format_buckets(buckets)}")
  dev, _ = write_split(out_dir, "dev", spooled["dev"], buckets, settings["truncate"])
  shutil.copyfile(paths["dev_src"], os.path.join(out_dir, DEV_SRC))
  shutil.copyfile(paths["dev_tgt"], os.path.join(out_dir, DEV_REF))
  manifest = dict(train)
  manifest.update({
      "format": manifest_lib.FORMAT,
      "padding_efficiency": round(bucket_lib.padding_efficiency(histogram, buckets), 4),
      "single_bucket_padding_efficiency": round(bucket_lib.padding_efficiency(
          histogram, bucket_lib.choose_buckets(histogram, 1)), 4),
      "dev": dev, "vocab": vocab_info, "inputs": inputs, "settings": settings})
  manifest_lib.write_manifest(out_dir, manifest)
  return manifest


def prepare(*, train_src, train_tgt, dev_src, dev_tgt, out_dir, buckets="auto:4",
            src_vocab_size=8000, tgt_vocab_size=8000, shared_vocab=False,
            spm_model_type="unigram", src_spm_model=None, tgt_spm_model=None,
            truncate=False, overwrite=False, log=print):
  """Prepares a parallel corpus for training into `out_dir`; returns the manifest dict.

  Bad input raises UserError before anything is written; a failure later
  removes what this call wrote, so out_dir never holds a manifest that lies.
  """
  start = time.time()
  paths = {name: os.fspath(path) for name, path in (
      ("train_src", train_src), ("train_tgt", train_tgt), ("dev_src", dev_src),
      ("dev_tgt", dev_tgt))}
  out_dir = os.fspath(out_dir)
  src_spm_model, tgt_spm_model = (p and os.fspath(p) for p in (src_spm_model, tgt_spm_model))
  spec = bucket_lib.parse_buckets(buckets)
  _check_options(spm_model_type, {"src_vocab_size": src_vocab_size,
                                  "tgt_vocab_size": tgt_vocab_size}, shared_vocab, tgt_spm_model)
  settings = {"buckets": buckets, "src_vocab_size": src_vocab_size,
              "tgt_vocab_size": tgt_vocab_size, "shared_vocab": shared_vocab,
              "spm_model_type": spm_model_type, "truncate": truncate,
              "src_spm_model": _model_checksum(src_spm_model),
              "tgt_spm_model": _model_checksum(tgt_spm_model)}
  inputs = _check_inputs(paths)
  old = _reusable(out_dir, inputs, settings, overwrite)
  if old:
    log(f"{out_dir} is already prepared from these inputs and settings; reusing it")
    return old
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
  for path in _our_files(out_dir):
    os.remove(path)
  try:
    manifest = _prepare_into(out_dir, paths, spec, settings, inputs,
                             (src_spm_model, tgt_spm_model), log)
  except BaseException:
    for path in _our_files(out_dir):
      os.remove(path)
    raise
  drops = ", ".join(f"{k} {v}" for k, v in manifest["dropped"].items() if v) or "none"
  log(f"prepared {out_dir} in {time.time() - start:.1f}s: train read {manifest['read']}, "
      f"written {manifest['written']}, dropped: {drops}, truncated {manifest['truncated']}; "
      f"dev written {manifest['dev']['written']} of {manifest['dev']['read']}; padding "
      f"efficiency {manifest['padding_efficiency']:.3f} (one bucket: "
      f"{manifest['single_bucket_padding_efficiency']:.3f})")
  return manifest
