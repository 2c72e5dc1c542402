"""The HTTP front door driven by the official `openai` Python package (run by .ci/run).

usage: python tests/openai_sdk.py PATH/TO/triage

Starts a mock OpenAI-compatible provider on 127.0.0.1, then `triage serve` on 127.0.0.1:0 with
its HTTP front door pointed at the mock and a client token required, and calls it through the
SDK: unary, streaming, models, a pinned tier, an invalid model, feedback, tool calls (unary and
streamed) and a wrong key (401). Loopback only; stops by itself.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

REPO = pathlib.Path(__file__).resolve().parent.parent


class Provider(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    last_body = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Provider.last_body = body
        if body.get("tools") and body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            # The way OpenAI streams a call: name first, arguments in fragments.
            for delta in [
                {"tool_calls": [{"index": 0, "id": "call_s", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Lyon"}'}}]},
            ]:
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
            self.wfile.write(b'data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}]}\n\n')
            self.wfile.write(b"data: [DONE]\n\n")
            return
        if body.get("tools"):
            call = {"id": "call_u", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'}}
            answer = {
                "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4},
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for piece in ["Bon", "jour"]:
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode())
            self.wfile.write(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n')
            self.wfile.write(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n')
            self.wfile.write(b"data: [DONE]\n\n")
            return
        answer = {
            "choices": [{"message": {"role": "assistant", "content": f"echo from {body['model']}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


TOKEN = "sdk-client-token-0123456789"


class Triage:
    """The mock provider and `triage serve` in front of it (both doors on 127.0.0.1:0, client
    token TOKEN required); a context manager that stops both. Shared with anthropic_sdk.py."""

    def __init__(self, binary, feedback=True):
        self.binary, self.feedback = binary, feedback

    def __enter__(self):
        self.provider = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
        threading.Thread(target=self.provider.serve_forever, daemon=True).start()
        tmp = pathlib.Path(tempfile.mkdtemp())
        tiers = ""
        for name, i, o in [("fast", 0.1, 0.4), ("standard", 0.4, 1.6), ("frontier", 3.0, 15.0)]:
            tiers += (
                f'\n[[tiers]]\nname = "{name}"\ninput_usd_per_mtok = {i}\noutput_usd_per_mtok = {o}\n'
                f'chain = [{{ provider = "mock", model = "mock-{name}" }}]\n'
            )
        feedback = f"data_dir = \"{tmp / 'data'}\"" if self.feedback else "enabled = false"
        (tmp / "triage.toml").write_text(
            f'[model]\nclassifier = "{REPO / "models/classifier.json"}"\nembeddings = "{REPO / "models/embeddings"}"\n'
            f"watch_interval_ms = 0\n[feedback]\n{feedback}\n[policy]\nexploration_rate = 0.0\n"
            f'[auth]\ntokens = [{{ name = "sdk", env = "TRIAGE_SDK_TOKEN" }}]\n'
            f'[providers.mock]\nkind = "openai"\nbase_url = "http://127.0.0.1:{self.provider.server_port}"\n' + tiers
        )
        self.server = subprocess.Popen(
            [self.binary, "serve", "--config", str(tmp / "triage.toml"), "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TRIAGE_LOG": "warn", "TRIAGE_SDK_TOKEN": TOKEN},
        )
        self.base = None
        for line in self.server.stderr:
            if line.startswith("triage HTTP front door on "):
                self.base = f"http://{line.split()[5]}"
                break
        if not self.base:
            self.__exit__(None, None, None)
            raise RuntimeError("the server did not start its HTTP front door")
        threading.Thread(target=lambda: [None for _ in self.server.stderr], daemon=True).start()
        return self

    def __exit__(self, *_):
        self.server.terminate()
        self.server.wait(timeout=10)
        self.provider.shutdown()


def run(checks):
    """Runs every check, reports each, and exits non-zero if any failed."""
    passed, failed = 0, 0
    for name, fn in checks:
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception as e:  # report every check, then fail the run
            failed += 1
            print(f"FAIL {name}: {e!r}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def main():
    with Triage(sys.argv[1]) as t:
        base = f"{t.base}/v1"
        client = openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=20)
        msgs = [{"role": "user", "content": "Translate 'good morning' into French."}]

        def unary():
            raw = client.chat.completions.with_raw_response.create(model="triage", messages=msgs)
            r = raw.parse()
            assert r.choices[0].message.content.startswith("echo from mock-"), r
            assert r.usage.total_tokens == 8, r.usage
            extra = r.model_extra["triage"]
            assert raw.headers["x-triage-decision-id"] == extra["decision_id"], (raw.headers, extra)

        def streaming():
            stream = client.chat.completions.create(model="triage", messages=msgs, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "Bonjour", text

        def pinned():
            r = client.chat.completions.create(model="triage:frontier", messages=msgs)
            assert r.model_extra["triage"]["tier"] == "frontier"
            assert r.choices[0].message.content == "echo from mock-frontier"

        def models():
            ids = [m.id for m in client.models.list()]
            assert ids == ["triage", "triage:fast", "triage:standard", "triage:frontier"], ids

        def invalid_model():
            try:
                client.chat.completions.create(model="gpt-4", messages=msgs)
            except openai.NotFoundError as e:
                assert "triage:<tier>" in str(e), e
                return
            raise AssertionError("an unknown model must be a 404, as OpenAI answers it")

        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

        def tool_call():
            r = client.chat.completions.create(model="triage", messages=msgs, tools=tools, tool_choice="required")
            assert r.choices[0].finish_reason == "tool_calls", r
            call = r.choices[0].message.tool_calls[0]
            assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_u", "get_weather", {"city": "Nice"}), call
            assert Provider.last_body["tools"] == tools and Provider.last_body["tool_choice"] == "required", Provider.last_body
            # The next turn sends the call and its result back; both reach the provider as sent.
            follow = msgs + [r.choices[0].message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": "21C"}]
            client.chat.completions.create(model="triage", messages=follow, tools=tools)
            sent = Provider.last_body["messages"]
            assert sent[1]["tool_calls"][0]["id"] == "call_u" and sent[2] == {"role": "tool", "content": "21C", "tool_call_id": "call_u"}, sent

        def tool_call_streamed():
            stream = client.chat.completions.create(model="triage", messages=msgs, tools=tools, stream=True)
            calls, finish = {}, None
            for c in stream:
                if not c.choices:
                    continue
                for d in c.choices[0].delta.tool_calls or []:
                    entry = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
                    entry["name"] += d.function.name or ""
                    entry["arguments"] += d.function.arguments or ""
                finish = c.choices[0].finish_reason or finish
            assert finish == "tool_calls", finish
            assert calls == {0: {"id": "call_s", "name": "get_weather", "arguments": '{"city": "Lyon"}'}}, calls

        def feedback():
            r = client.chat.completions.create(model="triage", messages=msgs)
            req = urllib.request.Request(
                f"{base}/feedback", method="POST",
                headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
                data=json.dumps({"decision_id": r.model_extra["triage"]["decision_id"], "quality": 1.0}).encode(),
            )
            ack = json.loads(urllib.request.urlopen(req, timeout=10).read())
            assert ack["duplicate"] is False, ack

        def wrong_key():
            bad = openai.OpenAI(base_url=base, api_key="not-the-token-at-all", max_retries=0, timeout=20)
            try:
                bad.chat.completions.create(model="triage", messages=msgs)
            except openai.AuthenticationError as e:
                assert e.status_code == 401, e
                return
            raise AssertionError("a wrong key must be a 401")

        run([("unary", unary), ("streaming", streaming), ("pinned tier", pinned),
             ("models", models), ("invalid model", invalid_model), ("feedback", feedback),
             ("tool call", tool_call), ("tool call, streamed", tool_call_streamed),
             ("wrong key", wrong_key)])


if __name__ == "__main__":
    main()
