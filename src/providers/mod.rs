//! Model providers: one file per wire format with private wire structs, behind a closed enum.

mod anthropic;
mod openai;

use std::time::Duration;

use serde::Deserialize;

/// Who wrote a message. Parsed once at the edge; every door and provider reads this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Instructions (OpenAI's `developer` role is the same thing under a newer name).
    System,
    /// The user.
    #[default]
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl Role {
    /// The names accepted on the wire.
    pub const NAMES: [&'static str; 5] = ["system", "developer", "user", "assistant", "tool"];

    /// Parses a wire name; `developer` is a system message.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "system" | "developer" => Self::System,
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "tool" => Self::Tool,
            _ => return None,
        })
    }

    /// The OpenAI wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Whether the message is a conversational turn (counts towards prior turns).
    pub fn is_turn(self) -> bool {
        matches!(self, Self::User | Self::Assistant)
    }
}

/// One message of a chat, provider-neutral.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatMessage {
    /// system, user, assistant or tool.
    pub role: Role,
    /// Text.
    pub content: String,
    /// For a tool result: the call it answers.
    pub tool_call_id: Option<String>,
    /// For an assistant turn: the calls the model made.
    pub tool_calls: Vec<ToolCall>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// Name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments (an object).
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    /// The provider's id for the call.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// A provider-neutral chat request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Most output tokens.
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Functions the model may call.
    pub tools: Vec<ToolDef>,
    /// Whether and which tool the model must call (the provider's default when unset).
    pub tool_choice: Option<ToolChoice>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This function.
    Function(String),
}

/// A provider-neutral completion.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The answer's text.
    pub text: String,
    /// Why generation stopped: stop, length, tool_calls, content_filter or other.
    pub finish_reason: String,
    /// Input tokens as the provider counted them.
    pub input_tokens: u64,
    /// Output tokens as the provider counted them.
    pub output_tokens: u64,
    /// Tool calls the model made.
    pub tool_calls: Vec<ToolCall>,
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The next piece of text.
    Delta(String),
    /// The provider finished; usage as it reported it (0 when it did not).
    Done {
        /// stop, length, tool_calls, content_filter or other.
        finish_reason: String,
        /// Input tokens.
        input_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Tool calls, whole: streamed fragments are joined before they are handed on.
        tool_calls: Vec<ToolCall>,
    },
}

/// Events of one streamed answer; ends after `Done` or an error.
pub type EventStream = tokio::sync::mpsc::Receiver<Result<StreamEvent, ProviderError>>;

/// What a format's parser makes of one SSE `data:` payload.
enum Parsed {
    /// Nothing to forward (keep-alives, bookkeeping events).
    Skip,
    /// Text to forward.
    Delta(String),
    /// The terminal event.
    Done,
    /// The provider reported an error inside the stream.
    Error,
}

/// Running usage and finish reason while a stream is read.
#[derive(Default)]
struct Tally {
    finish_reason: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    /// Tool calls by the provider's index, their arguments joined as fragments arrive.
    tool_calls: Vec<ToolCall>,
    /// Anthropic numbers content blocks across text and tool use: the block of each call.
    tool_blocks: Vec<usize>,
}

impl Tally {
    /// The call at `index`, created empty when first seen. Indexes come from the provider;
    /// one far beyond what was seen is treated as the next, so a bad index cannot allocate.
    fn call(&mut self, index: usize) -> &mut ToolCall {
        let i = index.min(self.tool_calls.len());
        if i == self.tool_calls.len() {
            self.tool_calls.push(ToolCall::default());
        }
        &mut self.tool_calls[i]
    }
}

