//! OpenAI-compatible chat completions (`POST {base}/chat/completions`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use serde_json::{Value, json};

use super::{
    ChatMessage, ChatRequest, ChatResponse, EventStream, Parsed, ProviderError, Tally, ToolCall,
    ToolChoice, post_json, post_sse,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
}

// Borrowed wire structs: the conversation (up to the prompt limit) is serialized straight from
// the request, never copied per attempt.
#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    /// `null` for an assistant turn that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction<'a>,
}

#[derive(Serialize)]
struct WireToolFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    parameters: &'a Value,
}

fn message(m: &ChatMessage) -> Msg<'_> {
    Msg {
        role: m.role.as_str(),
        content: (!m.content.is_empty() || m.tool_calls.is_empty()).then_some(m.content.as_str()),
        tool_call_id: m.tool_call_id.as_deref(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| WireCall {
                id: &c.id,
                kind: "function",
                function: WireFunction {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
    }
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
    #[serde(default)]
    tool_calls: Vec<ChunkToolCall>,
}

/// A fragment of a streamed tool call: the first names it, the rest add argument text.
#[derive(Deserialize)]
struct ChunkToolCall {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
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
        let Some(delta) = ch.delta else { continue };
        if let Some(t) = delta.content {
            text.push_str(&t);
        }
        for frag in delta.tool_calls {
            let call = tally.call(frag.index);
            if let Some(id) = frag.id {
                call.id = id;
            }
            if let Some(f) = frag.function {
                if let Some(n) = f.name {
                    call.name.push_str(&n);
                }
                if let Some(a) = f.arguments {
                    call.arguments.push_str(&a);
                }
            }
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
        messages: req.messages.iter().map(message).collect(),
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        stop: &req.stop,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        tools: req
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireToolFunction {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
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
    #[serde(default)]
    tool_calls: Vec<AnswerToolCall>,
}

#[derive(Deserialize)]
struct AnswerToolCall {
    #[serde(default)]
    id: String,
    function: AnswerFunction,
}

#[derive(Deserialize)]
struct AnswerFunction {
    name: String,
    #[serde(default)]
    arguments: String,
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
        tool_calls: choice
            .message
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect(),
        text: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason.unwrap_or_else(|| "other".into()),
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::{Parsed, Tally, parse_chunk};

    #[test]
    fn a_wild_tool_call_index_cannot_allocate_and_lands_on_the_next_call() {
        let mut tally = Tally::default();
        let first = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{"}}]}}]}"#;
        let wild = r#"{"choices":[{"delta":{"tool_calls":[{"index":4000000000,"id":"b","function":{"name":"g"}}]}}]}"#;
        let more =
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}}]}"#;
        for chunk in [first, wild, more] {
            assert!(matches!(parse_chunk(chunk, &mut tally), Parsed::Skip));
        }
        let calls: Vec<_> = tally
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(calls, [("a", "f", "{}"), ("b", "g", "")]);
    }
}
