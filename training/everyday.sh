#!/usr/bin/env bash
# What the shipped model decides for a dozen everyday prompts (training/everyday.jsonl), as the
# Markdown table in models/MODEL_CARD.md. None of these prompts is in a training file.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -- route --batch training/everyday.jsonl | python3 -c "$(cat <<'PY'
import json, sys
print("| prompt | tier | p(fast) | p(standard) | what pushed it (> 0 towards the dearest tier) |")
print("| --- | --- | --- | --- | --- |")
for line in sys.stdin:
    d = json.loads(line)
    p = d["p_sufficient"]
    why = ", ".join(f"{x['feature']} {x['towards_dearest']:+.2f}" for x in d["drivers"])
    print(f"| {d['id']} | {d['tier']} | {p['fast']:.2f} | {p['standard']:.2f} | {why} |")
PY
)"
