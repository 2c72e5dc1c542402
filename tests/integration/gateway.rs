//! Complete against local mock providers (both wire formats): success, fallbacks, retries,
//! timeouts, malformed bodies, refused connections, invalid requests.

use std::sync::Arc;

use tonic::Code;
use triage::chain::Gateway;
use triage::config::{Config, ModelRef};
use triage::proto::v1::{CompleteRequest, Message, RouteRequest};
use triage::providers::{Kind, Provider};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{Server, config};

fn openai_ok(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5}
    }))
}

fn anthropic_ok(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 20, "output_tokens": 7}
    }))
}

/// Every tier's chain is [primary (OpenAI format), backup (Anthropic format)].
pub(crate) fn gateway_config(primary: &str, backup: &str) -> Config {
    let mut c = config();
    c.providers = vec![
        Provider {
            name: "primary".into(),
            kind: Kind::Openai,
            base_url: primary.into(),
            api_key_env: Some("HOME".into()),
        },
        Provider {
            name: "backup".into(),
            kind: Kind::Anthropic,
            base_url: backup.into(),
            api_key_env: None,
        },
    ];
    for t in &mut c.tiers {
        t.chain = vec![
            ModelRef {
                provider: "primary".into(),
                model: format!("{}-a", t.name),
            },
            ModelRef {
                provider: "backup".into(),
                model: format!("{}-b", t.name),
            },
        ];
    }
    c.gateway.attempt_timeout = std::time::Duration::from_millis(400);
    c.gateway.max_retries = 1;
    c.gateway.backoff_initial = std::time::Duration::from_millis(5);
    c.gateway.backoff_max = std::time::Duration::from_millis(10);
    c.gateway.max_retry_after = std::time::Duration::from_millis(1_500);
    c
}

pub(crate) async fn server(c: Config) -> Server {
    let g = Gateway::from_config(&c).unwrap().map(Arc::new);
    Server::start_full(c, None, g).await
}

pub(crate) fn req() -> CompleteRequest {
    CompleteRequest {
        route: Some(RouteRequest {
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "Be brief.".into(),
                    ..Default::default()
                },
                Message {
                    role: "user".into(),
                    content: "Hello! How are you today?".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        max_tokens: Some(50),
        temperature: Some(0.2),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_first_member_answers_with_the_key_from_the_environment() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let home = std::env::var("HOME").unwrap();
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(header("authorization", format!("Bearer {home}").as_str()))
        .and(body_partial_json(
            serde_json::json!({"max_tokens": 50, "temperature": 0.2}),
        ))
        .respond_with(openai_ok("fine, thanks"))
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_ok("never"))
        .expect(0)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let r = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(
        (
            r.text.as_str(),
            r.provider.as_str(),
            r.finish_reason.as_str()
        ),
        ("fine, thanks", "primary", "stop")
    );
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.attempts.len()),
        (12, 5, 1)
    );
    let d = r.decision.unwrap();
    assert_eq!(r.model, format!("{}-a", d.tier));
    assert!(r.cost_usd > 0.0);
}