/// Posts a streaming request and, once the status is good, reads its SSE body on a task,
/// handing each `data:` payload to `parse`. A body that ends without the terminal event is
/// `Interrupted`; a pause longer than `timeout` between chunks is a `Timeout`.
async fn post_sse<B: serde::Serialize>(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: &B,
    timeout: Duration,
    parse: fn(&str, &mut Tally) -> Parsed,
) -> Result<EventStream, ProviderError> {
    let mut req = http.post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = tokio::time::timeout(timeout, req.send())
        .await
        .map_err(|_| {
            ProviderError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
        })?
        .map_err(|e| classify(&e, timeout))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(status_error(status, resp.headers()));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        use tokio_stream::StreamExt;
        let mut bytes = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut tally = Tally::default();
        loop {
            // Whoever reads the events may go away while the provider is silent (a hang,
            // keep-alives): then drop the response, closing the upstream request, at once.
            let next = tokio::select! {
                c = tokio::time::timeout(timeout, bytes.next()) => c,
                () = tx.closed() => return,
            };
            let chunk = match next {
                Err(_) => {
                    let _ = tx
                        .send(Err(ProviderError::Timeout(
                            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        )))
                        .await;
                    return;
                }
                Ok(None) => {
                    let _ = tx.send(Err(ProviderError::Interrupted)).await;
                    return;
                }
                Ok(Some(Err(_))) => {
                    let _ = tx.send(Err(ProviderError::Interrupted)).await;
                    return;
                }
                Ok(Some(Ok(c))) => c,
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let event = match parse(data.trim(), &mut tally) {
                    Parsed::Skip => continue,
                    Parsed::Delta(t) => Ok(StreamEvent::Delta(t)),
                    Parsed::Error => Err(ProviderError::Server(200)),
                    Parsed::Done => Ok(StreamEvent::Done {
                        finish_reason: tally.finish_reason.take().unwrap_or_else(|| "other".into()),
                        input_tokens: tally.input_tokens,
                        output_tokens: tally.output_tokens,
                        tool_calls: std::mem::take(&mut tally.tool_calls),
                    }),
                };
                let end = !matches!(event, Ok(StreamEvent::Delta(_)));
                if tx.send(event).await.is_err() || end {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Why a call failed. Never carries a key or a raw provider body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// No answer within the attempt's deadline.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The connection could not be made.
    #[error("connection failed")]
    Connect,
    /// The provider is overloaded or rate limiting (429), with its Retry-After if any.
    #[error("rate limited (HTTP 429){}", .0.map(|s| format!(", retry after {s} s")).unwrap_or_default())]
    RateLimited(Option<u64>),
    /// A server-side failure (5xx).
    #[error("server error (HTTP {0})")]
    Server(u16),
    /// The request itself is invalid (400, 422): another provider would reject it too.
    #[error("request rejected as invalid (HTTP {0})")]
    InvalidRequest(u16),
    /// Another client-side status (401, 403, 404...): specific to this provider or key.
    #[error("refused (HTTP {0})")]
    Refused(u16),
    /// The body was not the expected shape.
    #[error("malformed response body")]
    Malformed,
    /// The API key's environment variable is not set.
    #[error("API key variable {0} is not set")]
    MissingKey(String),
    /// Anything else from the HTTP client.
    #[error("transport error")]
    Transport,
    /// A stream ended before the provider said it was complete.
    #[error("stream ended before completion")]
    Interrupted,
    /// The caller went away; the upstream request was dropped.
    #[error("cancelled by the caller")]
    Cancelled,
}

impl ProviderError {
    /// A short class for logs and outcomes.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect => "connect",
            Self::RateLimited(_) => "rate_limited",
            Self::Server(_) => "server_error",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Refused(_) => "refused",
            Self::Malformed => "malformed",
            Self::MissingKey(_) => "missing_key",
            Self::Transport => "transport",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the next member of the chain would fail the same way (so stop).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::InvalidRequest(_))
    }

    /// Whether retrying the same provider may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_)
                | Self::Connect
                | Self::RateLimited(_)
                | Self::Server(_)
                | Self::Transport
        )
    }
}

