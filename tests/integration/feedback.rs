//! The feedback path: outcomes over gRPC, durability across kill -9, export, and model reloads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use triage::feedback::{Feedback, FeedbackLimits};
use triage::proto::v1::router_client::RouterClient;
use triage::proto::v1::{Message, OutcomeRequest, OutcomeSource, ReloadModelRequest, RouteRequest};

use crate::common::{Server, config, fixture_rows, model_path, repo};

fn req(text: &str) -> RouteRequest {
    RouteRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tenant: Some("team-a".into()),
        labels: [("app".to_string(), "search".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn outcome(id: &str, quality: f64) -> OutcomeRequest {
    OutcomeRequest {
        decision_id: id.into(),
        source: OutcomeSource::User as i32,
        quality: Some(quality),
        success: Some(quality >= 0.5),
        ..Default::default()
    }
}

fn limits() -> FeedbackLimits {
    FeedbackLimits {
        decision_queue: 1024,
        outcome_queue: 1024,
        batch: 64,
        max_store_bytes: None,
    }
}

#[tokio::test]
async fn outcomes_are_validated_idempotent_and_orphans_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fb = Feedback::start(dir.path(), limits(), Default::default(), false).unwrap();
    let server = Server::start_with(config(), Some(fb.clone())).await;
    let mut c = server.client().await;
    let d = c
        .route(req("Translate into French: good night"))
        .await
        .unwrap()
        .into_inner();
    // The decision is logged off the request path; wait for the writer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fb.store().counts().0 == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ack = c
        .record_outcome(outcome(&d.decision_id, 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.duplicate && !ack.orphan, "{ack:?}");
    let again = c
        .record_outcome(outcome(&d.decision_id, 0.0))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    let judge = OutcomeRequest {
        source: OutcomeSource::Judge as i32,
        ..outcome(&d.decision_id, 0.2)
    };
    assert!(
        !c.record_outcome(judge)
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    let elsewhere = uuid::Uuid::now_v7().to_string();
    assert!(
        c.record_outcome(outcome(&elsewhere, 1.0))
            .await
            .unwrap()
            .into_inner()
            .orphan
    );

    let future = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 3_600_000;
    let bad: Vec<(&str, OutcomeRequest, &str)> = vec![
        ("quality", outcome(&d.decision_id, 1.5), "quality"),
        ("nan", outcome(&d.decision_id, f64::NAN), "quality"),
        ("id", outcome("not-a-uuid", 1.0), "decision_id"),
        (
            "source",
            OutcomeRequest {
                source: 0,
                ..outcome(&d.decision_id, 1.0)
            },
            "source",
        ),
        (
            "cost",
            OutcomeRequest {
                cost_usd: Some(-1.0),
                ..outcome(&d.decision_id, 1.0)
            },
            "cost_usd",
        ),
        (
            "future",
            OutcomeRequest {
                observed_at_unix_ms: Some(future),
                ..outcome(&d.decision_id, 1.0)
            },
            "feedback.max_clock_skew_ms",
        ),
    ];
    for (name, r, needle) in bad {
        let err = c.record_outcome(r).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(needle), "{name}: {}", err.message());
    }
    let c2 = fb.counters();
    assert_eq!(
        c2.outcomes_stored
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(
        c2.outcomes_duplicate
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let mut out = Vec::new();
    fb.store().export(None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["decision"]["tenant"], "team-a");
    assert_eq!(first["decision"]["labels"]["app"], "search");
    assert_eq!(first["decision"]["tier"], d.tier.as_str());
    assert_eq!(first["outcomes"].as_array().unwrap().len(), 2);
    assert!(
        first["decision"].get("prompt").is_none(),
        "prompts are not stored by default"
    );
    assert!(!text.contains("good night"));
}

#[tokio::test]
async fn a_full_decision_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    // A one-slot queue and a burst of decisions: some must be dropped, none may block Route.
    let tiny = FeedbackLimits {
        decision_queue: 1,
        outcome_queue: 16,
        batch: 1,
        max_store_bytes: None,
    };
    let fb = Feedback::start(dir.path(), tiny, Default::default(), false).unwrap();
    let server = Server::start_with(config(), Some(fb.clone())).await;
    let c = server.client().await;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.route(req("hello there")).await.map(|_| ()) })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = c;
    loop {
        let s = c
            .stats(triage::proto::v1::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.decisions_written + s.decisions_dropped == 200 {
            assert_eq!(fb.store().counts().0 as u64, s.decisions_written);
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_burst_beyond_the_queue_is_dropped_and_counted() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let fb = Feedback::start(
        dir.path(),
        FeedbackLimits {
            decision_queue: 1,
            outcome_queue: 1,
            batch: 1,
            max_store_bytes: None,
        },
        Default::default(),
        false,
    )
    .unwrap();
    let f = crate::common::featurizer();
    let rec = |i: u64| triage::feedback::DecisionRecord {
        decision_id: uuid::Uuid::now_v7().to_string(),
        time_unix_ms: i,
        model_version: "m".into(),
        tiers: vec!["fast".into(), "frontier".into()],
        tier: "fast".into(),
        p_sufficient: vec![0.5, 1.0],
        propensity: 1.0,
        schema_fingerprint: f.schema().fingerprint.clone(),
        features: vec![0.0; 4],
        prompt_tokens: 1,
        estimated_cost_usd: 0.0,
        ..Default::default()
    };
    // 5,000 non-blocking sends in a tight loop against a one-slot queue.
    let start = Instant::now();
    for i in 0..5_000 {
        fb.log_decision(rec(i));
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "logging must not block"
    );
    let c = fb.counters();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.decisions_written.load(Relaxed) + c.decisions_dropped.load(Relaxed) < 5_000 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(c.decisions_dropped.load(Relaxed) > 0);
    assert_eq!(
        fb.store().counts().0 as u64,
        c.decisions_written.load(Relaxed)
    );
}

#[tokio::test]
async fn record_outcome_without_feedback_is_a_failed_precondition() {
    let server = Server::start(config()).await;
    let err = server
        .client()
        .await
        .record_outcome(outcome(&uuid::Uuid::now_v7().to_string(), 1.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("feedback.enabled"));
}

fn altered_model(dir: &std::path::Path, name: &str, threshold: f64) -> std::path::PathBuf {
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_path()).unwrap()).unwrap();
    file["version"] = format!("{name}-test").into();
    file["thresholds"][0] = threshold.into();
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec(&file).unwrap()).unwrap();
    p
}

#[tokio::test]
async fn reload_model_swaps_atomically_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.model.reload_dirs = vec![dir.path().to_path_buf()];
    let server = Server::start(cfg).await;
    let mut c = server.client().await;
    let before = c
        .route(req("hello"))
        .await
        .unwrap()
        .into_inner()
        .model_version;
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{}").unwrap();
    let err = c
        .reload_model(ReloadModelRequest {
            path: bad.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("old one keeps serving") && err.message().contains("bad.json"),
        "{}",
        err.message()
    );
    assert_eq!(
        c.route(req("hello"))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        before
    );
    let good = altered_model(dir.path(), "second", 0.0);
    let r = c
        .reload_model(ReloadModelRequest {
            path: good.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "second-test");
    let d = c
        .route(req("Prove the theorem step by step"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.model_version, "second-test");
    assert_eq!(
        d.tier, "fast",
        "threshold 0 on fast routes everything there"
    );
    // A bare file name is looked up in the first reload directory.
    let third = altered_model(dir.path(), "third", 0.0);
    let r = c
        .reload_model(ReloadModelRequest {
            path: third.file_name().unwrap().to_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "third-test");
}

/// A FIFO, /dev/zero, a directory, a huge file or a path outside `model.reload_dirs` never
/// stalls other requests, never grows memory and never tells the caller what exists.
#[cfg(unix)]
#[tokio::test]
async fn hostile_reload_paths_are_refused_at_once_and_never_stall_routing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.json");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.json")).unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut cfg = config();
    cfg.model.reload_dirs = vec![dir.path().to_path_buf()];
    cfg.model.max_model_bytes = 1 << 20;
    let server = Server::start(cfg).await;
    let mut c = server.client().await;
    let before = c
        .route(req("hello"))
        .await
        .unwrap()
        .into_inner()
        .model_version;
    let cases: [(String, &str); 8] = [
        (fifo.display().to_string(), "no readable regular file"),
        ("zero.json".into(), "inside model.reload_dirs"),
        ("/dev/zero".into(), "inside model.reload_dirs"),
        ("/etc/passwd".into(), "inside model.reload_dirs"),
        ("/no/such/dir/model.json".into(), "inside model.reload_dirs"),
        ("../model.json".into(), "inside model.reload_dirs"),
        ("sub".into(), "no readable regular file"),
        (
            "big.json".into(),
            "larger than 1048576 bytes (model.max_model_bytes)",
        ),
    ];
    for (path, want) in cases {
        let mut other = c.clone();
        // Routing goes on while the reload is refused; a stall would hit this bound (a hang
        // guard, far above any real time).
        let (reload, routed) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(
                c.reload_model(ReloadModelRequest { path: path.clone() }),
                other.route(req("still routing?"))
            )
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: reload or route hung"));
        let err = reload.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
        assert!(
            err.message().starts_with("path: "),
            "{path}: {}",
            err.message()
        );
        assert!(err.message().contains(want), "{path}: {}", err.message());
        assert!(!err.message().contains("denied") && !err.message().contains("os error"));
        assert!(routed.is_ok(), "{path}");
    }
    assert_eq!(
        c.route(req("hello"))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        before
    );
}

#[tokio::test]
async fn a_changed_model_file_is_picked_up_by_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let path = altered_model(dir.path(), "watched", 0.5);
    let mut cfg = config();
    cfg.model.classifier = path.clone();
    cfg.model.watch_interval = Some(std::time::Duration::from_millis(50));
    let server = Server::start(cfg).await;
    let mut c = server.client().await;
    assert_eq!(
        c.route(req("hi")).await.unwrap().into_inner().model_version,
        "watched-test"
    );
    // Replace the file atomically, as an operator's deploy would.
    let next = altered_model(dir.path(), "rewatched", 0.5);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::rename(&next, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.route(req("hi")).await.unwrap().into_inner().model_version;
        if v == "rewatched-test" {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the real binary on 127.0.0.1:0 and returns it with the address it printed.
fn spawn_server(data_dir: &std::path::Path) -> (std::process::Child, String) {
    spawn_server_with(data_dir, &[])
}

fn spawn_server_with(
    data_dir: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> (std::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_triage"));
    cmd.current_dir(repo())
        .env("TRIAGE_LOG", "warn")
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    if !extra.iter().any(|a| *a == "--model") {
        cmd.arg("--model").arg(model_path());
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("triage listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test]
async fn acknowledged_outcomes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let (mut child, addr) = spawn_server(&data);
    let mut c = RouterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let prompts: Vec<String> = fixture_rows().into_iter().map(|r| r.prompt).collect();
    let mut acked = Vec::new();
    for i in 0..300 {
        let d = c
            .route(req(&prompts[i % prompts.len()]))
            .await
            .unwrap()
            .into_inner();
        let o = c
            .record_outcome(outcome(&d.decision_id, (i % 2) as f64))
            .await
            .unwrap()
            .into_inner();
        assert!(!o.duplicate);
        acked.push(d.decision_id);
    }
    child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    child.wait().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["logs", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found = std::collections::HashSet::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for o in v["outcomes"].as_array().unwrap() {
            found.insert(o["decision_id"].as_str().unwrap().to_string());
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !found.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged outcomes lost",
        missing.len(),
        acked.len()
    );

    // The store reopens after the crash and keeps serving.
    let (mut child, addr) = spawn_server(&data);
    let mut c = RouterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let d = c.route(req("hello again")).await.unwrap().into_inner();
    let ack = c
        .record_outcome(outcome(&acked[0], 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.duplicate, "the outcome before the crash is still there");
    assert!(!d.decision_id.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Cheapest cost per request at >= 95 % of always-frontier quality on the fixture, for a model.
fn cost_at_quality(model: &triage::classifier::Classifier) -> f64 {
    use triage::train::eval;
    let f = crate::common::featurizer();
    let rows = fixture_rows();
    let p: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            model.score(
                &f.featurize(triage::features::Conversation::single(&r.prompt))
                    .unwrap()
                    .vector,
            )
        })
        .collect();
    let scores: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            vec![
                r.outcomes["small"],
                r.outcomes["medium"],
                r.outcomes["large"],
            ]
        })
        .collect();
    let idx: Vec<usize> = (0..rows.len()).collect();
    eval::cheapest_thresholds(&p, &scores, &[1.0, 3.0, 10.0], &idx, 0.95)
        .expect("always-frontier reaches it")
        .1
        .cost
}

#[tokio::test]
async fn retraining_on_explored_traffic_cuts_cost_at_equal_quality() {
    let dir = tempfile::tempdir().unwrap();
    // A deliberately weak start: heads that know nothing (p = 0.5 everywhere) and thresholds
    // that send everything to the frontier tier.
    let mut weak: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_path()).unwrap()).unwrap();
    for h in weak["heads"].as_array_mut().unwrap() {
        for w in h["weights"].as_array_mut().unwrap() {
            *w = 0.0.into();
        }
        h["intercept"] = 0.0.into();
    }
    // Zeroed gain heads score every tier 1 before calibration; these maps make that ~0.007.
    weak["calibration"] = serde_json::json!([[0.0, -5.0], [0.0, -5.0]]);
    weak["thresholds"] = serde_json::json!([0.6, 0.6, 0.0]);
    weak["version"] = "weak".into();
    let weak_path = dir.path().join("weak.json");
    std::fs::write(&weak_path, serde_json::to_vec(&weak).unwrap()).unwrap();

    let mut cfg = config();
    cfg.model.classifier = weak_path.clone();
    cfg.exploration_rate = 0.5;
    let fb = Feedback::start(
        &dir.path().join("store"),
        limits(),
        Default::default(),
        false,
    )
    .unwrap();
    let server = Server::start_with(cfg, Some(fb.clone())).await;
    let mut c = server.client().await;
    let rows = fixture_rows();
    let mut explored = 0;
    for _round in 0..5 {
        for r in &rows {
            let d = c.route(req(&r.prompt)).await.unwrap().into_inner();
            explored += usize::from(d.explored);
            let model = match d.tier.as_str() {
                "fast" => "small",
                "standard" => "medium",
                _ => "large",
            };
            let q = r.outcomes[model];
            let o = OutcomeRequest {
                quality: Some(q),
                success: Some(q >= 0.5),
                ..outcome(&d.decision_id, q)
            };
            c.record_outcome(o).await.unwrap();
        }
    }
    assert!(explored > 50, "exploration happened ({explored} of 300)");
    // Export (the live store is locked by the server) and retrain from the export.
    let export = dir.path().join("export.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fb.store().counts().0 < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = Vec::new();
    fb.store().export(None, &mut out).unwrap();
    std::fs::write(&export, out).unwrap();

    let f = crate::common::featurizer();
    let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
    let opts = triage::train::logs::LogOptions {
        success_threshold: 0.5,
        max_weight: 50.0,
        max_rows: 0,
    };
    let (logged, stats) = triage::train::logs::read_logs(&[export], &f, &tiers, opts).unwrap();
    assert_eq!(stats.rows, 300, "{stats:?}");
    assert!(
        logged.iter().any(|r| r.weight > 1.5),
        "explored rows carry inverse-propensity weights"
    );
    let weak_model = triage::classifier::Classifier::load(&weak_path, f.schema()).unwrap();
    let train_opts = crate::common::options();
    let (file, report) = triage::train::logs::train_from_logs(
        &f,
        &logged,
        stats,
        None,
        &tiers,
        &train_opts,
        Some(&weak_model),
    )
    .unwrap();
    let h = report.holdout.expect("300 rows allow a time split");
    let cur = h.current_model.expect("the weak model is compared");
    // Over every head, weighted by its rows: one head alone can go either way on a few
    // held-out rows (the weak start is confidently right wherever the cheap tier failed).
    let total = |m: &[triage::train::logs::HeadMetrics]| {
        m.iter().map(|x| x.log_loss * x.rows as f64).sum::<f64>()
    };
    assert!(
        total(&h.new_model) < total(&cur),
        "{:?} vs {:?}",
        h.new_model,
        cur
    );
    let retrained = triage::classifier::Classifier::new(file, f.schema()).unwrap();
    let (before, after) = (cost_at_quality(&weak_model), cost_at_quality(&retrained));
    assert!(
        (before - 10.0).abs() < 1e-9,
        "the weak model needs the frontier for everything: {before}"
    );
    assert!(
        after < 0.8 * before,
        "retrained cost {after} vs weak {before}"
    );
}

#[test]
fn orphan_outcomes_join_decisions_from_another_store() {
    use triage::feedback::{DecisionRecord, OutcomeRecord, Store};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("replica-a"), dir.path().join("replica-b"));
    let f = crate::common::featurizer();
    let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    {
        // Replica A made the decisions; the callers reported outcomes to replica B.
        let sa = Store::open(&a).unwrap();
        let sb = Store::open(&b).unwrap();
        for (i, id) in ids.iter().enumerate() {
            sa.put_decisions(&[DecisionRecord {
                decision_id: id.clone(),
                time_unix_ms: i as u64,
                model_version: "m".into(),
                tiers: tiers.clone(),
                tier: "fast".into(),
                p_sufficient: vec![0.5, 0.6, 1.0],
                propensity: 0.25,
                schema_fingerprint: f.schema().fingerprint.clone(),
                features: f
                    .featurize(triage::features::Conversation::single("hello"))
                    .unwrap()
                    .vector,
                prompt_tokens: 1,
                estimated_cost_usd: 0.0,
                ..Default::default()
            }])
            .unwrap();
            let stored = sb
                .put_outcome(OutcomeRecord {
                    decision_id: id.clone(),
                    source: "user".into(),
                    success: Some(i % 2 == 0),
                    quality: None,
                    ..Default::default()
                })
                .unwrap();
            assert!(stored.orphan);
        }
        sa.flush().unwrap();
        sb.flush().unwrap();
    }
    let opts = triage::train::logs::LogOptions {
        success_threshold: 0.5,
        max_weight: 50.0,
        max_rows: 0,
    };
    let (rows, stats) =
        triage::train::logs::read_logs(&[a.clone(), b.clone()], &f, &tiers, opts).unwrap();
    assert_eq!(
        (stats.rows, stats.orphans_joined, stats.orphans_unmatched),
        (4, 4, 0),
        "{stats:?}"
    );
    assert!(
        rows.iter().all(|r| (r.weight - 4.0).abs() < 1e-9),
        "1 / propensity 0.25"
    );
    assert_eq!(rows.iter().filter(|r| r.success).count(), 2);
    // A row cap keeps the newest rows and counts the older ones it left out.
    let capped = triage::train::logs::LogOptions {
        max_rows: 2,
        ..opts
    };
    let (rows, stats) =
        triage::train::logs::read_logs(&[a.clone(), b.clone()], &f, &tiers, capped).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.time_unix_ms).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!((stats.rows, stats.beyond_cap, stats.decisions), (2, 2, 4));
    // Either store alone cannot make rows: A has no outcomes, B has no decisions.
    assert_eq!(
        triage::train::logs::read_logs(&[a], &f, &tiers, opts)
            .unwrap()
            .1
            .rows,
        0
    );
    let (_, only_b) = triage::train::logs::read_logs(&[b], &f, &tiers, opts).unwrap();
    assert_eq!((only_b.rows, only_b.orphans_unmatched), (0, 4));
}

#[cfg(unix)]
/// The shipped config in `dir` with `server_lines` added to `[server]`, the shipped embeddings
/// and the file watch off, so only the signal can trigger a reload.
fn hup_config(dir: &std::path::Path, server_lines: &str) -> std::path::PathBuf {
    let config = dir.join("triage.toml");
    let text = triage::config::DEFAULT_CONFIG_TOML
        .replacen("[server]\n", &format!("[server]\n{server_lines}"), 1)
        .replace("watch_interval_ms = 2000", "watch_interval_ms = 0")
        .replace(
            "\"models/embeddings\"",
            &format!(
                "{:?}",
                repo().join("models/embeddings").display().to_string()
            ),
        );
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test]
async fn sighup_reloads_the_configured_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = altered_model(dir.path(), "before-hup", 0.5);
    let config = hup_config(dir.path(), "");
    let (mut child, addr) = spawn_server_with(
        &dir.path().join("store"),
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
        ],
    );
    let mut c = RouterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    assert_eq!(
        c.route(req("hi")).await.unwrap().into_inner().model_version,
        "before-hup-test"
    );
    let next = altered_model(dir.path(), "after-hup", 0.5);
    std::fs::rename(&next, &model).unwrap();
    // Without the signal nothing changes (the watch is off).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.route(req("hi")).await.unwrap().into_inner().model_version,
        "before-hup-test"
    );
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.route(req("hi")).await.unwrap().into_inner().model_version;
        if v == "after-hup-test" {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGHUP re-reads the TLS certificate: new connections get the new one, and a broken file
/// keeps the current one serving.
#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    triage::providers::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    };
    let install = |cert: &str, key: &str| {
        for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
            let tmp = dir.path().join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
    };
    let (first_cert, first_key) = make();
    install(&first_cert, &first_key);
    let config = hup_config(
        dir.path(),
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    );
    let (mut child, addr) = spawn_server_with(
        &dir.path().join("store"),
        &["--config".as_ref(), config.as_os_str()],
    );
    let connect = |ca: String| {
        let url = format!("https://{addr}");
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost");
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await?;
            Ok::<_, tonic::transport::Error>(RouterClient::new(channel))
        }
    };
    let mut c = connect(first_cert.clone()).await.unwrap();
    c.route(req("hi")).await.unwrap();
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A broken certificate file: the signal is refused and the current one keeps serving.
    install("not a certificate", &first_key);
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect(first_cert.clone())
        .await
        .unwrap()
        .route(req("hi"))
        .await
        .unwrap();
    let (second_cert, second_key) = make();
    install(&second_cert, &second_key);
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect(second_cert.clone()).await
            && c.route(req("hi")).await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = match connect(first_cert).await {
        Err(_) => true,
        Ok(mut c) => c.route(req("hi")).await.is_err(),
    };
    assert!(old, "a new connection still trusted the old certificate");
    child.kill().unwrap();
    child.wait().unwrap();
}
