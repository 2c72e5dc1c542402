//! Tool definitions and tool calls through both wire formats, unary and streamed, over gRPC
//! and the HTTP front door; and the refusals for malformed tools.

use serde_json::{Value, json};
use tonic::Code;
use triage::proto::v1::{CompleteRequest, Message, RouteRequest, Tool, ToolCall, ToolChoice};
use wiremock::matchers::{body_partial_json, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway::{collect_req, gateway_config, http_server, server};

const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;

/// A conversation with one finished tool round trip, two tools, and a required call.
fn tool_req() -> CompleteRequest {
    CompleteRequest {
        route: Some(RouteRequest {
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "Use tools.".into(),
                    ..Default::default()
                },
                Message {
                    role: "user".into(),
                    content: "What is the weather in Paris?".into(),
                    ..Default::default()
                },
                Message {
                    role: "assistant".into(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments_json: r#"{"city":"Paris"}"#.into(),
                    }],
                    ..Default::default()
                },
                Message {
                    role: "tool".into(),
                    content: "18C, cloudy".into(),
                    tool_call_id: "call_1".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        tools: vec![
            Tool {
                name: "get_weather".into(),
                description: "Current weather".into(),
                parameters_json: WEATHER_SCHEMA.into(),
            },
            Tool {
                name: "get_time".into(),
                description: String::new(),
                parameters_json: String::new(),
            },
        ],
        tool_choice: Some(ToolChoice {
            mode: "required".into(),
            function: String::new(),
        }),
        max_tokens: Some(64),
        ..Default::default()
    }
}

/// The JSON body of the only request `mock` received.
async fn received(mock: &MockServer) -> Value {
    let reqs = mock.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "exactly one call reached the provider");
    serde_json::from_slice(&reqs[0].body).unwrap()
}

fn weather_schema() -> Value {
    serde_json::from_str(WEATHER_SCHEMA).unwrap()
}

#[tokio::test]
async fn tools_and_tool_turns_reach_an_openai_provider_and_its_calls_come_back() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12}
        })))
        .expect(1)
        .mount(&a)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let r = s
        .client()
        .await
        .complete(tool_req())
        .await
        .unwrap()
        .into_inner();
    let body = received(&a).await;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "content": "18C, cloudy", "tool_call_id": "call_1"}
        ])
    );
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": weather_schema()}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
        ])
    );
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(r.finish_reason, "tool_calls");
    assert_eq!(r.text, "");
    let calls: Vec<_> = r
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments_json.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("call_2", "get_time", "{}"),
            ("call_3", "get_weather", r#"{"city":"Oslo"}"#)
        ]
    );
}

#[tokio::test]
async fn tools_are_translated_for_anthropic_and_tool_use_blocks_come_back_as_calls() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // The OpenAI-format primary refuses (404), so the Anthropic-format backup answers.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 40, "output_tokens": 9}
        })))
        .expect(1)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let mut req = tool_req();
    req.tool_choice = Some(ToolChoice {
        mode: "function".into(),
        function: "get_weather".into(),
    });
    let r = s.client().await.complete(req).await.unwrap().into_inner();
    let body = received(&b).await;
    assert_eq!(body["system"], "Use tools.");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C, cloudy"}]}
        ])
    );
    assert_eq!(
        body["tools"],
        json!([
            {"name": "get_weather", "description": "Current weather", "input_schema": weather_schema()},
            {"name": "get_time", "input_schema": {"type": "object"}}
        ])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        (
            r.provider.as_str(),
            r.finish_reason.as_str(),
            r.text.as_str()
        ),
        ("backup", "tool_calls", "Let me check.")
    );
    assert_eq!(r.tool_calls.len(), 1);
    let c = &r.tool_calls[0];
    assert_eq!((c.id.as_str(), c.name.as_str()), ("toolu_1", "get_weather"));
    let args: Value = serde_json::from_str(&c.arguments_json).unwrap();
    assert_eq!(args, json!({"city": "Oslo"}));
}

/// An OpenAI stream whose tool calls arrive in fragments, two calls interleaved by index.
fn openai_tool_sse() -> ResponseTemplate {
    let events = [
        json!({"choices": [{"delta": {"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [
            {"index": 1, "id": "call_10", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 8}}),
    ];
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// An Anthropic stream: a text block, then two tool_use blocks, one with streamed JSON.
fn anthropic_tool_sse() -> ResponseTemplate {
    let events = [
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 33, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}}),
        json!({"type": "message_stop"}),
    ];
    let body: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

fn calls(d: &triage::proto::v1::CompleteDone) -> Vec<(String, String, Value)> {
    d.tool_calls
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.name.clone(),
                serde_json::from_str(&c.arguments_json).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn streamed_tool_call_fragments_are_joined_for_both_wire_formats() {
    // OpenAI format answers.
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"stream": true, "tool_choice": "required"}),
        ))
        .respond_with(openai_tool_sse())
        .expect(1)
        .mount(&a)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let (first, pieces, done, err) = collect_req(&s, tool_req()).await;
    assert!(first && err.is_none(), "{err:?}");
    assert!(pieces.is_empty(), "{pieces:?}");
    let d = done.unwrap();
    assert_eq!(
        (d.finish_reason.as_str(), d.input_tokens, d.output_tokens),
        ("tool_calls", 21, 8)
    );
    assert_eq!(
        calls(&d),
        [
            (
                "call_9".to_string(),
                "get_weather".to_string(),
                json!({"city": "Paris"})
            ),
            ("call_10".to_string(), "get_time".to_string(), json!({}))
        ]
    );

    // Anthropic format answers after the OpenAI member refuses.
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"stream": true, "tool_choice": {"type": "any"}}),
        ))
        .respond_with(anthropic_tool_sse())
        .expect(1)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let (first, pieces, done, err) = collect_req(&s, tool_req()).await;
    assert!(first && err.is_none(), "{err:?}");
    assert_eq!(pieces, ["Checking."]);
    let d = done.unwrap();
    assert_eq!(
        (
            d.provider.as_str(),
            d.finish_reason.as_str(),
            d.output_tokens
        ),
        ("backup", "tool_calls", 15)
    );
    assert_eq!(
        calls(&d),
        [
            (
                "toolu_1".to_string(),
                "get_weather".to_string(),
                json!({"city": "Paris"})
            ),
            ("toolu_2".to_string(), "get_time".to_string(), json!({}))
        ]
    );
}

