//! Replay MMLU-Pro as traffic: start from a deliberately weak model, route rounds of prompts
//! with exploration, take each outcome from the data for the tier actually used, retrain from
//! the log after every round, and report cost at >= 95 % of frontier quality on held-out prompts.
//!
//! cargo run --release --example replay -- ../shared/data/mmlu_pro/mmlu_pro_dev.jsonl [ROUNDS=6] [PER_ROUND=500] [EXPLORATION=0.1] [SEED=11]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use triage::classifier::Classifier;
use triage::config::Config;
use triage::engine::{Engine, RouteInput};
use triage::features::Conversation;
use triage::feedback::{DecisionRecord, OutcomeRecord, Store};
use triage::model_store::ModelStore;
use triage::train::dataset::{TierMap, read_jsonl};
use triage::train::{self, eval, logs};

const TIERS: &str =
    "fast=llama-3.1-8b-instruct,standard=llama-3.1-70b-instruct,frontier=gemini-1.5-pro-002";
const PRICES: [f64; 3] = [0.18, 0.88, 3.125];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = args
        .first()
        .expect("usage: replay DATA.jsonl [ROUNDS] [PER_ROUND] [EXPLORATION]");
    let rounds: usize = args.get(1).map_or(6, |a| a.parse().unwrap());
    let per_round: usize = args.get(2).map_or(500, |a| a.parse().unwrap());
    let exploration: f64 = args.get(3).map_or(0.1, |a| a.parse().unwrap());
    let seed: u64 = args.get(4).map_or(11, |a| a.parse().unwrap());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::shipped().unwrap();
    config.model.embeddings = root.join("models/embeddings");
    config.exploration_rate = exploration;
    config.model.watch_interval = None;
    let featurizer =
        Arc::new(triage::features::Featurizer::load(&config.model.embeddings).unwrap());
    let tiers: TierMap = TIERS.parse().unwrap();
    let names = tiers.names();

    let mut rows = read_jsonl(std::path::Path::new(data)).unwrap();
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let held_out = rows.split_off(rows.len() / 2);
    let eval_data = train::prepare(&featurizer, held_out, &tiers, false).unwrap();
    let eval_rows: Vec<usize> = (0..eval_data.rows.len()).collect();
    let eval_scores: Vec<Vec<f64>> = eval_data
        .scores
        .iter()
        .map(|s| s.iter().map(|v| v.unwrap()).collect())
        .collect();
    let q_top = eval_rows.iter().map(|&r| eval_scores[r][2]).sum::<f64>() / eval_rows.len() as f64;
    let cost_at = |c: &Classifier| {
        let p: Vec<Vec<f64>> = eval_data.x.iter().map(|x| c.score(x)).collect();
        eval::cheapest_thresholds(&p, &eval_scores, &PRICES, &eval_rows, 0.95 * q_top)
            .map(|(_, op)| op)
    };

    // The weak start: the shipped model's shape with heads that know nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut weak: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("models/classifier.json")).unwrap())
            .unwrap();
    for h in weak["heads"].as_array_mut().unwrap() {
        h["weights"] = serde_json::json!(vec![0.0; h["weights"].as_array().unwrap().len()]);
        h["intercept"] = 0.0.into();
    }
    // Zeroed gain heads score every tier 1 before calibration; these maps make that ~0.007.
    weak["calibration"] = serde_json::json!([[0.0, -5.0], [0.0, -5.0]]);
    weak["thresholds"] = serde_json::json!([0.6, 0.6, 0.0]);
    weak["version"] = "weak-start".into();
    let model_path = dir.path().join("model.json");
    std::fs::write(&model_path, serde_json::to_vec(&weak).unwrap()).unwrap();
    config.model.classifier = model_path.clone();
    let engine = Engine::new(
        Arc::new(config.clone()),
        ModelStore::with_featurizer(&config, featurizer.clone(), &model_path).unwrap(),
    )
    .with_exploration_seed(seed);
    // Stored as the server stores them: the embedding quantized like every logged decision's.
    let store = Store::open_with(
        &dir.path().join("store"),
        triage::feedback::StoreOptions {
            embedding_dim: featurizer.embedding_dim(),
            ..Default::default()
        },
    )
    .unwrap();
    let export = dir.path().join("export.jsonl");
    // The shipped recipe; logs always train sufficiency heads.
    let opts = train::TrainOptions::default();
    let always_top = eval::operating(&vec![2; eval_rows.len()], &eval_scores, &PRICES, &eval_rows);
    println!(
        "held-out prompts: {}; always-frontier quality {:.3} at cost {:.3}; target quality {:.3}; exploration {exploration}",
        eval_rows.len(),
        always_top.quality,
        always_top.cost,
        0.95 * q_top
    );
    println!(
        "| round | logged decisions | explored | cost at >= 95 % frontier quality | saved vs always-frontier |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let report = |round: usize, logged: usize, explored: usize, c: &Classifier| match cost_at(c) {
        Some(op) => println!(
            "| {round} | {logged} | {explored} | {:.3} (quality {:.3}) | {:.1} % |",
            op.cost,
            op.quality,
            100.0 * (1.0 - op.cost / always_top.cost)
        ),
        None => println!("| {round} | {logged} | {explored} | unreachable | - |"),
    };
    // The reference the loop is chasing: the same recipe trained on the traffic prompts with
    // every tier's outcome (full information), scored on the same held-out half.
    {
        let n = (rounds * per_round).min(rows.len());
        let full = train::prepare(&featurizer, rows[..n].to_vec(), &tiers, false).unwrap();
        let all: Vec<usize> = (0..full.rows.len()).collect();
        let fitted = train::recipe::fit(
            &featurizer.schema().names,
            &full,
            &all,
            &names,
            &opts.recipe,
        )
        .unwrap();
        let c = train::scorer(featurizer.schema(), &names, fitted).unwrap();
        match cost_at(&c) {
            Some(op) => println!(
                "full information on the same {n} traffic prompts: cost {:.3}, saved {:.1} %",
                op.cost,
                100.0 * (1.0 - op.cost / always_top.cost)
            ),
            None => println!("full information: unreachable"),
        }
    }
    report(0, 0, 0, &engine.store().current().classifier);
    let (mut logged, mut explored) = (0, 0);
    for round in 1..=rounds {
        let start = (round - 1) * per_round;
        let Some(batch) = rows.get(start..(start + per_round).min(rows.len())) else {
            break;
        };
        for row in batch {
            let d = engine
                .route(&RouteInput {
                    prompt: row.prompt.clone(),
                    ..RouteInput::default()
                })
                .unwrap();
            explored += usize::from(d.explored);
            let feats = featurizer
                .featurize(Conversation::single(&row.prompt))
                .unwrap();
            let id = d.decision_id.to_string();
            store
                .put_decisions(&[DecisionRecord {
                    decision_id: id.clone(),
                    time_unix_ms: logged as u64,
                    model_version: d.model_version.clone(),
                    tiers: names.clone(),
                    tier: d.tier_name.clone(),
                    p_sufficient: d.tiers.iter().map(|(_, v)| v.p_sufficient).collect(),
                    propensity: d.propensity,
                    schema_fingerprint: featurizer.schema().fingerprint.clone(),
                    features: feats.vector,
                    prompt_tokens: feats.prompt_tokens,
                    estimated_cost_usd: d.estimated_cost_usd,
                    ..Default::default()
                }])
                .unwrap();
            let score = tiers.scores(row)[d.tier].unwrap();
            store
                .put_outcome(OutcomeRecord {
                    decision_id: id,
                    source: "validator".into(),
                    success: Some(score >= 0.5),
                    quality: Some(score),
                    ..Default::default()
                })
                .unwrap();
            logged += 1;
        }
        let mut out = Vec::new();
        store.export(None, &mut out).unwrap();
        std::fs::write(&export, out).unwrap();
        let log_opts = logs::LogOptions {
            success_threshold: 0.5,
            max_weight: 50.0,
            max_rows: 0,
        };
        let (log_rows, stats) =
            logs::read_logs(std::slice::from_ref(&export), &featurizer, &names, log_opts).unwrap();
        let current = engine.store().current();
        let (file, _) = train::logs::train_from_logs(
            &featurizer,
            &log_rows,
            stats,
            None,
            &names,
            &opts,
            Some(&current.classifier),
        )
        .unwrap();
        std::fs::write(&model_path, serde_json::to_vec(&file).unwrap()).unwrap();
        engine.store().reload(&config, &model_path).unwrap();
        report(
            round,
            logged,
            explored,
            &engine.store().current().classifier,
        );
    }
}