#[tokio::test]
async fn a_500_retries_then_falls_back_to_the_other_wire_format() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(serde_json::json!({"system": "Be brief.", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello! How are you today?"}]})))
        .respond_with(anthropic_ok("hi from backup"))
        .expect(1)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let r = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(
        (
            r.text.as_str(),
            r.provider.as_str(),
            r.finish_reason.as_str()
        ),
        ("hi from backup", "backup", "length")
    );
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["server error (HTTP 500)", "server error (HTTP 500)", "ok"]
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_on_the_same_member() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(openai_ok("after the wait"))
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_ok("never"))
        .expect(0)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let r = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(r.text, "after the wait");
    assert_eq!(
        r.attempts[0].outcome,
        "rate limited (HTTP 429), retry after 1 s"
    );
}

#[tokio::test]
async fn timeouts_malformed_bodies_and_refused_connections_move_on() {
    for case in ["timeout", "malformed", "refused"] {
        let (a, b) = (MockServer::start().await, MockServer::start().await);
        let primary = match case {
            "timeout" => {
                Mock::given(method("POST"))
                    .respond_with(
                        openai_ok("too late").set_delay(std::time::Duration::from_secs(3)),
                    )
                    .mount(&a)
                    .await;
                a.uri()
            }
            "malformed" => {
                Mock::given(method("POST"))
                    .respond_with(ResponseTemplate::new(200).set_body_string("{\"choices\": [oops"))
                    .expect(1)
                    .mount(&a)
                    .await;
                a.uri()
            }
            // Port 1 on loopback: nothing listens there.
            _ => "http://127.0.0.1:1".to_string(),
        };
        Mock::given(method("POST"))
            .respond_with(anthropic_ok("backup answered"))
            .expect(1)
            .mount(&b)
            .await;
        let s = server(gateway_config(&primary, &b.uri())).await;
        let r = s.client().await.complete(req()).await.unwrap().into_inner();
        assert_eq!(r.text, "backup answered", "{case}");
        let first = &r.attempts[0].outcome;
        let want = match case {
            "timeout" => "timed out after 400 ms",
            "malformed" => "malformed response body",
            _ => "connection failed",
        };
        assert_eq!(first, want, "{case}: {:?}", r.attempts);
        b.verify().await;
    }
}

#[tokio::test]
async fn all_members_down_is_unavailable_listing_every_attempt() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .expect(2)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let err = s.client().await.complete(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let m = err.message();
    assert!(m.starts_with("all 4 attempts failed"), "{m}");
    for needle in ["primary/", "HTTP 503", "backup/", "HTTP 502"] {
        assert!(m.contains(needle), "{m}");
    }
}

#[tokio::test]
async fn a_400_is_not_retried_elsewhere() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_string("{\"error\": {\"message\": \"secret internals\"}}"),
        )
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_ok("never"))
        .expect(0)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let err = s.client().await.complete(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("HTTP 400") && err.message().contains("not retried elsewhere"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("secret internals"),
        "provider bodies never reach the caller"
    );
}

#[tokio::test]
async fn bad_sampling_parameters_and_a_missing_gateway_are_refused() {
    let s = server(gateway_config("http://127.0.0.1:1", "http://127.0.0.1:1")).await;
    let mut c = s.client().await;
    let err = c
        .complete(CompleteRequest {
            temperature: Some(3.0),
            ..req()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("temperature"));
    let err = c
        .complete(CompleteRequest {
            route: None,
            ..req()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let plain = Server::start(config()).await;
    let err = plain.client().await.complete(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("[providers.NAME]"));
}

async fn stats(s: &Server) -> triage::proto::v1::StatsResponse {
    s.client()
        .await
        .stats(triage::proto::v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_failing_provider_trips_its_breaker_and_is_skipped() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // Exactly the two calls of the first request (one retry); none after the breaker opens.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_ok("backup"))
        .expect(2)
        .mount(&b)
        .await;
    let mut c = gateway_config(&a.uri(), &b.uri());
    c.gateway.breaker_window = 4;
    c.gateway.breaker_min_calls = 2;
    c.gateway.breaker_cooldown = std::time::Duration::from_millis(60_000);
    let s = server(c).await;
    let first = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(first.attempts.len(), 3);
    let second = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(second.attempts[0].outcome, "skipped: circuit open");
    assert_eq!(second.provider, "backup");
    let st = stats(&s).await;
    let primary = st
        .providers
        .iter()
        .find(|p| p.provider == "primary")
        .unwrap();
    assert_eq!(primary.breaker, "open");
    let backup = st
        .providers
        .iter()
        .find(|p| p.provider == "backup")
        .unwrap();
    assert_eq!((backup.breaker.as_str(), backup.samples), ("closed", 2));
    assert!(backup.latency_ms > 0.0);
}

#[tokio::test]
async fn when_every_breaker_is_open_the_least_recently_failed_is_tried() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // Round 1: primary fails twice, then backup twice: both breakers open. Round 2: both are
    // cooling down, so triage still tries the one that failed first (primary) instead of
    // failing outright.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(3)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(2)
        .mount(&b)
        .await;
    let mut c = gateway_config(&a.uri(), &b.uri());
    c.gateway.breaker_window = 2;
    c.gateway.breaker_min_calls = 2;
    c.gateway.breaker_cooldown = std::time::Duration::from_millis(60_000);
    let s = server(c).await;
    let err = s.client().await.complete(req()).await.unwrap_err();
    assert!(
        err.message().starts_with("all 4 attempts failed"),
        "{}",
        err.message()
    );
    let err = s.client().await.complete(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let m = err.message();
    assert!(m.contains("skipped: circuit open"), "{m}");
    // One real call to primary: its breaker reopens on the failure, so it is not retried.
    assert!(m.contains("HTTP 500"), "{m}");
}

#[tokio::test]
async fn latency_sensitive_requests_take_the_fastest_healthy_member() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // Primary fails the first request (so backup gets timed), then answers slowly.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(openai_ok("slow primary").set_delay(std::time::Duration::from_millis(150)))
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_ok("fast backup"))
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let mut c = s.client().await;
    assert_eq!(
        c.complete(req()).await.unwrap().into_inner().provider,
        "backup"
    );
    assert_eq!(
        c.complete(req()).await.unwrap().into_inner().provider,
        "primary",
        "configured order"
    );
    let mut sensitive = req();
    sensitive.route.as_mut().unwrap().latency_sensitive = true;
    let r = c.complete(sensitive).await.unwrap().into_inner();
    assert_eq!(r.provider, "backup", "lowest latency estimate first");
    let st = stats(&s).await;
    let lat = |p: &str| {
        st.providers
            .iter()
            .find(|h| h.provider == p && !h.model.is_empty())
            .unwrap()
            .latency_ms
    };
    assert!(lat("primary") > lat("backup"), "{:?}", st.providers);
}

pub(crate) fn openai_sse(pieces: &[&str], finish: bool) -> ResponseTemplate {
    let mut body = String::new();
    for p in pieces {
        body.push_str(&format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"delta": {"content": p}}]})
        ));
    }
    if finish {
        body.push_str("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        body.push_str(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        );
        body.push_str("data: [DONE]\n\n");
    }
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

fn anthropic_sse(pieces: &[&str]) -> ResponseTemplate {
    let mut body = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
    );
    for p in pieces {
        let ev = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}});
        body.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
    }
    body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n");
    body.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// Collects a stream of `req()`: (decision seen first, text pieces, done, final error).
