"""Special token ids, defined once, and the SentencePiece models that must agree with them."""

import os
import re

import sentencepiece as spm

from seq2seq_buckets.errors import UserError

PAD_ID = 0
GO_ID = 1  # SentencePiece's BOS
EOS_ID = 2
UNK_ID = 3

# Text SentencePiece trains on at most, in bytes (about 190k Multi30k lines). Its
# training holds about 25 bytes per byte of text, and prepare trains the source
# and target models at the same time; a larger corpus is sampled by lines.
SPM_SAMPLE_BYTES = 12_000_000
# Fewer lines than this are encoded and decoded one at a time: SentencePiece's batch
# call starts its threads each time (~0.25 ms here), while a short line takes ~6 us.
FEW_LINES = 64


def sample_lines(text_bytes, lines):
  """How many of `lines` lines (`text_bytes` bytes in all) make up SPM_SAMPLE_BYTES."""
  return max(1, SPM_SAMPLE_BYTES * lines // max(text_bytes, 1))


def train_spm(inputs, model_prefix, vocab_size, model_type="unigram", max_lines=None,
              threads=None):
  """Trains a SentencePiece model on the text files `inputs`; returns the loaded model.

  With hard_vocab_limit=False a vocab_size larger than the corpus can yield is not
  an error: the model stops at the size reached (its get_piece_size()). Only
  `max_lines` random lines are used when given (see sample_lines). `threads`
  defaults to one per core.
  """
  try:
    spm.SentencePieceTrainer.train(
        input=",".join(inputs), model_prefix=model_prefix, vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD_ID, bos_id=GO_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        character_coverage=1.0, hard_vocab_limit=False,
        input_sentence_size=max_lines or 0, shuffle_input_sentence=True,
        num_threads=threads or os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    message = str(e).splitlines()[0]
    need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if need:
      raise UserError(
          f"vocab size {vocab_size} is too small for {', '.join(inputs)}: its characters and "
          f"the 4 special ids need at least {need.group(1)}") from None
    raise UserError(f"SentencePiece training on {', '.join(inputs)} failed: {message}") from None
  return load_spm(model_prefix + ".model")


def load_spm(path):
  """Loads a SentencePiece model and checks its special ids against this module's."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: SentencePiece model not found")
  try:
    model = spm.SentencePieceProcessor(model_file=path)
  except (RuntimeError, OSError) as e:
    raise UserError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
  found = {"pad": model.pad_id(), "bos/go": model.bos_id(), "eos": model.eos_id(),
           "unk": model.unk_id()}
  wanted = {"pad": PAD_ID, "bos/go": GO_ID, "eos": EOS_ID, "unk": UNK_ID}
  if found != wanted:
    raise UserError(f"{path}: special ids {found} differ from the required {wanted}; "
                    "train it with pad_id=0 bos_id=1 eos_id=2 unk_id=3")
  return model


def encode_lines(model, lines):
  """lines: list of str -> list of piece id lists (one SentencePiece call when many)."""
  if len(lines) < FEW_LINES:
    return [model.encode(line) for line in lines]
  return model.encode(lines)


def decode_lines(model, id_lists):
  """list of piece id lists -> list of str (one SentencePiece call when many)."""
  if len(id_lists) < FEW_LINES:
    return [model.decode(ids) for ids in id_lists]
  return model.decode(id_lists)
