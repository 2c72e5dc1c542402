#!/usr/bin/env bash
# Retrain the shipped classifier (models/classifier.json) and its cross-validated report
# (models/classifier.report.json) on every labelled file beside the repo, with the default
# recipe: the same command an operator runs on their own rows, no recipe flags.
#
#   bash training/train_default.sh [DATA_DIR]     # DATA_DIR defaults to ../shared/data
#
# Tiers (training/tiers.txt): fast = llama-3.1-8b (gemma-7b on AlpacaEval rows), standard =
# llama-3.1-70b (mixtral-8x7b on RouteLLM rows), frontier = gemini-1.5-pro (gpt-4 on RouteLLM
# and AlpacaEval rows). Prices per request are the mean of each model's input and output list
# prices (data README): 0.18, 0.88, 3.125 USD/Mtok.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
cargo run --release --quiet -- train \
  --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
  --dataset "$data/routellm/routellm_dev.jsonl" \
  --dataset "$data/alpaca_eval/alpaca_eval_dev.jsonl" \
  --tiers "$(cat training/tiers.txt)" \
  --prices 0.18,0.88,3.125 \
  --report models/classifier.report.json \
  --out models/classifier.json
