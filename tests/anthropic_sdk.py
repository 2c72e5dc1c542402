"""The Anthropic-compatible door (/v1/messages) driven by the official `anthropic` Python
package (run by .ci/run).

usage: python tests/anthropic_sdk.py PATH/TO/triage

Starts the mock provider and `triage serve` exactly as tests/openai_sdk.py does (its `Triage`
helper, a client token required), and calls /v1/messages through the SDK: unary, streamed,
with a tool call, an unknown model, and a wrong key. Loopback only; stops by itself.
"""
import pathlib
import sys

import anthropic

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from openai_sdk import TOKEN, Provider, Triage, run  # noqa: E402


def main():
    with Triage(sys.argv[1], feedback=False) as t:
        # The SDK sends its key as x-api-key, which triage accepts like a bearer token.
        client = anthropic.Anthropic(base_url=t.base, api_key=TOKEN, max_retries=0, timeout=20)
        msgs = [{"role": "user", "content": "Translate 'good morning' into French."}]

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

        def wrong_key():
            bad = anthropic.Anthropic(base_url=t.base, api_key="not-the-token-at-all", max_retries=0, timeout=20)
            try:
                bad.messages.create(model="triage", max_tokens=8, messages=msgs)
            except anthropic.AuthenticationError as e:
                assert e.status_code == 401, e
                return
            raise AssertionError("a wrong key must be a 401")

        run([("unary", unary), ("streaming", streaming), ("tool call", tool_call),
             ("tool call, streamed", tool_call_streamed), ("unknown model", unknown_model),
             ("wrong key", wrong_key)])


if __name__ == "__main__":
    main()
