#!/usr/bin/env bash
# Same questions, other option writings (training/formats.py): MMLU-Pro held out with its
# options relabelled `(A)`, `A:`, `a)` or all on one line, the model trained on the other
# sources as they are; and how many MMLU-Pro rows the shipped model sends to another tier
# after relabelling. Prints the table in models/MODEL_CARD.md ("Option writings").
#
#   bash training/formats.sh [DATA_DIR]
# TRIAGE_BIN and TRIAGE_MODEL_FILE measure another build and model (default: this checkout's).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
model=${TRIAGE_MODEL_FILE:-models/classifier.json}
if [ -z "${TRIAGE_BIN:-}" ]; then
  cargo build --release --quiet
  TRIAGE_BIN=target/release/triage
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 training/formats.py write "$data/mmlu_pro/mmlu_pro_dev.jsonl" "$out"
for f in "$out"/*.jsonl; do
  w=${f%.jsonl}
  TRIAGE_LOG=warn "$TRIAGE_BIN" eval --leave-one-out source \
    --dataset "$f" \
    --dataset "$data/routellm/routellm_dev.jsonl" \
    --dataset "$data/alpaca_eval/alpaca_eval_dev.jsonl" \
    --tiers "$(cat training/tiers.txt)" --prices 0.18,0.88,3.125 \
    --report "$w.json" > /dev/null
  TRIAGE_LOG=warn "$TRIAGE_BIN" route --model "$model" --batch "$f" > "$w.route"
done
python3 training/formats.py table "$out"
