"""The Anthropic-compatible door (/v1/messages) driven by the official `anthropic` Python
package (run by .ci/run).

usage: python tests/anthropic_sdk.py PATH/TO/triage

Starts the same mock OpenAI-compatible provider as tests/openai_sdk.py on 127.0.0.1, then
`triage serve` on 127.0.0.1:0, and calls /v1/messages through the SDK: unary, streamed, with a
tool call, and an unknown model. Loopback only; stops by itself.
"""
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer

import anthropic

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from openai_sdk import REPO, Provider  # noqa: E402


def main():
    binary = sys.argv[1]
    provider = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    tmp = pathlib.Path(tempfile.mkdtemp())
    tiers = ""
    for name, i, o in [("fast", 0.1, 0.4), ("standard", 0.4, 1.6), ("frontier", 3.0, 15.0)]:
        tiers += (
            f'\n[[tiers]]\nname = "{name}"\ninput_usd_per_mtok = {i}\noutput_usd_per_mtok = {o}\n'
            f'chain = [{{ provider = "mock", model = "mock-{name}" }}]\n'
        )
    (tmp / "triage.toml").write_text(
        f'[model]\nclassifier = "{REPO / "models/classifier.json"}"\nembeddings = "{REPO / "models/embeddings"}"\n'
        f"watch_interval_ms = 0\n[feedback]\nenabled = false\n[policy]\nexploration_rate = 0.0\n"
        f'[providers.mock]\nkind = "openai"\nbase_url = "http://127.0.0.1:{provider.server_port}"\n' + tiers
    )
    server = subprocess.Popen(
        [binary, "serve", "--config", str(tmp / "triage.toml"), "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TRIAGE_LOG": "warn"},
    )
    passed, failed = 0, 0
    try:
        base = None
        for line in server.stderr:
            if line.startswith("triage HTTP front door on "):
                base = f"http://{line.split()[5]}"
                break
        assert base, "the server did not start its HTTP front door"
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        client = anthropic.Anthropic(base_url=base, api_key="not-needed", max_retries=0, timeout=20)
        msgs = [{"role": "user", "content": "Translate 'good morning' into French."}]

        def check(name, fn):
            nonlocal passed, failed
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception as e:  # report every check, then fail the run
                failed += 1
                print(f"FAIL {name}: {e!r}")

        def unary():
            r = client.messages.create(model="triage", max_tokens=64, system="Be brief.", messages=msgs)
            assert r.content[0].type == "text" and r.content[0].text.startswith("echo from mock-"), r
            assert r.stop_reason == "end_turn", r
            assert r.usage.input_tokens == 5 and r.usage.output_tokens == 3, r.usage
            assert Provider.last_body["messages"][0] == {"role": "system", "content": "Be brief."}, Provider.last_body

        def streaming():
            with client.messages.stream(model="triage", max_tokens=64, messages=msgs) as s:
                text = "".join(s.text_stream)
                final = s.get_final_message()
            assert text == "Bonjour", text
            assert final.stop_reason == "end_turn", final

        tools = [{"name": "get_weather", "description": "Current weather",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

        def tool_call():
            r = client.messages.create(model="triage", max_tokens=64, messages=msgs, tools=tools)
            use = [b for b in r.content if b.type == "tool_use"]
            assert r.stop_reason == "tool_use" and use and use[0].input == {"city": "Nice"}, r
            # The result goes back as a tool_result block and reaches the provider as a tool message.
            client.messages.create(model="triage", max_tokens=64, tools=tools, messages=msgs + [
                {"role": "assistant", "content": [{"type": "tool_use", "id": use[0].id, "name": "get_weather", "input": {"city": "Nice"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "sunny"}]},
            ])
            sent = Provider.last_body["messages"]
            assert any(m.get("role") == "tool" and m.get("tool_call_id") == use[0].id for m in sent), sent

        def tool_call_streamed():
            with client.messages.stream(model="triage", max_tokens=64, messages=msgs, tools=tools) as s:
                final = s.get_final_message()
            use = [b for b in final.content if b.type == "tool_use"]
            assert final.stop_reason == "tool_use" and use[0].input == {"city": "Lyon"}, final

        def unknown_model():
            try:
                client.messages.create(model="claude-3-opus", max_tokens=8, messages=msgs)
            except anthropic.NotFoundError as e:
                assert "triage:<tier>" in str(e), e
                return
            raise AssertionError("an unknown model must be a 404")

        for name, fn in [("unary", unary), ("streaming", streaming), ("tool call", tool_call),
                         ("tool call, streamed", tool_call_streamed), ("unknown model", unknown_model)]:
            check(name, fn)
    finally:
        server.terminate()
        server.wait(timeout=10)
        provider.shutdown()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
