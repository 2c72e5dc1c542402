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
