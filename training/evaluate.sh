#!/usr/bin/env bash
# The evaluations behind models/MODEL_CARD.md, all with the default recipe (what
# training/train_default.sh ships). Never measured on training rows.
#
#   bash training/evaluate.sh [DATA_DIR]          # DATA_DIR defaults to ../shared/data
#
# 1. Transfer, the figure we optimise: leave one source out (mmlu, gsm8k, mmlu_pro,
#    alpaca_eval), train on the others, measure the one left out; then adapt that model with
#    300 of the held-out source's rows (`train --base`) and measure the rest; seed 7's draw of
#    the 300 rows is the report, seeds 8-11 are printed beside it.
# 2. In-file 5-fold cross-validation, repeated over five fold assignments (seeds 7-11),
#    because one split moves MMLU APGR by about ±0.01: RouteLLM two tiers, MMLU-Pro three.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
triage() { cargo run --release --quiet -- "$@"; }
echo "### Leave one source out, every dev file, three tiers"
triage eval --leave-one-out source \
  --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
  --dataset "$data/routellm/routellm_dev.jsonl" \
  --dataset "$data/alpaca_eval/alpaca_eval_dev.jsonl" \
  --tiers "$(cat training/tiers.txt)" --prices 0.18,0.88,3.125 \
  --report models/eval.leave-one-out.json
echo
echo "### Your own workload: 300 rows of each held-out source adapt the model trained without it"
triage eval --leave-one-out source --adapt 300 \
  --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
  --dataset "$data/routellm/routellm_dev.jsonl" \
  --dataset "$data/alpaca_eval/alpaca_eval_dev.jsonl" \
  --tiers "$(cat training/tiers.txt)" --prices 0.18,0.88,3.125 \
  --report models/eval.adapt.json
for seed in 8 9 10 11; do
  echo
  echo "### The same with another draw of the 300 rows: --seed $seed"
  triage eval --leave-one-out source --adapt 300 --seed "$seed" \
    --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
    --dataset "$data/routellm/routellm_dev.jsonl" \
    --dataset "$data/alpaca_eval/alpaca_eval_dev.jsonl" \
    --tiers "$(cat training/tiers.txt)" --prices 0.18,0.88,3.125
done
echo
echo "### In-file, two tiers on RouteLLM (MMLU + GSM8K): mixtral-8x7b vs gpt-4"
triage eval --dataset "$data/routellm/routellm_dev.jsonl" \
  --tiers weak=mixtral-8x7b-instruct,strong=gpt-4-1106-preview \
  --prices 0.6,20 --repeats 5 --report models/eval.routellm.json
echo
echo "### In-file, three tiers on MMLU-Pro: llama-3.1-8b / llama-3.1-70b / gemini-1.5-pro"
triage eval --dataset "$data/mmlu_pro/mmlu_pro_dev.jsonl" \
  --tiers fast=llama-3.1-8b-instruct,standard=llama-3.1-70b-instruct,frontier=gemini-1.5-pro-002 \
  --prices 0.18,0.88,3.125 --repeats 5 --report models/eval.mmlu_pro.json
