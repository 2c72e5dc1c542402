#!/usr/bin/env bash
# The OpenAI-compatible door against its peers, in one run on this machine: nginx (Debian
# nginx-light) answers a fixed chat completion as the provider; wrk (c=32, 2 threads) calls the
# mock directly, triage's /v1/chat/completions in front of it (decision log on), and LiteLLM's
# proxy (PyPI litellm[proxy], in a venv) in front of it. Three runs each, medians printed.
# Not in CI. Usage: benches/peer/http.sh [SECONDS=10] [RUNS=3]   (LITELLM=0 skips LiteLLM)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
runs=${2:-3}
mock=${MOCK_PORT:-50881}
tport=${TRIAGE_PORT:-50882}
lport=${LITELLM_PORT:-50883}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release --quiet

# The mock provider: one canned reply for OpenAI's and Anthropic's wire formats.
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/body;
  server {
    listen 127.0.0.1:$mock;
    location /v1/chat/completions {
      default_type application/json;
      return 200 '{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":"mock","choices":[{"index":0,"message":{"role":"assistant","content":"Bonjour"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}';
    }
    location /v1/messages {
      default_type application/json;
      return 200 '{"id":"msg_mock","type":"message","role":"assistant","model":"mock","content":[{"type":"text","text":"Bonjour"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":2}}';
    }
  }
}
NGINX
nginx -c "$work/nginx.conf"
# LiteLLM refuses to start without a strong master key; triage (no tokens, loopback) ignores it.
export TOKEN="sk-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
body='{"model":"MODEL","messages":[{"role":"user","content":"Translate into French: good morning, how are you today?"}]}'
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = os.getenv("BODY")
LUA
run() { # url model -> "rps p99_ms"
  BODY=${body/MODEL/$2} wrk -t 2 -c 32 -d "${secs}s" --latency -s "$work/post.lua" "$1" |
    awk '/Requests\/sec/ {r = $2} /^ +99%/ {v = $2; if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /ms$/) sub("ms", "", v); else if (v ~ /s$/) {sub("s", "", v); v *= 1000}; p = v}
         /Non-2xx/ {print "NON-2XX: " $0 > "/dev/stderr"} END {print r, p}'
}
median() { sort -n -k1 | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }
wait_http() { # LiteLLM takes a minute or more to import and start
  for _ in $(seq 1800); do curl -sf -o /dev/null "$1" && return; sleep 0.1; done
  echo "not up: $1" >&2; cat "$work"/*.log >&2; exit 1
}

wait_http "http://127.0.0.1:$mock/v1/chat/completions"
direct=$(for _ in $(seq "$runs"); do run "http://127.0.0.1:$mock/v1/chat/completions" mock; done | median)

export OPENAI_BASE_URL="http://127.0.0.1:$mock/v1" GROQ_BASE_URL="http://127.0.0.1:$mock/v1"
export ANTHROPIC_BASE_URL="http://127.0.0.1:$mock" OPENAI_API_KEY=sk-bench GROQ_API_KEY=sk-bench ANTHROPIC_API_KEY=sk-bench
./target/release/triage serve --config triage.toml --addr "127.0.0.1:$((tport + 10))" --http-addr "127.0.0.1:$tport" --data-dir "$work/data" >"$work/triage.log" 2>&1 &
wait_http "http://127.0.0.1:$tport/readyz"
run "http://127.0.0.1:$tport/v1/chat/completions" triage >/dev/null # warm-up: breakers, pools
through=$(for _ in $(seq "$runs"); do run "http://127.0.0.1:$tport/v1/chat/completions" triage; done | median)

litellm="- -"
if [ "${LITELLM:-1}" != 0 ]; then
  venv=${LITELLM_VENV:-target/litellm-venv}
  [ -x "$venv/bin/litellm" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "litellm[proxy]"; }
  cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_base: http://127.0.0.1:$mock/v1
      api_key: sk-bench
YAML
  LITELLM_MASTER_KEY=$TOKEN "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$lport" >"$work/litellm.log" 2>&1 &
  wait_http "http://127.0.0.1:$lport/health/liveliness"
  run "http://127.0.0.1:$lport/v1/chat/completions" mock >/dev/null
  litellm=$(for _ in $(seq "$runs"); do run "http://127.0.0.1:$lport/v1/chat/completions" mock; done | median)
  lver=$("$venv/bin/pip" show litellm | awk '/^Version/ {print $2}')
fi
echo "| path (wrk -t2 -c32, ${secs} s, median of $runs) | RPS | p99 ms |"
echo "| --- | --- | --- |"
read -r dr dp <<<"$direct"; read -r tr tp <<<"$through"; read -r lr lp <<<"$litellm"
echo "| nginx mock directly | $dr | $dp |"
echo "| triage /v1/chat/completions → mock | $tr | $tp |"
echo "| LiteLLM ${lver:-} proxy → mock | $lr | $lp |"
awk -v d="$dr" -v t="$tr" -v l="$lr" 'BEGIN {printf "triage = %.1f %% of the mock; ", 100 * t / d; if (l + 0 > 0) printf "%.0fx LiteLLM\n", t / l; else print ""}'