async fn collect(
    s: &Server,
) -> (
    bool,
    Vec<String>,
    Option<triage::proto::v1::CompleteDone>,
    Option<tonic::Status>,
) {
    collect_req(s, req()).await
}

/// Collects a stream of `request`.
pub(crate) async fn collect_req(
    s: &Server,
    request: CompleteRequest,
) -> (
    bool,
    Vec<String>,
    Option<triage::proto::v1::CompleteDone>,
    Option<tonic::Status>,
) {
    use triage::proto::v1::complete_chunk::Kind;
    let mut stream = s
        .client()
        .await
        .complete_stream(request)
        .await
        .unwrap()
        .into_inner();
    let (mut first_is_decision, mut pieces, mut done, mut err) = (false, Vec::new(), None, None);
    let mut n = 0;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                match chunk.kind.unwrap() {
                    Kind::Decision(_) => first_is_decision = n == 0,
                    Kind::Delta(t) => pieces.push(t),
                    Kind::Done(d) => done = Some(d),
                }
                n += 1;
            }
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    (first_is_decision, pieces, done, err)
}

#[tokio::test]
async fn complete_stream_sends_the_decision_then_pieces_then_a_summary() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(body_partial_json(
            serde_json::json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(openai_sse(&["Hel", "lo"], true))
        .expect(1)
        .mount(&a)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let (first, pieces, done, err) = collect(&s).await;
    assert!(first && err.is_none(), "{err:?}");
    assert_eq!(pieces, ["Hel", "lo"]);
    let d = done.unwrap();
    assert_eq!(
        (
            d.provider.as_str(),
            d.finish_reason.as_str(),
            d.input_tokens,
            d.output_tokens
        ),
        ("primary", "stop", 9, 2)
    );
}

#[tokio::test]
async fn complete_stream_falls_back_transparently_before_the_first_piece() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(serde_json::json!({"stream": true})))
        .respond_with(anthropic_sse(&["Bon", "jour"]))
        .expect(1)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let (first, pieces, done, err) = collect(&s).await;
    assert!(first && err.is_none(), "{err:?}");
    assert_eq!(pieces, ["Bon", "jour"]);
    let d = done.unwrap();
    assert_eq!(
        (
            d.provider.as_str(),
            d.finish_reason.as_str(),
            d.input_tokens,
            d.output_tokens
        ),
        ("backup", "stop", 11, 3)
    );
    assert_eq!(d.attempts.len(), 3);
}

