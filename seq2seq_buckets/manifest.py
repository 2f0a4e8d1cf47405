"""manifest.json: what prepare wrote, written last and atomically, read back by training.

Keys: format, buckets (source_length, target_length, pairs, source_tokens,
target_tokens, shards), read, written, dropped (reason -> count), truncated,
padding_efficiency, single_bucket_padding_efficiency, dev (the same counts for
the dev split), vocab (models, sizes, sha256), inputs (path, sha256, lines),
settings. target_tokens count the EOS of each pair (t + 1 per pair).
"""

import hashlib
import json
import os

from seq2seq_buckets.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def check_counts(split):
  """Raises unless read == written + sum(dropped) for a split's counts."""
  dropped = sum(split["dropped"].values())
  if split["read"] != split["written"] + dropped:
    raise UserError(f"manifest does not reconcile: read {split['read']} != written "
                    f"{split['written']} + dropped {dropped}")
  if split["written"] != sum(b["pairs"] for b in split["buckets"]):
    raise UserError("manifest does not reconcile: bucket pair counts do not sum to 'written'")


def write_manifest(out_dir, manifest):
  check_counts(manifest)
  check_counts(manifest["dev"])
  path = os.path.join(out_dir, MANIFEST)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)


def read_manifest(data_dir):
  """The manifest of a prepared directory, checked; UserError if absent or inconsistent."""
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.isfile(path):
    raise UserError(f"{data_dir}: no {MANIFEST}; run s2s-prepare first")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: unreadable manifest ({e})") from None
  if manifest.get("format") != FORMAT:
    raise UserError(f"{path}: manifest format {manifest.get('format')} is not {FORMAT}")
  check_counts(manifest)
  check_counts(manifest["dev"])
  for split in (manifest, manifest["dev"]):
    for bucket in split["buckets"]:
      for shard in bucket["shards"]:
        if not os.path.isfile(os.path.join(data_dir, shard)):
          raise UserError(f"{data_dir}: shard {shard} listed in the manifest is missing")
  return manifest
