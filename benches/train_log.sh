#!/usr/bin/env bash
# `triage train --log` on a generated store of N logged decisions with outcomes (default 1M):
# wall time and peak RSS of the whole command (reading, joining, the time-split check, the
# fit), as a user runs it. Not in CI (about a minute and 1 GB of disk).
#
#   bash benches/train_log.sh [DECISIONS=1000000] [MAX_LOG_ROWS=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
cap="${2:-100000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin triage --example log_store
/usr/bin/time -f "generate: %e s, peak RSS %M KB" target/release/examples/log_store "$work/store" "$n"
echo "store on disk: $(du -sh "$work/store" | cut -f1)"
/usr/bin/time -f "train --log: %e s, peak RSS %M KB" target/release/triage train \
  --log "$work/store" --max-log-rows "$cap" \
  --tiers fast=a,standard=b,frontier=c --out "$work/model.json" | sed -n '1p;$p'