#[tokio::test]
async fn a_stream_cut_mid_answer_ends_with_an_error_saying_what_was_delivered() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    // Two pieces, then the body ends with no finish and no [DONE]: a dropped connection.
    Mock::given(method("POST"))
        .respond_with(openai_sse(&["Hel", "lo"], false))
        .expect(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(anthropic_sse(&["never"]))
        .expect(0)
        .mount(&b)
        .await;
    let s = server(gateway_config(&a.uri(), &b.uri())).await;
    let (first, pieces, done, err) = collect(&s).await;
    assert!(first);
    assert_eq!(pieces, ["Hel", "lo"], "what was delivered stays delivered");
    assert!(done.is_none(), "no summary after an interruption");
    let err = err.expect("never a silent truncation");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("interrupted after 2 tokens from primary/")
            && err.message().contains("not resumed"),
        "{}",
        err.message()
    );
}

/// triage with its HTTP front door on 127.0.0.1:0; returns the HTTP base URL.
pub(crate) async fn http_server(
    c: Config,
    fb: Option<Arc<triage::feedback::Feedback>>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut d = crate::common::doors(c, fb).await;
    (format!("{}/v1", d.http), d.stop.take().unwrap())
}

#[tokio::test]
async fn the_http_front_door_speaks_openai_chat_completions() {
    triage::providers::install_tls_provider();
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .and(body_partial_json(serde_json::json!({"stream": true})))
        .respond_with(openai_sse(&["str", "eam"], true))
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(openai_ok("plain answer"))
        .mount(&a)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let limits = triage::feedback::FeedbackLimits {
        decision_queue: 64,
        outcome_queue: 64,
        batch: 8,
        max_store_bytes: None,
    };
    let fb =
        triage::feedback::Feedback::start(dir.path(), limits, Default::default(), false).unwrap();
    let (base, _stop) = http_server(gateway_config(&a.uri(), &b.uri()), Some(fb.clone())).await;
    let http = reqwest::Client::new();
    let msgs = serde_json::json!([{"role": "user", "content": "Hello there"}]);

    let r = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "triage", "messages": msgs}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-triage-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "plain answer");
    assert_eq!(v["triage"]["decision_id"], header.as_str());
    assert_eq!(v["usage"]["total_tokens"], 17);
    // The gateway's own record of the call lands behind its decision: never an orphan, and
    // facts only (no verdict), so training cannot mistake "answered" for "good enough".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let call = loop {
        let found = fb
            .store()
            .outcomes()
            .map(Result::unwrap)
            .find(|o| o.decision_id == header && o.source == "gateway");
        if let Some(o) = found {
            break o;
        }
        assert!(std::time::Instant::now() < deadline, "no gateway outcome");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!call.orphan, "{call:?}");
    assert_eq!((call.success, call.quality), (None, None));
    assert!(call.latency_ms.is_some() && call.cost_usd.is_some() && call.input_tokens.is_some());

    let pinned: serde_json::Value = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "triage:frontier", "messages": msgs}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pinned["triage"]["tier"], "frontier");

    let sse = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "triage", "messages": msgs, "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = sse.text().await.unwrap();
    assert!(
        text.contains("\"content\":\"str\"")
            && text.contains("\"content\":\"eam\"")
            && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );

    let bad = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4", "messages": msgs}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
    let e: serde_json::Value = bad.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("triage:<tier>"),
        "{e}"
    );

    let models: serde_json::Value = http
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "triage",
            "triage:fast",
            "triage:standard",
            "triage:frontier"
        ]
    );

    let fbr: serde_json::Value = http
        .post(format!("{base}/feedback"))
        .json(&serde_json::json!({"decision_id": header, "quality": 0.9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The decision is logged asynchronously, so it may or may not be in the store yet (orphan).
    assert_eq!(fbr["duplicate"], false, "{fbr}");
    let bad_q = http
        .post(format!("{base}/feedback"))
        .json(&serde_json::json!({"decision_id": header, "quality": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_q.status(), 400);

    // A body beyond server.max_request_bytes is a 413 naming the body, not a 400.
    let huge = http
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .body(format!("{{\"model\": \"triage\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}", "x".repeat(5 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let e: serde_json::Value = huge.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().starts_with("body:"),
        "{e}"
    );

    // The router's own refusals come in OpenAI's error shape too.
    for (method, path, status) in [
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::GET, "/chat/completions", 405),
        (reqwest::Method::DELETE, "/models", 405),
    ] {
        let r = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string(), "{method} {path}: {e}");
    }
}
