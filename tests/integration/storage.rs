//! Storage faults: a disk that fills while serving, and the store opening cleanly afterwards.
//!
//! These need a small file system of their own: a tmpfs mounted for the test, which takes
//! root (CI runs as root and sets `TRIAGE_REQUIRE_TMPFS=1`, so there they cannot be skipped).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tonic::Code;
use triage::feedback::{DecisionRecord, Feedback, FeedbackLimits, Store, StoreOptions};
use triage::proto::v1::{OutcomeRequest, OutcomeSource};

use crate::common::{Server, config};

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("TRIAGE_REQUIRE_TMPFS").is_none(),
                "TRIAGE_REQUIRE_TMPFS is set but a tmpfs could not be mounted"
            );
            eprintln!(
                "skipped: mounting a tmpfs needs root (set TRIAGE_REQUIRE_TMPFS=1 to insist)"
            );
            return None;
        }
        Some(Self { _dir: dir, path })
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn decision(i: usize, dim: usize) -> DecisionRecord {
    DecisionRecord {
        decision_id: uuid::Uuid::now_v7().to_string(),
        time_unix_ms: 1_000 + i as u64,
        model_version: "m".into(),
        tiers: vec!["fast".into(), "frontier".into()],
        tier: "fast".into(),
        p_sufficient: vec![0.5, 1.0],
        propensity: 1.0,
        schema_fingerprint: "fp".into(),
        features: (0..dim + 30).map(|j| ((i * 7 + j) as f32).sin()).collect(),
        prompt_tokens: 12,
        prompt_sha256: format!("{i:064x}"),
        ..Default::default()
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outcome(id: &str) -> OutcomeRequest {
    OutcomeRequest {
        decision_id: id.into(),
        source: OutcomeSource::User as i32,
        quality: Some(1.0),
        ..Default::default()
    }
}

fn open_after(path: &Path) -> Store {
    // The writer threads let go of sled's lock shortly after the last handle drops.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reopen: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the store did not open after space returned: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_decisions_counted_refuses_outcomes_retryably_and_reopens_cleanly() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let path = fs.path.join("store");
    let limits = FeedbackLimits {
        decision_queue: 4_096,
        outcome_queue: 64,
        batch: 256,
        max_store_bytes: None,
    };
    let dim = 256;
    let fb = Feedback::start(
        &path,
        limits,
        StoreOptions {
            embedding_dim: dim,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let server = Server::start_with(config(), Some(fb.clone())).await;
    let mut c = server.client().await;

    // Before the disk fills: one decision with an acknowledged outcome.
    let first = decision(0, dim);
    let first_id = first.decision_id.clone();
    fb.log_decision(first);
    let written = || fb.counters().decisions_written.load(Relaxed);
    let f2 = fb.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the first decision", Duration::from_secs(10), || {
            f2.counters().decisions_written.load(Relaxed) >= 1
        })
    })
    .await
    .unwrap();
    c.record_outcome(outcome(&first_id)).await.unwrap();

    // Fill the disk: decisions keep coming until the writer reports the disk full.
    let f2 = fb.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 1;
        while f2.counters().out_of_space.load(Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the disk never filled: {:?}",
                f2.counters()
            );
            for _ in 0..256 {
                f2.log_decision(decision(i, dim));
                i += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .unwrap();
    let counters = fb.counters();
    assert!(counters.write_errors.load(Relaxed) >= counters.out_of_space.load(Relaxed));
    let before = written();

    // An outcome now is refused as retryable, saying why, and is not acknowledged.
    let mut refused = None;
    for _ in 0..20 {
        match c.record_outcome(outcome(&first_id)).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            // sled may still have room for one small write; fill it further.
            Ok(_) => {
                for i in 0..512 {
                    fb.log_decision(decision(100_000 + i, dim));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let e = refused.expect("outcomes kept being acknowledged on a full disk");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("disk is full"), "{}", e.message());
    let stats = c
        .stats(triage::proto::v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.out_of_space > 0 && stats.write_errors >= stats.out_of_space,
        "{stats:?}"
    );
    // Routing itself still answers while the disk is full.
    let r = c
        .route(triage::proto::v1::RouteRequest {
            messages: vec![triage::proto::v1::Message {
                role: "user".into(),
                content: "hello".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert!(r.is_ok(), "{r:?}");

    // Space returns; after a restart the store opens and holds what was acknowledged.
    drop(c);
    drop(server);
    drop(fb);
    fs.resize("64m");
    let store = open_after(&path);
    let (decisions, _) = store.counts();
    assert!(
        decisions >= 1 && decisions as u64 <= before + 1,
        "{decisions}"
    );
    let outcomes: Vec<_> = store.outcomes().map(Result::unwrap).collect();
    assert!(
        outcomes.iter().any(|o| o.decision_id == first_id),
        "the acknowledged outcome survived"
    );
    // And it takes writes again.
    store.put_decisions(&[decision(1, dim)]).unwrap();
    store.flush().unwrap();
}

fn du(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { du(&e.path()) } else { m.len() }
        })
        .sum()
}

#[test]
fn the_size_cap_removes_the_oldest_decisions_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let cap = 4 << 20;
    let limits = FeedbackLimits {
        decision_queue: 8_192,
        outcome_queue: 64,
        batch: 512,
        max_store_bytes: Some(cap),
    };
    let dim = 256;
    let fb = Feedback::start(
        &path,
        limits,
        StoreOptions {
            embedding_dim: dim,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let round = 40_000;
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        for _ in 0..round {
            let i = ids.len();
            let d = decision(i, dim);
            ids.push(d.decision_id.clone());
            // Paced so that none is dropped: the cap, not the queue, is under test.
            wait_for("the writer", Duration::from_secs(60), || {
                fb.counters().decisions_written.load(Relaxed) + 4_096 > i as u64
            });
            fb.log_decision(d);
        }
        wait_for("every decision", Duration::from_secs(60), || {
            fb.counters().decisions_written.load(Relaxed) == ids.len() as u64
        });
        fb.store().flush().unwrap();
        sizes.push(du(&path));
    }
    let c = fb.counters();
    assert_eq!(c.decisions_dropped.load(Relaxed), 0);
    let capped = c.decisions_capped.load(Relaxed);
    assert!(capped > 0, "{c:?}");
    let (kept, _) = fb.store().counts();
    assert_eq!(kept as u64, ids.len() as u64 - capped);
    let left: Vec<String> = fb
        .store()
        .decisions()
        .map(|d| d.unwrap().decision_id)
        .collect();
    assert_eq!(
        left[..],
        ids[ids.len() - kept..],
        "the newest stay, in order"
    );
    eprintln!(
        "cap {cap}: {sizes:?} bytes on disk after each round, {kept} of {} kept",
        ids.len()
    );
    // Each round alone is several times the cap; uncapped, the second round would double the
    // store. With the cap sled reuses most of the space the removed decisions left; how much
    // depends on when its segments are cleaned (CI saw 2.1 MB of growth on 13.6 MB), so the
    // bound is against the doubling, not against zero.
    assert!(
        sizes[1] < sizes[0] + sizes[0] / 2,
        "the store kept growing under a {cap}-byte cap: {sizes:?}"
    );
}
