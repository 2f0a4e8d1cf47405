#!/usr/bin/env bash
# Installs the peer, OpenNMT-py 3.5.1 on a CPU build of torch, into its own
# virtualenv outside the repository (see /work/shared/docs/PEER.md).
#
#   bash scripts/peer/setup_peer.sh [VENV_DIR]
#
# VENV_DIR defaults to $S2S_PEER_VENV or ~/.cache/seq2seq_buckets/peer_venv.
# Idempotent: a venv whose onmt_train already imports is left as it is.
set -euo pipefail

VENV="${1:-${S2S_PEER_VENV:-$HOME/.cache/seq2seq_buckets/peer_venv}}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$VENV/bin/onmt_train" ]] && "$VENV/bin/python" -c "import onmt, torch" 2>/dev/null; then
  echo "peer venv ready: $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
# pip warns once per package about this machine's absent extra indexes; drop that noise.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" --upgrade pip wheel setuptools
# A CPU build: pip finds it on this machine's disk (find-links); PyPI's default
# wheel for Linux would pull the multi-GB CUDA stack.
"${PIP[@]}" "torch==2.13.0"
# OpenNMT-py's metadata pins torch<2.3: install it without dependencies ...
"${PIP[@]}" --no-deps "opennmt-py==3.5.1"
# ... and its other needs by hand.
"${PIP[@]}" configargparse "ctranslate2>=4,<5" tensorboard flask waitress \
  "pyonmttok>=1.37,<2" pyyaml sacrebleu rapidfuzz pyahocorasick fasttext-wheel spacy six \
  sentencepiece
"$VENV/bin/python" -c "import onmt, torch; print('onmt', onmt.__version__, 'torch', torch.__version__)"
echo "peer venv ready: $VENV"
