"""s2s-evaluate: sacreBLEU BLEU and chrF with signatures, and the legacy lowercased BLEU.

Scores --hyp against --ref, or first translates --src with the --train_dir model
(same search flags as s2s-decode). --json prints one JSON object instead of text.
"""

import json

from absl import flags

from seq2seq_buckets import evaluation
from seq2seq_buckets.cli import common
from seq2seq_buckets.cli import translation_flags

flags.adopt_module_key_flags(translation_flags)

flags.DEFINE_string("hyp", None, "Detokenized translations, one a line.")
flags.DEFINE_string("ref", None, "Detokenized references, parallel to --hyp or --src.")
flags.DEFINE_string("src", None, "Source text to translate with --train_dir, then score.")
flags.DEFINE_bool("json", False, "Print the scores as one JSON object.")
flags.mark_flag_as_required("ref")
FLAGS = flags.FLAGS


def main():
  if (FLAGS.hyp is None) == (FLAGS.train_dir is None):
    raise common.UserError("give either --hyp, or --train_dir and --src")
  if (FLAGS.train_dir is None) != (FLAGS.src is None):
    raise common.UserError("--train_dir and --src go together: the model and the text it "
                           "translates")
  refs = evaluation.read_lines(FLAGS.ref)
  if FLAGS.hyp is not None:
    hyps = evaluation.read_lines(FLAGS.hyp)
    evaluation.check_parallel(hyps, refs, FLAGS.hyp, FLAGS.ref)
  else:
    src = evaluation.read_lines(FLAGS.src)
    evaluation.check_parallel(src, refs, FLAGS.src, FLAGS.ref)
    hyps = [h[0].text for _, translations in translation_flags.translate_chunks(src)
            for h in translations.hypotheses]
  scores = evaluation.score(hyps, refs)
  if FLAGS.json:
    print(json.dumps(evaluation.as_json(scores, len(refs)), indent=1))
  else:
    print(evaluation.format_text(scores))


def run():
  common.run(main)


if __name__ == "__main__":
  run()
