//! The sled store behind the feedback loop: decisions and outcomes trees, idempotent outcome
//! inserts, prompt retention, and JSON Lines export.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// The request knobs as logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnobsRecord {
    /// `min_tier` as sent.
    pub min_tier: Option<String>,
    /// `max_tier` as sent.
    pub max_tier: Option<String>,
    /// `max_cost_usd` as sent.
    pub max_cost_usd: Option<f64>,
    /// `latency_sensitive` as sent.
    pub latency_sensitive: bool,
    /// `quality_target` as sent.
    pub quality_target: Option<f64>,
}

/// One logged routing decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// UUIDv7 (its text sorts by time).
    pub decision_id: String,
    /// When it was decided.
    pub time_unix_ms: u64,
    /// Model that decided.
    pub model_version: String,
    /// Tier names, cheapest first.
    pub tiers: Vec<String>,
    /// Chosen tier.
    pub tier: String,
    /// Per-tier probability of being good enough.
    pub p_sufficient: Vec<f64>,
    /// Probability with which the chosen tier was chosen (1 when the policy was followed
    /// deterministically).
    pub propensity: f64,
    /// Fingerprint of the feature schema `features` follows.
    #[serde(default)]
    pub schema_fingerprint: String,
    /// Request knobs.
    pub knobs: KnobsRecord,
    /// Caller's tenant.
    pub tenant: Option<String>,
    /// Caller's labels.
    pub labels: BTreeMap<String, String>,
    /// The feature vector (schema of `model_version`'s featurizer).
    pub features: Vec<f32>,
    /// Tokens in the routed prompt and in the context.
    pub prompt_tokens: u32,
    /// Tokens in the context.
    pub context_tokens: u32,
    /// Estimated cost on the chosen tier, USD.
    pub estimated_cost_usd: f64,
    /// SHA-256 of the routed prompt (hex), to join or deduplicate without keeping the text.
    pub prompt_sha256: String,
    /// The routed prompt, only when `feedback.store_prompts` is on (and until retention ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// One reported outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The decision it is about.
    pub decision_id: String,
    /// user, judge, validator or escalation.
    pub source: String,
    /// Good enough or not.
    pub success: Option<bool>,
    /// Score in [0, 1].
    pub quality: Option<f64>,
    /// Call latency, ms.
    pub latency_ms: Option<u64>,
    /// Input tokens.
    pub input_tokens: Option<u64>,
    /// Output tokens.
    pub output_tokens: Option<u64>,
    /// Cost, USD.
    pub cost_usd: Option<f64>,
    /// Error class of a failed call.
    pub error_class: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// When it was observed.
    pub observed_at_unix_ms: i64,
    /// When this replica stored it.
    pub recorded_at_unix_ms: u64,
    /// The decision was not in this store when the outcome arrived.
    pub orphan: bool,
}

/// Result of storing an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// An outcome from the same source was already stored; nothing changed.
    pub duplicate: bool,
    /// The decision is unknown here.
    pub orphan: bool,
}

/// Errors of the store once it is open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("feedback store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be (de)serialized.
    #[error("feedback store record: {0}")]
    Codec(#[from] serde_json::Error),
    /// Writing an export failed.
    #[error("export: {0}")]
    Io(#[from] std::io::Error),
}

/// The feedback store in a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    decisions: sled::Tree,
    outcomes: sled::Tree,
    path: PathBuf,
}

