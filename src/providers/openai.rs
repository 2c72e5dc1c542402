//! OpenAI-compatible chat completions (`POST {base}/chat/completions`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ChatRequest, ChatResponse, ProviderError, post_json};

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
    let body = Body {
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
    };
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
