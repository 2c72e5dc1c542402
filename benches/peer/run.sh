#!/usr/bin/env bash
# The peer benchmark in one run and one table: the HTTP door against nginx and LiteLLM
# (http.sh: wrk -t2 -c32) and gRPC Route against the same server's health check (route.sh:
# h2load 4 x 16), one after the other on this machine, medians of RUNS each. Not in CI.
# Needs wrk, h2load, nginx-light, curl and python3 (LiteLLM goes in a venv; LITELLM=0 skips it).
# Usage: benches/peer/run.sh [SECONDS=10] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
runs=${2:-3}
http=$(bash benches/peer/http.sh "$secs" "$runs")
grpc=$(bash benches/peer/route.sh "$secs" "$runs")
cell() { awk -F' *\\| *' -v row="$2" -v col="$3" 'index($2, row) == 1 {print $col}' <<<"$1"; }
mock=$(cell "$http" "nginx mock directly" 3)
door=$(cell "$http" "triage /v1" 3)
lite=$(cell "$http" "LiteLLM" 3)
echo "| path | load ($secs s, median of $runs) | RPS | p99 ms | against |"
echo "| --- | --- | --- | --- | --- |"
echo "| nginx mock directly | wrk -t2 -c32 | $mock | $(cell "$http" "nginx mock directly" 4) | |"
awk -v t="$door" -v m="$mock" -v l="$lite" -v p="$(cell "$http" "triage /v1" 4)" 'BEGIN {
  printf "| triage /v1/chat/completions → mock | wrk -t2 -c32 | %s | %s | %.1f %% of the mock", t, p, 100 * t / m
  if (l + 0 > 0) printf ", %.0f× LiteLLM", t / l
  print " |" }'
echo "| $(cell "$http" "LiteLLM" 2) | wrk -t2 -c32 | $lite | $(cell "$http" "LiteLLM" 4) | |"
for log in on off; do
  h=$(cell "$grpc" "decision log $log" 3)
  r=$(cell "$grpc" "decision log $log" 4)
  echo "| gRPC health check (decision log $log) | h2load -c4 -m16 | $h | | |"
  echo "| gRPC Route (decision log $log) | h2load -c4 -m16 | $r | | $(cell "$grpc" "decision log $log" 5) of health |"
done
