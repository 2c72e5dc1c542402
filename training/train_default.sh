#!/usr/bin/env bash
# Retrain the shipped classifier (models/classifier.json) and its cross-validated report
# (models/classifier.report.json) from the labelled data beside the repo.
#
#   bash training/train_default.sh [DATA_DIR]     # DATA_DIR defaults to ../shared/data
#
# Tiers: fast = llama-3.1-8b, standard = llama-3.1-70b (or mixtral-8x7b on RouteLLM rows),
# frontier = gemini-1.5-pro (or gpt-4 on RouteLLM rows). Prices per request are the mean of
# each model's input and output list prices (data README): 0.18, 0.88, 3.125 USD/Mtok.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
cargo run --release --quiet -- train \
  --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
  --dataset "$data/routellm/routellm_dev.jsonl" \
  --tiers "fast=llama-3.1-8b-instruct,standard=llama-3.1-70b-instruct|mixtral-8x7b-instruct,frontier=gemini-1.5-pro-002|gpt-4-1106-preview" \
  --prices 0.18,0.88,3.125 --target-quality 0.95 --folds 5 --seed 7 \
  --alpha 100 --embedding-weight 0.1 --topic-classifier --topic-alpha 10 --interact log_prompt_tokens,log_numbers \
  --heads gain --source-offsets --expert gsm8k/math_word_problem \
  --report models/classifier.report.json \
  --out models/classifier.json
