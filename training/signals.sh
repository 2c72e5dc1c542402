#!/usr/bin/env bash
# Single signals on each dev source held out (training/signals.py): prompt length, novelty
# against the other sources, their nearest neighbours' labels, a subject oracle, text
# statistics of the question stem, and the disagreement of per-source models. Prints the
# tables in models/MODEL_CARD.md ("What the prompts carry"). Needs Python 3.10+; installs its
# packages into training/.venv-signals (training/study_env.sh). Reads ../shared/data unless
# given DATA_DIR.
#
#   bash training/signals.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
feat=$(mktemp -d)
trap 'rm -rf "$feat"' EXIT
. training/study_env.sh
cargo build --release --quiet --example dump_features
for f in mmlu_pro/mmlu_pro_dev routellm/routellm_dev alpaca_eval/alpaca_eval_dev; do
  ./target/release/examples/dump_features "$data/$f.jsonl" "$feat/$(basename "$f")"
done
"$py" training/signals.py "$data" "$feat"
