"""s2s-evaluate: the same figures as sacreBLEU's Python API and its CLI, and the error paths."""

import json
import shutil
import subprocess
import sys

import pytest
import sacrebleu

from seq2seq_buckets import evaluation
from seq2seq_buckets.errors import UserError

REFS = ["Ein Mann fährt Fahrrad auf einer Straße.", "Zwei Hunde spielen im Schnee .",
        "Eine Frau in einem roten Kleid singt.", "Kinder spielen Fußball im Park.",
        "Ein älterer Mann liest die Zeitung."]
HYPS = ["ein Mann fährt ein Fahrrad auf der Straße.", "Zwei Hunde spielen im Schnee.",
        "Eine Frau singt.  ", "KINDER spielen Fußball im Park .", ""]


@pytest.fixture
def files(tmp_path):
  hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
  hyp.write_text("\n".join(HYPS) + "\n", encoding="utf-8")
  ref.write_text("\n".join(REFS) + "\n", encoding="utf-8")
  return str(hyp), str(ref)


def evaluate_cli(*args):
  return subprocess.run([sys.executable, "-m", "seq2seq_buckets.cli.evaluate", *args],
                        capture_output=True, text=True, timeout=300, check=False)


def test_scores_equal_the_python_api(files):
  hyps, refs = (evaluation.read_lines(path) for path in files)
  scores = evaluation.score(hyps, refs)
  assert scores["bleu"].score == sacrebleu.corpus_bleu(hyps, [refs]).score
  assert scores["chrf"].score == sacrebleu.corpus_chrf(hyps, [refs]).score
  assert scores["bleu_lc"].score == sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score
  assert scores["bleu_lc"].score > scores["bleu"].score  # case differences are forgiven
  assert "case:lc" in scores["bleu_lc"].signature and "case:mixed" in scores["bleu"].signature


def sacrebleu_cli(hyp, ref, *args):
  done = subprocess.run([shutil.which("sacrebleu") or "sacrebleu", ref, "-i", hyp, "-w", "4",
                         *args], capture_output=True, text=True, check=True)
  return json.loads(done.stdout)


@pytest.mark.skipif(not shutil.which("sacrebleu"), reason="the sacrebleu CLI is not installed")
def test_cli_equals_the_sacrebleu_cli(files):
  hyp, ref = files
  done = evaluate_cli(f"--hyp={hyp}", f"--ref={ref}", "--json")
  assert done.returncode == 0, done.stderr
  ours = json.loads(done.stdout)
  theirs = sacrebleu_cli(hyp, ref, "-m", "bleu", "chrf")
  theirs_lc = sacrebleu_cli(hyp, ref, "-m", "bleu", "-lc")
  assert ours["lines"] == len(REFS)
  for key, expected in (("bleu", theirs[0]), ("chrf", theirs[1]), ("bleu_lc", theirs_lc)):
    assert ours[key]["name"] == expected["name"]
    assert round(ours[key]["score"], 4) == expected["score"]
    assert ours[key]["signature"] == expected["signature"]
    assert ours[key]["details"] == expected.get("verbose_score", "")


def test_text_output_shows_each_score_with_its_signature(files):
  hyp, ref = files
  done = evaluate_cli(f"--hyp={hyp}", f"--ref={ref}")
  assert done.returncode == 0, done.stderr
  scores = evaluation.score(*(evaluation.read_lines(path) for path in files))
  lines = done.stdout.splitlines()
  for line, key in zip(lines, evaluation.METRICS):
    assert f"{scores[key].score:.2f}" in line and scores[key].signature in line
  assert "lowercased" in lines[-1]


def test_read_lines_is_what_sacrebleu_reads(tmp_path):
  path = tmp_path / "x.txt"
  path.write_bytes("a b \r\n\nc\rd\u2028e\nlast".encode())
  assert evaluation.read_lines(str(path)) == ["a b", "", "c\rd\u2028e", "last"]
  path.write_bytes(b"\xff\n")
  with pytest.raises(UserError, match="not UTF-8"):
    evaluation.read_lines(str(path))


@pytest.mark.parametrize("case", ["mismatch", "missing", "neither", "both", "src_only"])
def test_cli_errors(files, tmp_path, case):
  hyp, ref = files
  short = tmp_path / "short.txt"
  short.write_text("one line\n", encoding="utf-8")
  args, message = {
      "mismatch": ([f"--hyp={short}", f"--ref={ref}"], "has 1 lines but"),
      "missing": ([f"--hyp={tmp_path}/nope.txt", f"--ref={ref}"], "nope.txt: no such file"),
      "neither": ([f"--ref={ref}"], "give either --hyp, or --train_dir and --src"),
      "both": ([f"--hyp={hyp}", f"--ref={ref}", f"--train_dir={tmp_path}", f"--src={hyp}"],
               "give either --hyp, or --train_dir and --src"),
      "src_only": ([f"--train_dir={tmp_path}", f"--ref={ref}"], "go together"),
  }[case]
  done = evaluate_cli(*args)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_train_dir_without_checkpoint(trained_copy, copy_corpus, tmp_path):
  for name in ("hparams.json", "source.spm.model", "target.spm.model"):
    shutil.copy(f"{trained_copy}/{name}", tmp_path)
  done = evaluate_cli(f"--train_dir={tmp_path}", f"--src={copy_corpus['dev_src']}",
                      f"--ref={copy_corpus['dev_tgt']}")
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path}: no checkpoint yet; train a model there with s2s-train")


def test_train_dir_decodes_then_scores(trained_copy, copy_corpus):
  from seq2seq_buckets.translator import Translator
  done = evaluate_cli(f"--train_dir={trained_copy}", f"--src={copy_corpus['dev_src']}",
                      f"--ref={copy_corpus['dev_tgt']}", "--beam_size=2", "--json")
  assert done.returncode == 0, done.stderr
  src, refs = (evaluation.read_lines(copy_corpus[k]) for k in ("dev_src", "dev_tgt"))
  with Translator(trained_copy) as translator:
    hyps = [h[0].text for h in translator.translate(src, beam_size=2).hypotheses]
  expected = evaluation.score(hyps, refs)
  ours = json.loads(done.stdout)
  for key in evaluation.METRICS:
    assert ours[key]["score"] == pytest.approx(expected[key].score)
  assert f"translated {len(src)} lines" in done.stderr
