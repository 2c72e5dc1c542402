//! Writes a feedback store of N logged decisions with outcomes, for timing `triage train --log`
//! at scale (`benches/train_log.sh`): real feature vectors of MMLU-Pro-like prompts, the tier
//! each was routed to with its propensity, and a verdict that depends on the prompt and tier.
//!
//! cargo run --release --example log_store -- DIR [DECISIONS=1000000]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use triage::feedback::{DecisionRecord, OutcomeRecord, Store, StoreOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().expect("usage: log_store DIR [DECISIONS]"));
    let n: usize = args.get(1).map_or(1_000_000, |a| a.parse().unwrap());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let featurizer = triage::features::Featurizer::load(&root.join("models/embeddings")).unwrap();
    let subjects = [
        "algebra",
        "history",
        "law",
        "biology",
        "physics",
        "economics",
        "chemistry",
        "poetry",
    ];
    // Distinct prompts' vectors, reused round-robin: featurizing is not what is measured. Each
    // carries how hard it is, so the verdicts below have something to learn.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let prompts: Vec<(Vec<f32>, u32, f64)> = (0..4_000)
        .map(|i: usize| {
            let subject = subjects[i % subjects.len()];
            let steps = 1 + i % 9;
            let text = format!(
                "Question {i} on {subject}: with {steps} steps of reasoning, which of the following holds? \
                 (A) the first claim (B) the second claim (C) both (D) neither. Explain briefly."
            );
            let f = featurizer
                .featurize(triage::features::Conversation::single(&text))
                .unwrap();
            let hardness = (i % subjects.len()) as f64 / 8.0 + steps as f64 / 18.0;
            (f.vector, f.prompt_tokens, hardness)
        })
        .collect();
    let store = Store::open_with(
        &dir,
        StoreOptions {
            embedding_dim: featurizer.embedding_dim(),
            ..Default::default()
        },
    )
    .unwrap();
    let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
    let fingerprint = featurizer.schema().fingerprint.clone();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut outcomes = Vec::with_capacity(10_000);
    for i in 0..n {
        let (features, tokens, hardness) = &prompts[i % prompts.len()];
        // A router that mostly sends easy prompts cheap, and explores 10 % of the time.
        let routed = usize::from(*hardness > 0.5) + usize::from(*hardness > 0.9);
        let explored = rng.r#gen::<f64>() < 0.1;
        let tier = if explored {
            rng.gen_range(0..3)
        } else {
            routed
        };
        let propensity = if tier == routed {
            0.9 + 0.1 / 3.0
        } else {
            0.1 / 3.0
        };
        let skill = [0.35, 0.6, 0.85][tier];
        let success = rng.r#gen::<f64>() < (1.0 - hardness + skill).clamp(0.02, 0.98) - 0.2;
        let id = uuid::Uuid::now_v7().to_string();
        batch.push(DecisionRecord {
            decision_id: id.clone(),
            time_unix_ms: 1_700_000_000_000 + i as u64,
            model_version: "log-store-bench".into(),
            tiers: tiers.clone(),
            tier: tiers[tier].clone(),
            p_sufficient: vec![0.42, 0.77, 1.0],
            propensity,
            schema_fingerprint: fingerprint.clone(),
            features: features.clone(),
            prompt_tokens: *tokens,
            estimated_cost_usd: 0.000_42,
            ..Default::default()
        });
        outcomes.push(OutcomeRecord {
            decision_id: id,
            source: "validator".into(),
            success: Some(success),
            ..Default::default()
        });
        if batch.len() == batch.capacity() || i + 1 == n {
            store.put_decisions(&batch).unwrap();
            for o in outcomes.drain(..) {
                store.put_outcome(o).unwrap();
            }
            batch.clear();
        }
    }
    store.flush().unwrap();
    println!(
        "{n} decisions with outcomes written to {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}
