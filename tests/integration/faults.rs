//! Misbehaving providers on loopback: a member that hangs, one that sends SSE keep-alives
//! only, one that trickles bytes, a half-open probe answered 400 or cancelled. Every door
//! must be answered by the next member within the call's deadline, and a breaker always
//! probes again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triage::chain::Gateway;
use triage::proto::v1::CompleteRequest;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway::{collect_req, gateway_config, http_server, openai_sse, req, server};

/// How a raw TCP mock misbehaves after reading the request head.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Accepts, reads, never answers.
    Hang,
    /// Sends a 200 SSE head, then a comment line every 50 ms, never content.
    KeepAlives,
    /// Sends a 200 SSE head, then one byte of a never-ending `data:` line every 50 ms.
    Trickle,
}

/// A provider on 127.0.0.1:0 that misbehaves; it stops by itself after 10 s. Returns its
/// base URL and a counter of connections it saw close (the upstream request dropped).
async fn bad_provider(how: Misbehave) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = closed.clone();
    tokio::spawn(async move {
        let stop = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(stop);
        loop {
            let (mut sock, _) = tokio::select! {
                a = listener.accept() => a.unwrap(),
                () = &mut stop => return,
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                let deadline = Instant::now() + Duration::from_secs(10);
                if !matches!(how, Misbehave::Hang) && sock.write_all(head.as_bytes()).await.is_err()
                {
                    return;
                }
                let trickle = b"data: {\"choices\":[{\"delta\":{\"content\":\"never ends";
                let mut i = 0;
                while Instant::now() < deadline {
                    let piece = match how {
                        Misbehave::Hang => String::new(),
                        Misbehave::KeepAlives => chunk(": keep-alive\n\n"),
                        Misbehave::Trickle => {
                            let b = trickle[i % trickle.len()] as char;
                            i += 1;
                            chunk(&b.to_string())
                        }
                    };
                    // A write (or, for the hang, a read) fails once triage drops the request.
                    let gone = if piece.is_empty() {
                        matches!(
                            tokio::time::timeout(Duration::from_millis(50), sock.read(&mut buf))
                                .await,
                            Ok(Ok(0) | Err(_))
                        )
                    } else {
                        let r = sock.write_all(piece.as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        r.is_err()
                    };
                    if gone {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (url, closed)
}

/// The first member misbehaves, the second (OpenAI format too) answers: a 3 s call deadline,
/// a first-content deadline of 500 ms.
async fn chain_with(
    how: Misbehave,
) -> (
    triage::config::Config,
    MockServer,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (bad, closed) = bad_provider(how).await;
    let good = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_partial_json(
            serde_json::json!({"stream": true}),
        ))
        .respond_with(openai_sse(&["saved", " by two"], true))
        .mount(&good)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": "saved by two"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3}
        })))
        .mount(&good)
        .await;
    let mut c = gateway_config(&bad, &good.uri());
    c.providers[1].kind = triage::providers::Kind::Openai;
    c.gateway.call_timeout = std::time::Duration::from_millis(3_000);
    c.gateway.attempt_timeout = std::time::Duration::from_millis(3_000);
    c.gateway.first_content_timeout = std::time::Duration::from_millis(500);
    c.gateway.max_retries = 0;
    (c, good, closed)
}

#[tokio::test]
async fn a_hanging_member_leaves_time_for_the_next_over_grpc_and_http() {
    let (c, _good, closed) = chain_with(Misbehave::Hang).await;
    let s = server(c.clone()).await;
    let t = Instant::now();
    let r = s.client().await.complete(req()).await.unwrap().into_inner();
    assert_eq!(r.text, "saved by two");
    assert_eq!(r.provider, "backup");
    assert!(
        r.attempts[0].outcome.contains("timed out"),
        "{:?}",
        r.attempts
    );
    // Its equal share of the 3 s deadline, then the second member.
    assert!(
        t.elapsed() < Duration::from_millis(2_900),
        "{:?}",
        t.elapsed()
    );

    let (base, _stop) = http_server(c, None).await;
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "triage", "messages": [{"role": "user", "content": "Say hi."}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "saved by two",
        "{body}"
    );
    // The abandoned attempts' connections were closed, not left hanging.
    let t = Instant::now();
    while closed.load(std::sync::atomic::Ordering::SeqCst) < 2
        && t.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn keep_alives_and_trickled_bytes_are_not_content() {
    for how in [Misbehave::KeepAlives, Misbehave::Trickle] {
        let (c, _good, closed) = chain_with(how).await;
        let s = server(c.clone()).await;
        let t = Instant::now();
        let (first, pieces, done, err) = collect_req(&s, req()).await;
        assert!(first && err.is_none(), "{err:?}");
        assert_eq!(pieces.concat(), "saved by two");
        let done = done.unwrap();
        assert_eq!(done.provider, "backup");
        assert!(
            done.attempts[0].outcome.contains("timed out"),
            "{:?}",
            done.attempts
        );
        assert!(
            t.elapsed() < Duration::from_millis(2_000),
            "{:?}",
            t.elapsed()
        );

        let (base, _stop) = http_server(c, None).await;
        let text = reqwest::Client::new()
            .post(format!("{base}/chat/completions"))
            .json(&serde_json::json!({"model": "triage", "stream": true, "messages": [{"role": "user", "content": "Say hi."}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("saved") && text.trim_end().ends_with("data: [DONE]"),
            "{text}"
        );
        // The silent member's upstream request was dropped, not left open.
        let t = Instant::now();
        while closed.load(std::sync::atomic::Ordering::SeqCst) < 2
            && t.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }
}

#[tokio::test]
async fn the_caller_s_deadline_is_answered_deadline_exceeded() {
    let (bad, _) = bad_provider(Misbehave::Hang).await;
    let (bad2, _) = bad_provider(Misbehave::Hang).await;
    let mut c = gateway_config(&bad, &bad2);
    c.providers[1].kind = triage::providers::Kind::Openai;
    c.gateway.call_timeout = std::time::Duration::from_millis(5_000);
    c.gateway.attempt_timeout = std::time::Duration::from_millis(5_000);
    let s = server(c).await;
    let mut request = tonic::Request::new(req());
    request.set_timeout(Duration::from_millis(800));
    let t = Instant::now();
    let err = s.client().await.complete(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("deadline"), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
}

/// A provider whose breaker opens after two failures and cools down for 200 ms.
fn probe_config(primary: &str, backup: &str) -> triage::config::Config {
    let mut c = gateway_config(primary, backup);
    c.gateway.max_retries = 0;
    c.gateway.breaker_window = 2;
    c.gateway.breaker_min_calls = 2;
    c.gateway.breaker_failure_rate = 0.5;
    c.gateway.breaker_cooldown = std::time::Duration::from_millis(200);
    c
}

fn breaker(g: &Gateway, provider: &str) -> &'static str {
    g.health()
        .into_iter()
        .find(|h| h.provider == provider)
        .map_or("none", |h| h.breaker.name())
}

#[tokio::test]
async fn a_half_open_probe_answered_400_or_cancelled_lets_the_next_call_probe() {
    use triage::providers::ChatRequest;
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    // Two 500s open the breaker; then the probe gets a 400 (the caller's fault), then the
    // provider is healthy again.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": "back"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}
        })))
        .mount(&a)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&b)
        .await;
    let c = probe_config(&a.uri(), &b.uri());
    let g = Gateway::from_config(&c).unwrap().unwrap();
    let chain = &c.tiers[0].chain[..1];
    let chat = ChatRequest {
        messages: vec![triage::providers::ChatMessage {
            role: triage::providers::Role::User,
            content: "hi".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let far = || Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        assert!(g.run(chain, &chat, false, far()).await.is_err());
    }
    assert_eq!(breaker(&g, "primary"), "open");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The probe: a 400 says nothing about the provider, and must not keep it half-open.
    let e = g.run(chain, &chat, false, far()).await.unwrap_err();
    assert!(
        matches!(e, triage::chain::ChainError::Invalid { .. }),
        "{e:?}"
    );
    assert_eq!(breaker(&g, "primary"), "half_open");
    let ok = g.run(chain, &chat, false, far()).await.unwrap();
    assert_eq!(ok.response.text, "back");
    assert_eq!(breaker(&g, "primary"), "closed");

    // A probe cancelled mid-call (its caller went away) releases the probe too.
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&slow)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(600))
                .set_body_json(serde_json::json!({"choices": [{"message": {"content": "late"}, "finish_reason": "stop"}]})),
        )
        .mount(&slow)
        .await;
    let mut c = probe_config(&slow.uri(), &b.uri());
    c.gateway.attempt_timeout = std::time::Duration::from_millis(5_000);
    let g = Gateway::from_config(&c).unwrap().unwrap();
    let chain = &c.tiers[0].chain[..1];
    for _ in 0..2 {
        assert!(g.run(chain, &chat, false, far()).await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        g.run(chain, &chat, false, far()),
    )
    .await;
    assert!(cancelled.is_err(), "the probe was still in flight");
    // Without the release this call would skip the provider ("circuit open") for good.
    let next = g.run(chain, &chat, false, far()).await.unwrap();
    assert_eq!(next.response.text, "late");
    assert!(
        !next
            .attempts
            .iter()
            .any(|a| a.outcome.contains("circuit open")),
        "{:?}",
        next.attempts
    );
}

#[tokio::test]
async fn attempts_are_answered_once() {
    // A hang then a good member: exactly one answer, and the stream ends after `done`.
    let (c, good, _) = chain_with(Misbehave::Hang).await;
    let s = server(c).await;
    let mut request: CompleteRequest = req();
    request.route.as_mut().unwrap().request_id = Some("once".into());
    let (_, pieces, done, err) = collect_req(&s, request).await;
    assert!(err.is_none() && done.is_some());
    assert_eq!(pieces.concat(), "saved by two");
    assert_eq!(good.received_requests().await.unwrap().len(), 1);
}