/// What a stored outcome becomes when another from the same source arrives, or `None` when
/// the new one adds nothing (a duplicate). The verdict (`success`, `quality`) is taken only if
/// the stored record has none, so a retried or conflicting verdict never rewrites the first;
/// measurements (latency, tokens, cost, error class) and labels fill what is missing.
pub fn merge(mut stored: OutcomeRecord, new: &OutcomeRecord) -> Option<OutcomeRecord> {
    let before = stored.clone();
    if stored.success.is_none() && stored.quality.is_none() {
        stored.success = new.success;
        stored.quality = new.quality;
        if new.success.is_some() || new.quality.is_some() {
            stored.observed_at_unix_ms = new.observed_at_unix_ms;
        }
    }
    stored.latency_ms = stored.latency_ms.or(new.latency_ms);
    stored.input_tokens = stored.input_tokens.or(new.input_tokens);
    stored.output_tokens = stored.output_tokens.or(new.output_tokens);
    stored.cost_usd = stored.cost_usd.or(new.cost_usd);
    if stored.error_class.is_none() {
        stored.error_class.clone_from(&new.error_class);
    }
    for (k, v) in &new.labels {
        stored.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    (stored != before).then(|| {
        stored.recorded_at_unix_ms = new.recorded_at_unix_ms;
        stored
    })
}

fn outcome_key(decision_id: &str, source: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(decision_id.len() + 1 + source.len());
    k.extend_from_slice(decision_id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(source.as_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir`. A corrupt or unreadable store is an error naming
    /// the path; nothing is overwritten or deleted.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        if dir.exists() && !dir.is_dir() {
            return Err(LoadError::invalid(
                dir,
                "the feedback data directory is a file, not a directory",
            ));
        }
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| {
                LoadError::invalid(
                    dir,
                    format!("cannot open the feedback store (left untouched): {e}"),
                )
            })?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| LoadError::invalid(dir, format!("cannot open tree {name:?}: {e}")))
        };
        Ok(Self {
            decisions: tree("decisions")?,
            outcomes: tree("outcomes")?,
            db,
            path: dir.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes decisions in one batch (not flushed; sled flushes in the background).
    pub fn put_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for r in records {
            batch.insert(r.decision_id.as_bytes(), serde_json::to_vec(r)?);
        }
        self.decisions.apply_batch(batch)?;
        Ok(())
    }

    /// Stores an outcome, one record per decision and source, merged by [`merge`]: the first
    /// verdict wins, and an outcome without a verdict (latency or cost only) never blocks a
    /// later verdict. Not flushed: call [`Self::flush`] before acknowledging.
    pub fn put_outcome(&self, mut r: OutcomeRecord) -> Result<Stored, StoreError> {
        let orphan = !self.decisions.contains_key(r.decision_id.as_bytes())?;
        r.orphan = orphan;
        let key = outcome_key(&r.decision_id, &r.source);
        // Compare-and-swap until no concurrent writer of the same key got in between.
        loop {
            let old = self.outcomes.get(&key)?;
            let next = match &old {
                None => Some(r.clone()),
                Some(bytes) => merge(serde_json::from_slice(bytes)?, &r),
            };
            let Some(next) = next else {
                return Ok(Stored {
                    duplicate: true,
                    orphan,
                });
            };
            let swapped =
                self.outcomes
                    .compare_and_swap(&key, old, Some(serde_json::to_vec(&next)?))?;
            if swapped.is_ok() {
                return Ok(Stored {
                    duplicate: false,
                    orphan,
                });
            }
        }
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Number of decisions and outcomes stored.
    pub fn counts(&self) -> (usize, usize) {
        (self.decisions.len(), self.outcomes.len())
    }

    /// Every decision, in time order.
    pub fn decisions(&self) -> impl Iterator<Item = Result<DecisionRecord, StoreError>> + '_ {
        self.decisions
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
    }

    /// Every outcome, grouped by decision.
    pub fn outcomes(&self) -> impl Iterator<Item = Result<OutcomeRecord, StoreError>> + '_ {
        self.outcomes
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
    }

    /// Drops stored prompt texts older than `retention_ms` (their hashes stay).
    pub fn expire_prompts(&self, now_ms: u64, retention_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.decisions.iter() {
            let (k, v) = item?;
            let mut d: DecisionRecord = serde_json::from_slice(&v)?;
            if d.prompt.is_some() && now_ms.saturating_sub(d.time_unix_ms) > retention_ms {
                d.prompt = None;
                self.decisions.insert(k, serde_json::to_vec(&d)?)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes decisions older than `retention_ms` with their outcomes, and orphan outcomes
    /// observed before then; returns how many decisions went. Every record is checked by its
    /// own time (caller-chosen ids need not sort by time). Writes go in batches of 1,000, so
    /// a large expiry never holds one huge batch in memory.
    pub fn expire_decisions(&self, now_ms: u64, retention_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut gone = 0;
        let mut batch = sled::Batch::default();
        let mut outcomes = sled::Batch::default();
        let mut pending = 0;
        for item in self.decisions.iter() {
            let (k, v) = item?;
            let d: DecisionRecord = serde_json::from_slice(&v)?;
            if d.time_unix_ms >= cutoff {
                continue;
            }
            batch.remove(k);
            let mut prefix = d.decision_id.as_bytes().to_vec();
            prefix.push(b'/');
            for kv in self.outcomes.scan_prefix(prefix) {
                outcomes.remove(kv?.0);
            }
            gone += 1;
            pending += 1;
            if pending == 1_000 {
                self.outcomes.apply_batch(std::mem::take(&mut outcomes))?;
                self.decisions.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.outcomes.apply_batch(outcomes)?;
        self.decisions.apply_batch(batch)?;
        let mut orphans = sled::Batch::default();
        for item in self.outcomes.iter() {
            let (k, v) = item?;
            let o: OutcomeRecord = serde_json::from_slice(&v)?;
            if o.orphan && u64::try_from(o.observed_at_unix_ms).unwrap_or(0) < cutoff {
                orphans.remove(k);
            }
        }
        self.outcomes.apply_batch(orphans)?;
        Ok(gone)
    }

    fn outcomes_of(&self, decision_id: &str) -> Result<Vec<OutcomeRecord>, StoreError> {
        let mut prefix = decision_id.as_bytes().to_vec();
        prefix.push(b'/');
        self.outcomes
            .scan_prefix(prefix)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Writes one JSON line per decision at or after `since_ms` with its outcomes, then one
    /// line per orphan decision id with its outcomes (`"decision": null`). Returns the number
    /// of lines.
    pub fn export(&self, since_ms: Option<u64>, out: &mut impl Write) -> Result<usize, StoreError> {
        let mut lines = 0;
        for item in self.decisions.iter() {
            let (_, v) = item?;
            let d: DecisionRecord = serde_json::from_slice(&v)?;
            if since_ms.is_some_and(|s| d.time_unix_ms < s) {
                continue;
            }
            let outcomes = self.outcomes_of(&d.decision_id)?;
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({"decision_id": d.decision_id, "decision": d, "outcomes": outcomes}),
            )?;
            out.write_all(b"\n")?;
            lines += 1;
        }
        let mut orphans: BTreeMap<String, Vec<OutcomeRecord>> = BTreeMap::new();
        for item in self.outcomes.iter() {
            let (_, v) = item?;
            let o: OutcomeRecord = serde_json::from_slice(&v)?;
            if !self.decisions.contains_key(o.decision_id.as_bytes())?
                && since_ms.is_none_or(|s| o.recorded_at_unix_ms >= s)
            {
                orphans.entry(o.decision_id.clone()).or_default().push(o);
            }
        }
        for (id, outcomes) in orphans {
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({"decision_id": id, "decision": null, "outcomes": outcomes}),
            )?;
            out.write_all(b"\n")?;
            lines += 1;
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn decision(id: &str, t: u64) -> DecisionRecord {
        DecisionRecord {
            decision_id: id.into(),
            time_unix_ms: t,
            model_version: "m".into(),
            tiers: vec!["a".into(), "b".into()],
            tier: "a".into(),
            p_sufficient: vec![0.7, 1.0],
            propensity: 1.0,
            schema_fingerprint: "fp".into(),
            knobs: KnobsRecord::default(),
            tenant: None,
            labels: BTreeMap::new(),
            features: vec![0.5],
            prompt_tokens: 3,
            context_tokens: 0,
            estimated_cost_usd: 0.001,
            prompt_sha256: "00".into(),
            prompt: Some("secret prompt".into()),
        }
    }

    fn outcome(id: &str, source: &str, q: f64) -> OutcomeRecord {
        OutcomeRecord {
            decision_id: id.into(),
            source: source.into(),
            success: None,
            quality: Some(q),
            latency_ms: None,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            error_class: None,
            labels: BTreeMap::new(),
            observed_at_unix_ms: 5,
            recorded_at_unix_ms: 5,
            orphan: false,
        }
    }

    #[test]
    fn an_outcome_without_a_verdict_never_shadows_a_later_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_decisions(&[decision("d1", 10)]).unwrap();
        let measured = OutcomeRecord {
            quality: None,
            latency_ms: Some(420),
            ..outcome("d1", "user", 0.0)
        };
        assert!(!s.put_outcome(measured.clone()).unwrap().duplicate);
        assert!(
            s.put_outcome(measured).unwrap().duplicate,
            "a retry adds nothing"
        );
        let verdict = OutcomeRecord {
            success: Some(true),
            latency_ms: Some(999),
            labels: [("why".to_string(), "thumbs".to_string())].into(),
            ..outcome("d1", "user", 0.9)
        };
        assert!(!s.put_outcome(verdict).unwrap().duplicate);
        // A second, conflicting verdict does not rewrite the first.
        assert!(s.put_outcome(outcome("d1", "user", 0.1)).unwrap().duplicate);
        let mut out = Vec::new();
        s.export(None, &mut out).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
        let o = &line["outcomes"][0];
        assert_eq!(line["outcomes"].as_array().unwrap().len(), 1, "{line}");
        assert_eq!(o["quality"], 0.9, "{o}");
        assert_eq!(o["success"], true, "{o}");
        assert_eq!(o["latency_ms"], 420, "the first measurement stays: {o}");
        assert_eq!(o["labels"]["why"], "thumbs", "{o}");
    }

    #[test]
    fn outcomes_are_idempotent_per_source_and_orphans_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_decisions(&[decision("d1", 10)]).unwrap();
        assert_eq!(
            s.put_outcome(outcome("d1", "user", 1.0)).unwrap(),
            Stored {
                duplicate: false,
                orphan: false
            }
        );
        assert_eq!(
            s.put_outcome(outcome("d1", "user", 0.0)).unwrap(),
            Stored {
                duplicate: true,
                orphan: false
            }
        );
        assert_eq!(
            s.put_outcome(outcome("d1", "judge", 0.5)).unwrap(),
            Stored {
                duplicate: false,
                orphan: false
            }
        );
        assert_eq!(
            s.put_outcome(outcome("elsewhere", "user", 1.0)).unwrap(),
            Stored {
                duplicate: false,
                orphan: true
            }
        );
        let mut out = Vec::new();
        assert_eq!(s.export(None, &mut out).unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let outs = lines[0]["outcomes"].as_array().unwrap();
        assert_eq!(outs.len(), 2);
        // The first user outcome won.
        assert!(
            outs.iter()
                .any(|o| o["source"] == "user" && o["quality"] == 1.0)
        );
        assert!(lines[1]["decision"].is_null() && lines[1]["decision_id"] == "elsewhere");
    }

    #[test]
    fn export_since_skips_older_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_decisions(&[decision("d1", 10), decision("d2", 20)])
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(s.export(Some(15), &mut out).unwrap(), 1);
        assert!(String::from_utf8(out).unwrap().contains("\"d2\""));
    }

    #[test]
    fn decisions_past_retention_go_with_their_outcomes_and_newer_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_decisions(&[decision("old", 1_000), decision("new", 9_000)])
            .unwrap();
        s.put_outcome(outcome("old", "a", 1.0)).unwrap();
        s.put_outcome(outcome("new", "a", 1.0)).unwrap();
        // An orphan observed long ago, and one observed recently.
        let mut stale = outcome("gone", "a", 1.0);
        stale.observed_at_unix_ms = 500;
        s.put_outcome(stale).unwrap();
        let mut fresh = outcome("later", "a", 1.0);
        fresh.observed_at_unix_ms = 9_500;
        s.put_outcome(fresh).unwrap();
        assert_eq!(s.counts(), (2, 4));
        assert_eq!(s.expire_decisions(10_000, 5_000).unwrap(), 1);
        let ids: Vec<String> = s.decisions().map(|d| d.unwrap().decision_id).collect();
        assert_eq!(ids, ["new"]);
        let left: Vec<String> = s.outcomes().map(|o| o.unwrap().decision_id).collect();
        assert_eq!(left, ["later", "new"]);
        // Nothing more to expire.
        assert_eq!(s.expire_decisions(10_000, 5_000).unwrap(), 0);
    }

    #[test]
    fn prompts_expire_but_hashes_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_decisions(&[decision("old", 10), decision("new", 1_000)])
            .unwrap();
        assert_eq!(s.expire_prompts(1_010, 100).unwrap(), 1);
        let mut out = Vec::new();
        s.export(None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("secret prompt").count(), 1);
        assert_eq!(text.matches("prompt_sha256").count(), 2);
    }

    #[test]
    fn a_file_where_the_store_should_be_is_a_clear_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        std::fs::write(&f, b"not a store").unwrap();
        let err = Store::open(&f).unwrap_err().to_string();
        assert!(
            err.contains("data") && err.contains("not a directory"),
            "{err}"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"not a store");
    }

    #[test]
    fn a_corrupt_store_is_refused_naming_the_path_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        {
            let s = Store::open(&p).unwrap();
            s.put_decisions(&[decision("d1", 10)]).unwrap();
            s.flush().unwrap();
        }
        let conf = p.join("conf");
        std::fs::write(&conf, b"garbage\x00\x01").unwrap();
        let err = Store::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("store") && err.contains("left untouched"),
            "{err}"
        );
        assert_eq!(std::fs::read(&conf).unwrap(), b"garbage\x00\x01");
    }
}
