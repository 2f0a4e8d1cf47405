"""Scoring detokenized translations with sacreBLEU: BLEU, chrF and the legacy lowercased BLEU.

- BLEU and chrF: sacreBLEU's defaults (BLEU: mixed case, 13a tokenization, exp
  smoothing; chrF2: character 6-grams), with their signatures; the same numbers
  as `sacrebleu REF -i HYP -m bleu chrf`.
- Legacy BLEU: sacreBLEU BLEU on lowercased text with its 13a tokenization
  (`sacrebleu -lc`), the closest reproducible stand-in for the
  `multi-bleu.perl -lc` on tokenized text that published Multi30k results use.

Files are read as the sacrebleu CLI reads them: UTF-8, split at '\\n', trailing
whitespace removed.
"""

import collections
import json

from sacrebleu.metrics import BLEU, CHRF

from seq2seq_buckets.errors import UserError

# name: sacreBLEU's metric name (BLEU, chrF2); score: float in [0, 100];
# signature: sacreBLEU's signature; details: BLEU's n-gram precisions, brevity
# penalty and lengths ("" for chrF); note: what a non-default figure is.
Score = collections.namedtuple("Score", ["name", "score", "signature", "details", "note"])
# Keys of score()'s result, in display order.
METRICS = ("bleu", "chrf", "bleu_lc")
LEGACY_NOTE = ("lowercased, 13a-tokenized BLEU (sacrebleu -lc), close to the multi-bleu.perl "
               "-lc on tokenized text that published Multi30k results report")


def lines_of(stream, name):
  """Lines of an open text stream (newline='\\n'), trailing whitespace removed."""
  try:
    return [line.rstrip() for line in stream]
  except UnicodeDecodeError as e:
    raise UserError(f"{name}: not UTF-8 text ({e.reason})") from None


def read_lines(path):
  """The lines of a UTF-8 text file; UserError when it cannot be read."""
  try:
    with open(path, encoding="utf-8", newline="\n") as f:
      return lines_of(f, path)
  except FileNotFoundError:
    raise UserError(f"{path}: no such file") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None


def check_parallel(hyp_lines, ref_lines, hyp_name, ref_name):
  """Raises UserError unless both sides hold the same, non-zero number of lines."""
  if len(hyp_lines) != len(ref_lines):
    raise UserError(f"{hyp_name} has {len(hyp_lines)} lines but {ref_name} has "
                    f"{len(ref_lines)}")
  if not ref_lines:
    raise UserError(f"{ref_name} is empty")


def score(hypotheses, references):
  """hypotheses, references: parallel lists of detokenized lines -> {metric: Score} (METRICS)."""
  metrics = {"bleu": BLEU(), "chrf": CHRF(), "bleu_lc": BLEU(lowercase=True)}
  out = {}
  for key in METRICS:
    metric = metrics[key]
    result = metric.corpus_score(hypotheses, [references])
    signature = str(metric.get_signature())
    details = json.loads(result.format(signature=signature, is_json=True)).get("verbose_score", "")
    out[key] = Score(result.name, result.score, signature, details,
                     LEGACY_NOTE if key == "bleu_lc" else "")
  return out


def format_text(scores):
  """{metric: Score} -> one line per metric (label, score, signature, BLEU details), then notes."""
  labels = {key: "BLEU-lc" if key == "bleu_lc" else scores[key].name for key in METRICS}
  lines = [f"{labels[key]:<8}{scores[key].score:6.2f}  {scores[key].signature}"
           + (f"  {scores[key].details}" if scores[key].details else "") for key in METRICS]
  lines += [f"{labels[key]}: {scores[key].note}" for key in METRICS if scores[key].note]
  return "\n".join(lines)


def as_json(scores, lines):
  """{metric: Score}, number of lines -> a JSON-ready dict."""
  return {"lines": lines, **{key: scores[key]._asdict() for key in METRICS}}
