"""Shared fixtures: tiny generated corpora, a prepared directory and a tiny trained model.

The corpora are written by the tests themselves (a copy task over a small
alphabet of words); Multi30k is read from ../shared/data/multi30k when present.
"""

import os
import random

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(REPO, "..", "shared", "data", "multi30k")

WORDS = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx"]


def write_copy_corpus(directory, train_lines=2000, dev_lines=100, min_len=2, max_len=8,
                      seed=0, reverse=False):
  """Writes train.src/.tgt and dev.src/.tgt of a copy (or reverse) task; returns their paths."""
  rng = random.Random(seed)
  paths = {}
  for split, count in (("train", train_lines), ("dev", dev_lines)):
    src_lines, tgt_lines = [], []
    for _ in range(count):
      words = [rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))]
      src_lines.append(" ".join(words))
      tgt_lines.append(" ".join(reversed(words) if reverse else words))
    for side, lines in (("src", src_lines), ("tgt", tgt_lines)):
      path = os.path.join(directory, f"{split}.{side}")
      with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
      paths[f"{split}_{side}"] = path
  return paths


@pytest.fixture(scope="session")
def copy_corpus(tmp_path_factory):
  return write_copy_corpus(str(tmp_path_factory.mktemp("copy_corpus")))


@pytest.fixture(scope="session")
def prepared_copy(copy_corpus, tmp_path_factory):
  """A prepared directory for the copy corpus: 2 buckets, 40-piece vocabularies."""
  from seq2seq_buckets.prepare import prepare
  out = str(tmp_path_factory.mktemp("prepared_copy"))
  prepare(train_src=copy_corpus["train_src"], train_tgt=copy_corpus["train_tgt"],
          dev_src=copy_corpus["dev_src"], dev_tgt=copy_corpus["dev_tgt"], out_dir=out,
          buckets="auto:2", src_vocab_size=40, tgt_vocab_size=40, log=lambda *_: None)
  return out


TINY_MODEL = {"size": 32, "embedding_size": 32, "num_layers": 1, "batch_size": 16,
              "dropout": 0.0, "learning_rate": 0.01}


@pytest.fixture(scope="session")
def trained_copy(prepared_copy, tmp_path_factory):
  """A tiny model trained for a few hundred steps on the copy corpus (train_dir path)."""
  from seq2seq_buckets import trainer
  train_dir = str(tmp_path_factory.mktemp("trained_copy"))
  options = trainer.TrainOptions(max_steps=300, max_time_minutes=0, steps_per_checkpoint=150,
                                 steps_per_bleu=0, steps_per_log=100, patience=0,
                                 keep_checkpoints=2, dev_bleu_lines=0)
  trainer.train(data_dir=prepared_copy, train_dir=train_dir, overrides=dict(TINY_MODEL),
                options=options, log=lambda *_: None)
  return train_dir


@pytest.fixture
def multi30k():
  if not os.path.isfile(os.path.join(MULTI30K, "train.en")):
    pytest.skip("../shared/data/multi30k is not present")
  return MULTI30K
