#!/usr/bin/env bash
# The main job on Multi30k En->De: prepare -> train -> average the last checkpoints ->
# evaluate (beam 5 on test_2016_flickr) -> sample translations. Short by default;
# MINUTES=57 gives the README's recipe. Run from the repository root after
# `pip install -e .`.
#
#   MINUTES   training budget in minutes (default 5)
#   PAIR      en_de or en_fr (default en_de)
#   RUN_DIR   where prepared data, the model and outputs go (default runs/multi30k_$PAIR)
#   MULTI30K  folder with Multi30k raw text (default ../shared/data/multi30k; else
#             downloaded from the multi30k/dataset repository into data/multi30k)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-5}
PAIR=${PAIR:-en_de}
SRC=${PAIR%_*}
TGT=${PAIR#*_}
RUN_DIR=${RUN_DIR:-runs/multi30k_$PAIR}
MULTI30K=${MULTI30K:-../shared/data/multi30k}

if [ ! -f "$MULTI30K/train.$SRC" ]; then
  MULTI30K=data/multi30k
  mkdir -p "$MULTI30K"
  for split in train val test_2016_flickr; do
    for lang in "$SRC" "$TGT"; do
      [ -f "$MULTI30K/$split.$lang" ] && continue
      echo "downloading $split.$lang" >&2
      curl -fsSL "https://github.com/multi30k/dataset/raw/master/data/task1/raw/$split.$lang.gz" \
        | gunzip > "$MULTI30K/$split.$lang.partial"
      mv "$MULTI30K/$split.$lang.partial" "$MULTI30K/$split.$lang"
    done
  done
fi

s2s-prepare --flagfile="configs/multi30k_$PAIR.prepare.cfg" \
  --train_src="$MULTI30K/train.$SRC" --train_tgt="$MULTI30K/train.$TGT" \
  --dev_src="$MULTI30K/val.$SRC" --dev_tgt="$MULTI30K/val.$TGT" --out_dir="$RUN_DIR/data"

s2s-train --flagfile="configs/multi30k_$PAIR.cfg" --data_dir="$RUN_DIR/data" \
  --train_dir="$RUN_DIR/train" --max_time_minutes="$MINUTES"
# the mean of the last 5 checkpoints' weights (2,000 steps at one every 500)
s2s-average --train_dir="$RUN_DIR/train" --last=5

echo "== test_2016_flickr, beam 5, averaged checkpoints ==" >&2
s2s-decode --train_dir="$RUN_DIR/train" --checkpoint=averaged \
  --flagfile="configs/multi30k_$PAIR.decode.cfg" \
  --input="$MULTI30K/test_2016_flickr.$SRC" --output="$RUN_DIR/test_2016_flickr.beam5.$TGT"
s2s-evaluate --hyp="$RUN_DIR/test_2016_flickr.beam5.$TGT" --ref="$MULTI30K/test_2016_flickr.$TGT"

echo "== sample translations ==" >&2
paste -d '\n' <(head -n 5 "$MULTI30K/test_2016_flickr.$SRC" | sed 's/^/src: /') \
  <(head -n 5 "$RUN_DIR/test_2016_flickr.beam5.$TGT" | sed 's/^/hyp: /') \
  <(head -n 5 "$MULTI30K/test_2016_flickr.$TGT" | sed 's/^/ref: /')
