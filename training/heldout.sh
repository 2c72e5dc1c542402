#!/usr/bin/env bash
# Post-hoc studies on held-out predictions (training/heldout.py): trains the shipped recipe on
# every dev source but one with plain `triage train`, scores the one left out
# (examples/score_rows.rs), and measures shrinking by novelty and a non-linear learner against
# those scores. Prints the tables in models/MODEL_CARD.md ("Tried and not kept"). Needs Python
# 3.10+; installs its packages into training/.venv-signals (training/study_env.sh). Reads
# ../shared/data unless given DATA_DIR.
#
#   bash training/heldout.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. training/study_env.sh
cargo build --release --quiet --bin triage --example score_rows --example dump_features
files=("$data/mmlu_pro/mmlu_pro_dev.jsonl" "$data/routellm/routellm_dev.jsonl"
  "$data/alpaca_eval/alpaca_eval_dev.jsonl")
for f in "${files[@]}"; do
  ./target/release/examples/dump_features "$f" "$work/$(basename "$f" .jsonl)"
done
for g in alpaca_eval gsm8k mmlu mmlu_pro; do
  # The other sources' rows, in file order, as `eval --leave-one-out source` trains on them.
  "$py" - "$g" "$work" "${files[@]}" <<'PY'
import json, sys
g, work, files = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(f"{work}/without_{g}.jsonl", "w") as tr, open(f"{work}/only_{g}.jsonl", "w") as te:
    for f in files:
        for line in open(f):
            (te if json.loads(line)["source"] == g else tr).write(line)
PY
  ./target/release/triage train --dataset "$work/without_$g.jsonl" \
    --tiers "$(cat training/tiers.txt)" --prices 0.18,0.88,3.125 \
    --out "$work/model_$g.json" > "$work/train_$g.log" 2>&1
  ./target/release/examples/score_rows "$work/model_$g.json" "$work/only_$g.jsonl" \
    > "$work/scores_$g.jsonl"
done
"$py" training/heldout.py "$data" "$work"
