//! The `triage` binary as a user runs it.

use std::process::Command;

use crate::common::{model_path, repo};

fn triage() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_triage"));
    c.current_dir(repo())
        .env("TRIAGE_LOG", "warn")
        .env_remove("TRIAGE_CONFIG")
        .env_remove("TRIAGE_MODEL");
    c
}

#[test]
fn route_prints_one_decision_as_json() {
    let out = triage()
        .args(["route", "--model"])
        .arg(model_path())
        .arg("Translate into French: good morning")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ["fast", "standard", "frontier"].contains(&d["tier"].as_str().unwrap()),
        "{d}"
    );
    assert_eq!(d["tiers"].as_array().unwrap().len(), 3);
    assert!(
        d["features"]["markers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "translation"),
        "{d}"
    );
}

#[test]
fn route_batch_writes_one_line_per_input_with_tiers_cheapest_first() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"prompt\":\"hello there\"}\n{\"id\":\"b\",\"prompt\":\"Prove it\",\"outcomes\":{\"m\":1.0}}\n",
    )
    .unwrap();
    let out = triage()
        .args(["route", "--model"])
        .arg(model_path())
        .arg("--batch")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, id) in lines.iter().zip(["a", "b"]) {
        assert!(
            line.starts_with(&format!("{{\"id\":\"{id}\",\"tier\":")),
            "{line}"
        );
        let p = line.find("\"p_sufficient\":{\"fast\":").unwrap();
        let rest = &line[p..];
        let (s, f) = (
            p + rest.find("\"standard\"").unwrap(),
            p + rest.find("\"frontier\"").unwrap(),
        );
        assert!(p < s && s < f, "{line}");
    }
}

#[test]
fn check_config_reports_dotted_paths_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[tiers]]\nname = \"a\"\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\nchain = []\n",
    )
    .unwrap();
    let out = triage()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for n in [
        "bad.toml",
        "tiers: at least 2 tiers",
        "tiers[0].input_usd_per_mtok",
        "tiers[0].chain",
    ] {
        assert!(err.contains(n), "{err}");
    }
    let ok = triage()
        .args(["check-config", "--config", "triage.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 tiers"));
}

#[test]
fn serve_refuses_a_model_for_another_featurizer() {
    let dir = tempfile::tempdir().unwrap();
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_path()).unwrap()).unwrap();
    file["schema"]["fingerprint"] = "ffffffffffffffff".into();
    let bad = dir.path().join("m.json");
    std::fs::write(&bad, serde_json::to_vec(&file).unwrap()).unwrap();
    let out = triage()
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("feature schema mismatch") && err.contains("m.json"),
        "{err}"
    );
}

fn write_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("fixture.jsonl");
    let text: String = crate::common::fixture_rows()
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "source": r.source, "prompt": r.prompt, "outcomes": r.outcomes}).to_string() + "\n")
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn realized(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("chosen:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let before = line.split(" USD per 1k").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn tune_meets_a_cost_target_within_5_percent_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_fixture(dir.path());
    let out = dir.path().join("tuned.json");
    let plot = dir.path().join("curve.svg");
    let run = |target: &str| {
        triage()
            .args(["tune", "--model"])
            .arg(model_path())
            .arg("--dataset")
            .arg(&data)
            .args([
                "--tiers",
                crate::common::TIERS,
                "--max-cost-per-1k-requests",
                target,
                "--out",
            ])
            .arg(&out)
            .arg("--plot")
            .arg(&plot)
            .output()
            .unwrap()
    };
    // Below the cost at which the fixture's quality saturates, the budget binds.
    let ok = run("1.0");
    let stdout = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let cost = realized(&stdout);
    assert!(
        (cost - 1.0).abs() <= 0.05,
        "realized {cost} for target 1.0\n{stdout}"
    );
    // Above it, tune spends less than the budget and says why.
    let loose = run("3.5");
    let text = String::from_utf8_lossy(&loose.stdout).to_string();
    assert!(
        realized(&text) < 3.0 && text.contains("budget is not binding"),
        "{text}"
    );
    assert!(stdout.contains("Pareto front"));
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    let tuned: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_path()).unwrap()).unwrap();
    assert_ne!(tuned["version"], original["version"]);
    assert_eq!(
        tuned["heads"], original["heads"],
        "tuning changes thresholds only"
    );
    let bad = run("0.001");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("target unreachable") && err.contains("everything on fast"),
        "{err}"
    );
}

