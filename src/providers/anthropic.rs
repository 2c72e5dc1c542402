//! Anthropic Messages (`POST {base}/v1/messages`): the system prompt is its own field,
//! `max_tokens` is required, answers come as content blocks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ChatRequest, ChatResponse, EventStream, Parsed, ProviderError, Tally, post_json, post_sse,
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
    messages: Vec<Msg<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
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
        "content_block_delta" => match e.delta.and_then(|d| d.text) {
            Some(t) if !t.is_empty() => Parsed::Delta(t),
            _ => Parsed::Skip,
        },
        "message_delta" => {
            if let Some(r) = e.delta.and_then(|d| d.stop_reason) {
                tally.finish_reason = Some(finish_reason(Some(&r)));
            }
            if let Some(u) = e.usage {
                tally.output_tokens = u.output_tokens;
            }
            Parsed::Skip
        }
        "message_stop" => Parsed::Done,
        "error" => Parsed::Error,
        _ => Parsed::Skip,
    }
}

fn body<'a>(model: &'a str, req: &'a ChatRequest, stream: bool) -> Body<'a> {
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    Body {
        model,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        // Tool messages have no plain-text equivalent here; they are sent as user turns.
        messages: req
            .messages
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| Msg {
                role: if m.role == "assistant" {
                    "assistant"
                } else {
                    "user"
                },
                content: &m.content,
            })
            .collect(),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: &req.stop,
        stream,
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
    Ok(ChatResponse {
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
