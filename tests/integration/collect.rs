//! `triage collect` end to end: the binary against two mock providers and a mock judge on
//! loopback, with references for some rows and the judge for the rest; failures recorded and
//! retried by the next run; an interrupted run resumed without loss or duplicates.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::repo;

fn answer(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500}
    }))
}

async fn reply_when(server: &MockServer, needle: &str, text: &str) {
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(body_string_contains(needle))
        .respond_with(answer(text))
        .mount(server)
        .await;
}

fn config(dir: &Path, weak: &str, strong: &str, judge: &str) -> std::path::PathBuf {
    let cfg = dir.join("collect.toml");
    let root = repo();
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
classifier = "{root}/models/classifier.json"
embeddings = "{root}/models/embeddings"
[gateway]
call_timeout_ms = 5000
attempt_timeout_ms = 2000
first_content_timeout_ms = 2000
max_retries = 1
backoff_initial_ms = 5
backoff_max_ms = 10
breaker_window = 1000
breaker_min_calls = 1000
[[tiers]]
name = "fast"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
chain = [{{ provider = "weak", model = "w" }}]
[[tiers]]
name = "frontier"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 20.0
chain = [{{ provider = "strong", model = "s" }}]
[providers.weak]
kind = "openai"
base_url = "{weak}"
[providers.strong]
kind = "openai"
base_url = "{strong}"
[providers.judge]
kind = "openai"
base_url = "{judge}"
"#,
            root = root.display()
        ),
    )
    .unwrap();
    cfg
}

fn collect(cfg: &Path, prompts: &Path, out: &Path, concurrency: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_triage"));
    c.env("TRIAGE_LOG", "warn")
        .env_remove("TRIAGE_CONFIG")
        .arg("collect")
        .arg("--config")
        .arg(cfg)
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .args([
            "--judge",
            "judge/j",
            "--concurrency",
            &concurrency.to_string(),
        ]);
    c
}

fn rows(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        assert!(out.insert(id.clone(), v).is_none(), "{id} written twice");
    }
    out
}

