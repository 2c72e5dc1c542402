#!/usr/bin/env bash
# gRPC Route against the same server's health check, with the decision log on and off: h2load,
# 4 connections x 16 streams, a 35-token prompt, three runs of each, medians printed. Not in CI.
# Needs h2load (Debian nghttp2-client). Usage: benches/peer/route.sh [SECONDS=10] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
runs=${2:-3}
port=${PORT:-50991}
work=$(mktemp -d)
# Beside triage.toml: the config's relative model paths resolve from its own directory.
nolog=.triage-nolog.bench.toml
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work" "$nolog"' EXIT
cargo build --release --quiet
python3 benches/peer/grpc_body.py route "$work/route.bin"
python3 benches/peer/grpc_body.py health "$work/health.bin"
sed 's/^enabled = true  /enabled = false /' triage.toml >"$nolog"
grep -q '^enabled = false' "$nolog"

rps() { # path body -> requests per second
  h2load -D "$secs" -c 4 -m 16 -t 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$2" "http://127.0.0.1:$port$1" 2>&1 |
    awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) {gsub(",", "", $(i - 1)); print $(i - 1)}}
         /^requests:/ {if ($0 !~ / 0 errored/) print "ERRORS: " $0 > "/dev/stderr"}'
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
serve() { # config
  ./target/release/triage serve --config "$1" --addr "127.0.0.1:$port" --data-dir "$work/data-$RANDOM" \
    >"$work/serve.log" 2>&1 &
  for _ in $(seq 100); do
    h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/health.bin" \
      "http://127.0.0.1:$port/grpc.health.v1.Health/Check" >/dev/null 2>&1 && return
    sleep 0.1
  done
  cat "$work/serve.log"; exit 1
}
stop() { kill %1; wait %1 2>/dev/null || true; }

for cfg in triage.toml "$nolog"; do
  serve "$cfg"
  health=$(for _ in $(seq "$runs"); do rps /grpc.health.v1.Health/Check "$work/health.bin"; done | median)
  route=$(for _ in $(seq "$runs"); do rps /triage.v1.Router/Route "$work/route.bin"; done | median)
  stop
  log=$([ "$cfg" = triage.toml ] && echo on || echo off)
  awk -v l="$log" -v h="$health" -v r="$route" \
    'BEGIN {printf "| decision log %s | %.0f | %.0f | %.0f %% |\n", l, h, r, 100 * r / h}'
done