/// The wire formats triage speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// OpenAI-compatible chat completions (OpenAI, Groq, Together, Mistral, vLLM, Ollama, LiteLLM).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// A configured provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Its name in the config.
    pub name: String,
    /// Wire format.
    pub kind: Kind,
    /// Base URL, e.g. `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
}

fn classify(e: &reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
    } else if e.is_connect() {
        ProviderError::Connect
    } else if e.is_decode() || e.is_body() {
        ProviderError::Malformed
    } else {
        ProviderError::Transport
    }
}

fn status_error(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> ProviderError {
    let code = status.as_u16();
    match code {
        429 => ProviderError::RateLimited(
            headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
        ),
        400 | 422 => ProviderError::InvalidRequest(code),
        500..=599 => ProviderError::Server(code),
        _ => ProviderError::Refused(code),
    }
}

/// Sends a JSON body and decodes a JSON answer, mapping every failure to a [`ProviderError`].
async fn post_json<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: &B,
    timeout: Duration,
) -> Result<R, ProviderError> {
    let mut req = http.post(url).timeout(timeout).json(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.map_err(|e| classify(&e, timeout))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(status_error(status, resp.headers()));
    }
    let bytes = resp.bytes().await.map_err(|e| classify(&e, timeout))?;
    serde_json::from_slice(&bytes).map_err(|_| ProviderError::Malformed)
}

impl Provider {
    fn key(&self) -> Result<Option<String>, ProviderError> {
        match &self.api_key_env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Ok(Some(k)),
                _ => Err(ProviderError::MissingKey(var.clone())),
            },
        }
    }

    /// Calls `model` with `req`, giving up after `timeout`.
    pub async fn complete(
        &self,
        http: &reqwest::Client,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        let key = self.key()?;
        match self.kind {
            Kind::Openai => {
                openai::complete(http, &self.base_url, key.as_deref(), model, req, timeout).await
            }
            Kind::Anthropic => {
                anthropic::complete(http, &self.base_url, key.as_deref(), model, req, timeout).await
            }
        }
    }
}

impl Provider {
    /// Starts a streamed call; the returned events end with `Done` or an error.
    pub async fn stream(
        &self,
        http: &reqwest::Client,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        let key = self.key()?;
        match self.kind {
            Kind::Openai => {
                openai::stream(http, &self.base_url, key.as_deref(), model, req, timeout).await
            }
            Kind::Anthropic => {
                anthropic::stream(http, &self.base_url, key.as_deref(), model, req, timeout).await
            }
        }
    }
}

/// Installs the TLS crypto provider once per process (reqwest is built without one).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_chain_does_next() {
        let h = reqwest::header::HeaderMap::new();
        let e = status_error(reqwest::StatusCode::BAD_REQUEST, &h);
        assert!(e.is_final() && !e.is_retryable());
        let e = status_error(reqwest::StatusCode::INTERNAL_SERVER_ERROR, &h);
        assert!(!e.is_final() && e.is_retryable());
        let e = status_error(reqwest::StatusCode::UNAUTHORIZED, &h);
        assert!(
            !e.is_final() && !e.is_retryable(),
            "a bad key is this provider's problem"
        );
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            status_error(reqwest::StatusCode::TOO_MANY_REQUESTS, &h),
            ProviderError::RateLimited(Some(7))
        );
        assert_eq!(
            ProviderError::RateLimited(Some(7)).to_string(),
            "rate limited (HTTP 429), retry after 7 s"
        );
    }

    #[test]
    fn a_missing_key_names_the_variable_not_a_value() {
        let p = Provider {
            name: "x".into(),
            kind: Kind::Openai,
            base_url: "http://127.0.0.1:9".into(),
            api_key_env: Some("TRIAGE_TEST_SURELY_UNSET_KEY".into()),
        };
        let e = p.key().unwrap_err();
        assert_eq!(
            e.to_string(),
            "API key variable TRIAGE_TEST_SURELY_UNSET_KEY is not set"
        );
    }
}
