//! OpenAI-compatible chat completions (`POST {base}/chat/completions`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ChatRequest, ChatResponse, EventStream, Parsed, ProviderError, Tally, post_json, post_sse,
};

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Msg<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

fn parse_chunk(data: &str, tally: &mut Tally) -> Parsed {
    if data == "[DONE]" {
        return Parsed::Done;
    }
    let Ok(c) = serde_json::from_str::<Chunk>(data) else {
        return Parsed::Error;
    };
    if let Some(u) = c.usage {
        tally.input_tokens = u.prompt_tokens;
        tally.output_tokens = u.completion_tokens;
    }
    let mut text = String::new();
    for ch in c.choices {
        if let Some(f) = ch.finish_reason {
            tally.finish_reason = Some(f);
        }
        if let Some(t) = ch.delta.and_then(|d| d.content) {
            text.push_str(&t);
        }
    }
    if text.is_empty() {
        Parsed::Skip
    } else {
        Parsed::Delta(text)
    }
}

fn body<'a>(model: &'a str, req: &'a ChatRequest, stream: bool) -> Body<'a> {
    Body {
        model,
        messages: req
            .messages
            .iter()
            .map(|m| Msg {
                role: &m.role,
                content: &m.content,
            })
            .collect(),
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        stop: &req.stop,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    }
}

pub(super) async fn stream(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    model: &str,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<EventStream, ProviderError> {
    let headers: Vec<(&str, String)> = key
        .map(|k| ("authorization", format!("Bearer {k}")))
        .into_iter()
        .collect();
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    post_sse(
        http,
        &url,
        &headers,
        &body(model, req, true),
        timeout,
        parse_chunk,
    )
    .await
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

pub(super) async fn complete(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    model: &str,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<ChatResponse, ProviderError> {
    let body = body(model, req, false);
    let headers: Vec<(&str, String)> = key
        .map(|k| ("authorization", format!("Bearer {k}")))
        .into_iter()
        .collect();
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let a: Answer = post_json(http, &url, &headers, &body, timeout).await?;
    let choice = a
        .choices
        .into_iter()
        .next()
        .ok_or(ProviderError::Malformed)?;
    let usage = a.usage.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
    });
    Ok(ChatResponse {
        text: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason.unwrap_or_else(|| "other".into()),
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}