#[test]
fn train_from_an_exported_log_writes_a_model_and_reports_labels() {
    use triage::feedback::{DecisionRecord, OutcomeRecord, Store};
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let f = crate::common::featurizer();
    {
        let store = Store::open(&store_dir).unwrap();
        let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
        for (i, row) in crate::common::fixture_rows().iter().enumerate() {
            let tier = i % 3;
            let id = uuid::Uuid::now_v7().to_string();
            let feats = f
                .featurize(triage::features::Conversation::single(&row.prompt))
                .unwrap();
            store
                .put_decisions(&[DecisionRecord {
                    decision_id: id.clone(),
                    time_unix_ms: i as u64,
                    model_version: "m".into(),
                    tiers: tiers.clone(),
                    tier: tiers[tier].clone(),
                    p_sufficient: vec![0.5, 0.5, 1.0],
                    propensity: 1.0 / 3.0,
                    schema_fingerprint: f.schema().fingerprint.clone(),
                    features: feats.vector,
                    prompt_tokens: feats.prompt_tokens,
                    estimated_cost_usd: 0.0,
                    ..Default::default()
                }])
                .unwrap();
            let q = row.outcomes[["small", "medium", "large"][tier]];
            store
                .put_outcome(OutcomeRecord {
                    decision_id: id,
                    source: "judge".into(),
                    success: None,
                    quality: Some(q),
                    ..Default::default()
                })
                .unwrap();
        }
        store.flush().unwrap();
    }
    // sled's background flusher may hold the store's lock a moment after the drop above.
    let mut export = triage()
        .args(["logs", "export", "--data-dir"])
        .arg(&store_dir)
        .output()
        .unwrap();
    for _ in 0..50 {
        if export.status.success()
            || !String::from_utf8_lossy(&export.stderr).contains("could not acquire lock")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        export = triage()
            .args(["logs", "export", "--data-dir"])
            .arg(&store_dir)
            .output()
            .unwrap();
    }
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let out = dir.path().join("from-logs.json");
    let run = triage()
        .args(["train", "--experimental", "alpha=1", "--log"])
        .arg(&file)
        .arg("--current")
        .arg(model_path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("60 rows used"), "{stdout}");
    assert!(
        stdout.contains("time split: fitted on the oldest 48 rows"),
        "{stdout}"
    );
    let model = triage::classifier::Classifier::load(&out, f.schema()).unwrap();
    assert_eq!(model.tiers(), ["fast", "standard", "frontier"]);
}

#[test]
fn report_writes_markdown_and_a_plot_against_every_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_fixture(dir.path());
    let md = dir.path().join("r.md");
    let out = triage()
        .args(["report", "--model"])
        .arg(model_path())
        .arg("--dataset")
        .arg(&data)
        .args(["--tiers", crate::common::TIERS, "--out"])
        .arg(&md)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).unwrap();
    for want in [
        "60 rows with every tier's outcome",
        "| always fast |",
        "| always frontier |",
        "router, current thresholds",
        "| floor (share of always-dearest quality) | router | prompt length | random mix |",
        "| 95.0 % |",
        "- keep 95.0 %: thresholds `",
        "`triage tune --min-quality ",
        "| chat | 20 |",
        "| proof | 20 |",
        "![cost against quality](r.svg)",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // The fixture's signal is clear: the router keeps 95 % of the frontier's quality for
    // less than always-frontier costs.
    let line = text.lines().find(|l| l.starts_with("| 95.0 % |")).unwrap();
    let router: f64 = line
        .split('|')
        .nth(2)
        .unwrap()
        .trim()
        .trim_end_matches(" %")
        .parse()
        .unwrap();
    assert!(router > 10.0, "{line}");
    let svg = std::fs::read_to_string(dir.path().join("r.svg")).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("prompt length")
            && svg.contains("current thresholds")
    );

    let bad = triage()
        .args(["report", "--floors", "1.5", "--dataset"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--floors: 1.5"));
}

#[test]
fn leave_one_out_prints_bootstrap_intervals_and_bounds_the_resamples() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_fixture(dir.path());
    let json = dir.path().join("loo.json");
    let out = triage()
        .args(["eval", "--leave-one-out", "source", "--bootstrap", "50"])
        .args(["--dataset"])
        .arg(&data)
        .args(["--tiers", crate::common::TIERS, "--report"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("paired bootstrap, 50 resamples"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let held = report["held_out"].as_array().unwrap();
    assert_eq!(held.len(), 3);
    for h in held {
        let s = &h["spread"];
        assert_eq!(s["resamples"], 50, "{h}");
        let [lo, hi] = [&s["router"][0], &s["router"][1]].map(|v| v.as_f64().unwrap());
        let apgr = h["report"]["two_tier"][0]["router"]["apgr"]
            .as_f64()
            .unwrap();
        assert!(lo <= apgr && apgr <= hi, "{s}");
    }
    assert_eq!(report["means"]["spread"]["resamples"], 50);

    let flood = triage()
        .args(["eval", "--leave-one-out", "source", "--bootstrap", "100001"])
        .args(["--dataset"])
        .arg(&data)
        .args(["--tiers", crate::common::TIERS])
        .output()
        .unwrap();
    assert!(!flood.status.success());
    let err = String::from_utf8_lossy(&flood.stderr);
    assert!(
        err.contains("--bootstrap") && err.contains("100000"),
        "{err}"
    );
}