async fn calls_containing(server: &MockServer, needle: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_scores_by_reference_and_judge_and_retries_failures_on_the_next_run() {
    let (weak, strong, judge) = (
        MockServer::start().await,
        MockServer::start().await,
        MockServer::start().await,
    );
    reply_when(&weak, "2+2", "It is 4.").await;
    reply_when(&weak, "haiku", "rain rain rain").await;
    reply_when(
        &strong,
        "haiku",
        "Soft rain on tin roofs / the street lamps hum along / night exhales slowly",
    )
    .await;
    // The strong provider fails the "flaky" prompt twice (the call and its retry) in the
    // first run, then answers.
    Mock::given(method("POST"))
        .and(body_string_contains("flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&strong)
        .await;
    reply_when(&strong, "flaky", "The answer is (C).").await;
    reply_when(&strong, "2+2", "4").await;
    reply_when(&strong, "Capital", "Paris").await;
    reply_when(&strong, "6*7", "6 times 7 is 42.").await;
    // Anything else: a weak answer.
    for s in [&weak, &strong] {
        Mock::given(method("POST"))
            .respond_with(answer("The answer is (A). Probably 41."))
            .with_priority(10)
            .mount(s)
            .await;
    }
    reply_when(&judge, "rain rain rain", "Repetitive. Rating: [[3]]").await;
    reply_when(&judge, "tin roofs", "Vivid. Rating: [[9]]").await;
    // The joke's answers get a reply without a rating: never a guessed score.
    reply_when(&judge, "joke", "It is fine I guess.").await;

    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        [
            r#"{"id": "m1", "prompt": "What is 6*7?", "reference": 42}"#,
            r#"{"id": "m2", "prompt": "What is 2+2?", "reference": "4", "category": "maths"}"#,
            r#"{"id": "c1", "messages": [{"role": "system", "content": "Answer with a letter."}, {"role": "user", "content": "Capital of France? (A) Lyon (B) Paris"}], "reference": "Paris", "match": "contains"}"#,
            r#"{"id": "f1", "prompt": "A flaky one: pick (A), (B) or (C).", "reference": "C"}"#,
            r#"{"id": "j1", "prompt": "Write a haiku about rain."}"#,
            r#"{"id": "j2", "prompt": "Tell me a joke."}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.path().join("outcomes.jsonl");
    let cfg = config(dir.path(), &weak.uri(), &strong.uri(), &judge.uri());

    let first = collect(&cfg, &prompts, &out, 2).output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    // Failed prompts make the run fail, saying how to retry.
    assert!(!first.status.success(), "{stderr}");
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    let written = rows(&out);
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        ["c1", "j1", "m1", "m2"],
        "{stderr}"
    );
    let o = |id: &str| written[id]["outcomes"].clone();
    assert_eq!(o("m1"), serde_json::json!({"fast": 0.0, "frontier": 1.0}));
    assert_eq!(o("m2"), serde_json::json!({"fast": 1.0, "frontier": 1.0}));
    assert_eq!(o("c1"), serde_json::json!({"fast": 0.0, "frontier": 1.0}));
    assert_eq!(o("j1"), serde_json::json!({"fast": 0.3, "frontier": 0.9}));
    assert_eq!(written["m2"]["category"], "maths");
    // The routed prompt is the last user message.
    assert_eq!(
        written["c1"]["prompt"],
        "Capital of France? (A) Lyon (B) Paris"
    );
    // Failures: recorded with the reason, not scored.
    let failures = std::fs::read_to_string(dir.path().join("outcomes.failures.jsonl")).unwrap();
    assert!(
        failures.contains("\"f1\"") && failures.contains("503"),
        "{failures}"
    );
    assert!(
        failures.contains("\"j2\"") && failures.contains("no [[rating]]"),
        "{failures}"
    );
    assert_eq!(
        calls_containing(&strong, "flaky").await,
        2,
        "called once and retried once"
    );
    // Answers: one line per tier of every written row, with who answered and what it cost.
    let answers = std::fs::read_to_string(dir.path().join("outcomes.answers.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 8, "{answers}");
    let j1: Vec<serde_json::Value> = answers
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["id"] == "j1")
        .collect();
    assert!(j1.iter().all(|v| {
        v["scored_by"]
            .as_str()
            .unwrap()
            .contains("triage-judge/1 judge/j")
    }));
    let fast = j1.iter().find(|v| v["tier"] == "fast").unwrap();
    assert_eq!(fast["provider"], "weak");
    // 1000 input and 500 output tokens at 1 and 2 USD per million.
    assert!((fast["cost_usd"].as_f64().unwrap() - 0.002).abs() < 1e-12);
    let summary: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["written"], 4);
    assert_eq!(summary["failed"], 2);
    assert_eq!(summary["judge_calls"], 2);

    // The second run calls only the prompts not written: the flaky one now succeeds.
    let weak_before = weak.received_requests().await.unwrap().len();
    let second = collect(&cfg, &prompts, &out, 2).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "j2's judge still gives no rating: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(summary["skipped"], 4, "{summary}");
    assert_eq!(summary["written"], 1, "{summary}");
    assert_eq!(
        weak.received_requests().await.unwrap().len() - weak_before,
        2
    );
    let written = rows(&out);
    assert_eq!(written.len(), 5);
    assert_eq!(
        written["f1"]["outcomes"],
        serde_json::json!({"fast": 0.0, "frontier": 1.0})
    );
    assert!(!written.contains_key("j2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_collect_resumes_without_losing_or_repeating_rows() {
    let (weak, strong, judge) = (
        MockServer::start().await,
        MockServer::start().await,
        MockServer::start().await,
    );
    for s in [&weak, &strong] {
        Mock::given(method("POST"))
            .respond_with(answer("42").set_delay(std::time::Duration::from_millis(150)))
            .mount(s)
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            format!(r#"{{"id": "q{i}", "prompt": "Question {i}: what is 6*7?", "reference": 42}}"#)
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let out = dir.path().join("o.jsonl");
    let cfg = config(dir.path(), &weak.uri(), &strong.uri(), &judge.uri());
    let mut child = collect(&cfg, &prompts, &out, 1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed (SIGKILL, no clean-up) once some rows are written and before all are.
    let start = std::time::Instant::now();
    while rows(&out).len() < 2 && start.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rows(&out).len();
    assert!((2..12).contains(&before), "{before} rows before the kill");
    let again = collect(&cfg, &prompts, &out, 2).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["skipped"], before);
    let all = rows(&out);
    assert_eq!(all.len(), 12);
    assert!(
        all.values()
            .all(|r| r["outcomes"] == serde_json::json!({"fast": 1.0, "frontier": 1.0}))
    );
}
