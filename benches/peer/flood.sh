#!/usr/bin/env bash
# Memory under a flood: 2,000 concurrent gRPC Route streams (20 connections x 100) carrying a
# 100 KB prompt each, 20,000 calls; prints the server's RSS idle, at its peak, and 5 s after.
# Also how many calls were routed and how many refused (RESOURCE_EXHAUSTED, which h2load counts
# as 2xx since gRPC errors travel in trailers), and start-up time with the store the flood left.
# Not in CI. Needs h2load and curl.
# Usage: [CONFIG=triage.toml] benches/peer/flood.sh [CALLS=20000]
set -euo pipefail
cd "$(dirname "$0")/../.."
calls=${1:-20000}
port=${PORT:-50994}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
python3 - "$work/route.bin" <<'PY'
import struct, sys
words = "the quick brown fox jumps over the lazy dog while 42 engineers debate 7 designs ".split()
prompt = " ".join(words[i % len(words)] for i in range(20_000))[:100_000].encode()
def field(num, payload):
    n, out = len(payload), bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: break
    return bytes([(num << 3) | 2]) + bytes(out) + payload
body = field(1, field(1, b"user") + field(2, prompt))
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
./target/release/triage serve --config "${CONFIG:-triage.toml}" --addr "127.0.0.1:$port" --data-dir "$work/data" \
  --http-addr "127.0.0.1:$((port + 1))" >"$work/serve.log" 2>&1 &
pid=$!
sleep 2
idle=$(rss $pid)
peak=$idle
( while kill -0 $pid 2>/dev/null; do r=$(rss $pid); [ "$r" -gt "$(cat "$work/peak" 2>/dev/null || echo 0)" ] && echo "$r" >"$work/peak"; sleep 0.05; done ) &
h2load -n "$calls" -c 20 -m 100 -t 2 -H 'content-type: application/grpc' -H 'te: trailers' \
  -d "$work/route.bin" "http://127.0.0.1:$port/triage.v1.Router/Route" | grep -E '^(finished|requests|status codes)'
sleep 5
after=$(rss $pid)
metric() { curl -s "http://127.0.0.1:$((port + 1))/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
routed=$(metric 'triage_decisions_total')
refused=$(metric 'triage_shed{class="route"}')
peak=$(cat "$work/peak")
kill $pid; wait $pid 2>/dev/null || true
start=$(date +%s%N)
./target/release/triage serve --config "${CONFIG:-triage.toml}" --addr "127.0.0.1:$port" --data-dir "$work/data" \
  >"$work/serve2.log" 2>&1 &
pid=$!
until grep -q "listening\|serving" "$work/serve2.log" 2>/dev/null; do sleep 0.01; done
up=$(( ($(date +%s%N) - start) / 1000000 ))
kill $pid
echo "| RSS idle | peak during the flood | 5 s after | routed | refused | restart with the flood's store |"
echo "| ${idle} MB | ${peak} MB | ${after} MB | ${routed} | ${refused} | ${up} ms |"
