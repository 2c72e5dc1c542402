//! Anthropic Messages (`POST {base}/v1/messages`): the system prompt is its own field,
//! `max_tokens` is required, answers come as content blocks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ChatMessage, ChatRequest, ChatResponse, EventStream, Parsed, ProviderError, Role, Tally,
    ToolCall, ToolChoice, post_json, post_sse,
};

/// Anthropic requires `max_tokens`; used when the caller gives none.
const DEFAULT_MAX_TOKENS: u32 = 1024;
const API_VERSION: &str = "2023-06-01";

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
}

/// A message's content blocks: tool results become `tool_result` blocks (in a user turn),
/// assistant tool calls become `tool_use` blocks.
fn blocks(m: &ChatMessage) -> Vec<Value> {
    let mut out = Vec::new();
    match (&m.tool_call_id, m.role) {
        (Some(id), Role::Tool) => {
            out.push(json!({"type": "tool_result", "tool_use_id": id, "content": m.content}));
        }
        _ => {
            if !m.content.is_empty() {
                out.push(json!({"type": "text", "text": m.content}));
            }
        }
    }
    for c in &m.tool_calls {
        // Arguments were checked to be a JSON object when the request was validated.
        let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
        out.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
    }
    out
}

/// The conversation without system messages, as alternating turns: Anthropic has only
/// user and assistant roles, so tool results join the user side and consecutive turns of
/// one side are merged.
fn messages(req: &ChatRequest) -> Vec<Value> {
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let role = if m.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        let content = blocks(m);
        match turns.last_mut() {
            Some((r, c)) if *r == role => c.extend(content),
            _ => turns.push((role, content)),
        }
    }
    turns
        .into_iter()
        .map(|(role, content)| match content.as_slice() {
            // A lone text block is sent as plain text, the form every Anthropic version takes.
            [b] if b["type"] == "text" => json!({"role": role, "content": b["text"]}),
            _ => json!({"role": role, "content": content}),
        })
        .collect()
}

fn tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    }
}

#[derive(Deserialize)]
struct Answer {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Anthropic's stop reasons in OpenAI's vocabulary.
fn finish_reason(stop: Option<&str>) -> String {
    match stop {
        Some("end_turn") | Some("stop_sequence") => "stop",
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "other",
    }
    .into()
}

/// One streamed event (message_start, content_block_delta, message_delta, message_stop, ...).
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<EventMessage>,
    #[serde(default)]
    delta: Option<EventDelta>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    content_block: Option<Block>,
}

#[derive(Deserialize)]
struct EventMessage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EventDelta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

fn parse_event(data: &str, tally: &mut Tally) -> Parsed {
    let Ok(e) = serde_json::from_str::<Event>(data) else {
        return Parsed::Error;
    };
    match e.kind.as_str() {
        "message_start" => {
            if let Some(u) = e.message.and_then(|m| m.usage) {
                tally.input_tokens = u.input_tokens;
            }
            Parsed::Skip
        }
        "content_block_start" => {
            if let Some(b) = e.content_block.filter(|b| b.kind == "tool_use") {
                tally.tool_blocks.push(e.index);
                let n = tally.tool_calls.len();
                let call = tally.call(n);
                call.id = b.id.unwrap_or_default();
                call.name = b.name.unwrap_or_default();
            }
            Parsed::Skip
        }
        "content_block_delta" => {
            let Some(d) = e.delta else {
                return Parsed::Skip;
            };
            if let Some(j) = d.partial_json {
                // Content blocks are numbered across text and tool use alike.
                if let Some(n) = tally.tool_blocks.iter().position(|b| *b == e.index) {
                    tally.call(n).arguments.push_str(&j);
                }
                return Parsed::Skip;
            }
            match d.text {
                Some(t) if !t.is_empty() => Parsed::Delta(t),
                _ => Parsed::Skip,
            }
        }
        "message_delta" => {
            if let Some(r) = e.delta.and_then(|d| d.stop_reason) {
                tally.finish_reason = Some(finish_reason(Some(&r)));
            }
            if let Some(u) = e.usage {
                tally.output_tokens = u.output_tokens;
            }
            Parsed::Skip
        }
        "message_stop" => {
            for c in &mut tally.tool_calls {
                // A call without arguments streams no JSON at all.
                if c.arguments.is_empty() {
                    c.arguments = "{}".into();
                }
            }
            Parsed::Done
        }
        "error" => Parsed::Error,
        _ => Parsed::Skip,
    }
}

fn body<'a>(model: &'a str, req: &'a ChatRequest, stream: bool) -> Body<'a> {
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    Body {
        model,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: messages(req),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: &req.stop,
        stream,
        tools: req
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if !t.description.is_empty() {
                    v["description"] = json!(t.description);
                }
                v
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(tool_choice),
    }
}

fn headers(key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("anthropic-version", API_VERSION.to_string())];
    if let Some(k) = key {
        h.push(("x-api-key", k.to_string()));
    }
    h
}

fn url(base_url: &str) -> String {
    format!("{}/v1/messages", base_url.trim_end_matches('/'))
}

pub(super) async fn complete(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    model: &str,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<ChatResponse, ProviderError> {
    let a: Answer = post_json(
        http,
        &url(base_url),
        &headers(key),
        &body(model, req, false),
        timeout,
    )
    .await?;
    let text: String = a
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    let usage = a.usage.unwrap_or(Usage {
        input_tokens: 0,
        output_tokens: 0,
    });
    let tool_calls = a
        .content
        .into_iter()
        .filter(|b| b.kind == "tool_use")
        .map(|b| ToolCall {
            id: b.id.unwrap_or_default(),
            name: b.name.unwrap_or_default(),
            arguments: b.input.unwrap_or_else(|| json!({})).to_string(),
        })
        .collect();
    Ok(ChatResponse {
        tool_calls,
        text,
        finish_reason: finish_reason(a.stop_reason.as_deref()),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    })
}

pub(super) async fn stream(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    model: &str,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<EventStream, ProviderError> {
    post_sse(
        http,
        &url(base_url),
        &headers(key),
        &body(model, req, true),
        timeout,
        parse_event,
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn stop_reasons_map_to_openai_vocabulary() {
        assert_eq!(super::finish_reason(Some("end_turn")), "stop");
        assert_eq!(super::finish_reason(Some("max_tokens")), "length");
        assert_eq!(super::finish_reason(Some("tool_use")), "tool_calls");
        assert_eq!(super::finish_reason(None), "other");
    }
}