#[tokio::test]
async fn malformed_tools_are_invalid_argument_naming_the_field_and_no_provider_is_called() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&a)
        .await;
    let mut c = gateway_config(&a.uri(), &b.uri());
    c.server.max_tools = 2;
    let s = server(c).await;
    let mut client = s.client().await;
    type Edit = fn(&mut CompleteRequest);
    let cases: [(Edit, &str); 9] = [
        (
            |r| r.tools[0].name = "get weather".into(),
            "tools[0].name: \"get weather\" must be 1 to 64 characters",
        ),
        (
            |r| r.tools[1].name = "get_weather".into(),
            "tools[1].name: \"get_weather\" is defined twice",
        ),
        (
            |r| r.tools[0].parameters_json = "[1, 2]".into(),
            "tools[0].parameters_json: must be a JSON object",
        ),
        (
            |r| r.tools[1].parameters_json = "{oops".into(),
            "tools[1].parameters_json: is not valid JSON",
        ),
        (
            |r| {
                r.tools.push(Tool {
                    name: "third".into(),
                    ..Default::default()
                })
            },
            "tools: 3 tools exceed the limit of 2 (server.max_tools)",
        ),
        (
            |r| {
                r.tool_choice = Some(ToolChoice {
                    mode: "function".into(),
                    function: "launch".into(),
                })
            },
            "tool_choice.function: \"launch\" is not one of the request's tools",
        ),
        (
            |r| r.tool_choice.as_mut().unwrap().mode = "always".into(),
            "tool_choice.mode: unknown mode \"always\"",
        ),
        (
            |r| r.route.as_mut().unwrap().messages[3].tool_call_id = String::new(),
            "messages[3].tool_call_id: is required for role \"tool\"",
        ),
        (
            |r| {
                r.route.as_mut().unwrap().messages[2].tool_calls[0].arguments_json =
                    "\"Paris\"".into()
            },
            "messages[2].tool_calls[0].arguments_json: must be a JSON object",
        ),
    ];
    for (edit, want) in cases {
        let mut r = tool_req();
        edit(&mut r);
        let unary = client.complete(r.clone()).await.unwrap_err();
        assert_eq!(unary.code(), Code::InvalidArgument, "{want}");
        assert!(
            unary.message().contains(want),
            "{} / {want}",
            unary.message()
        );
        let streamed = client.complete_stream(r).await.unwrap_err();
        assert_eq!(streamed.code(), Code::InvalidArgument, "{want}");
        assert!(streamed.message().contains(want), "{}", streamed.message());
    }
}

#[tokio::test]
async fn the_http_front_door_passes_tools_through_in_openai_shape() {
    triage::providers::install_tls_provider();
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(openai_tool_sse())
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_5", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12}
        })))
        .expect(1)
        .mount(&a)
        .await;
    let (base, _stop) = http_server(gateway_config(&a.uri(), &b.uri()), None).await;
    let http = reqwest::Client::new();
    let body = json!({
        "model": "triage",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "user", "content": "And in Rome?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": weather_schema()}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
    });
    let v: Value = http
        .post(format!("{base}/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null, "{v}");
    assert_eq!(
        msg["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"})
    );
    assert_eq!(msg["tool_calls"][0]["id"], "call_5");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let sent: Vec<Value> = a
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        sent[0]["messages"][1]["tool_calls"],
        body["messages"][1]["tool_calls"]
    );
    assert_eq!(sent[0]["messages"][2]["tool_call_id"], "call_1");
    assert_eq!(sent[0]["tools"], body["tools"]);
    assert_eq!(sent[0]["tool_choice"], body["tool_choice"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = http
        .post(format!("{base}/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .collect();
    assert_eq!(with_calls.len(), 1, "{text}");
    assert_eq!(
        with_calls[0]["choices"][0]["delta"]["tool_calls"],
        json!([
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"index": 1, "id": "call_10", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ])
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));

    let mut custom = body.clone();
    custom["tools"] = json!([{"type": "custom", "custom": {"name": "x"}}]);
    let bad = http
        .post(format!("{base}/chat/completions"))
        .json(&custom)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tools[0].type: \"custom\" is not supported"),
        "{e}"
    );

    let mut legacy = body.clone();
    legacy["functions"] = json!([{"name": "get_weather", "parameters": {}}]);
    let bad = http
        .post(format!("{base}/chat/completions"))
        .json(&legacy)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("functions: the deprecated function-calling fields"),
        "{e}"
    );
}
