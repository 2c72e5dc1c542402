//! The sled store behind the feedback loop: time-sorted pages of decisions, outcomes,
//! idempotent outcome inserts, retention, the size cap's removals, and JSON Lines export.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sled::IVec;

use super::codec::{
    CodecError, Context, KEY_TEXT, KEY_UUID_V7, decision_key, decision_time, decode_decision,
    decode_outcome, encode_decision, encode_outcome, key_decision_id, outcome_key, text_keys_start,
    time_key,
};
use super::page::{Page, PageBuilder, page_len};
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
    /// A stored record could not be read.
    #[error("feedback store record: {0}")]
    Codec(#[from] CodecError),
    /// An export line could not be written as JSON.
    #[error("export: {0}")]
    Json(#[from] serde_json::Error),
    /// Writing an export failed.
    #[error("export: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the disk refused the write (full, quota, read-only): the caller can retry once
    /// space returns.
    pub fn is_out_of_space(&self) -> bool {
        let io = match self {
            Self::Sled(sled::Error::Io(e)) | Self::Io(e) => e,
            _ => return false,
        };
        matches!(
            io.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EFBIG)
        ) || io.kind() == std::io::ErrorKind::StorageFull
    }
}

/// How a store writes; readers need none of it (records carry their own layout).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Trailing feature-vector elements that are the embedding, stored as int8 with one scale;
    /// the elements before them are stored as half floats.
    pub embedding_dim: usize,
    /// sled's page cache, in bytes. Why bounded: sled's own default (1 GiB) fills with every
    /// decision written since start, so a busy server's memory grew by ~1 KB a decision.
    pub cache_bytes: u64,
}

/// [`StoreOptions::cache_bytes`] unless configured: the decision writer only appends, and
/// reads (outcome joins, export) go through the B-tree's index nodes, which fit in far less.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            embedding_dim: 0,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

#[derive(Debug, Default)]
struct Contexts {
    list: Vec<Context>,
    index: HashMap<Context, u32>,
}

/// The feedback store in a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    /// Pages of decisions (`super::page`), each under its first record's key.
    decisions: sled::Tree,
    /// Per key class (the key's first byte), the last key of the newest run page: a decision
    /// at or below it is stored as a page of its own.
    runs: Arc<Mutex<BTreeMap<u8, Vec<u8>>>>,
    outcomes: sled::Tree,
    contexts_tree: sled::Tree,
    meta: sled::Tree,
    contexts: Arc<RwLock<Contexts>>,
    options: StoreOptions,
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

/// Tree names of this layout; the first layout's trees were `decisions` and `outcomes`, the
/// second kept one decision per key in `decisions/2`.
const DECISIONS: &str = "decisions/3";
const LEGACY_DECISIONS: &str = "decisions/2";
const OUTCOMES: &str = "outcomes/2";
const CONTEXTS: &str = "contexts/2";
const META: &str = "meta";
/// Meta key: decisions made before this time (ms, big-endian) have had their prompts expired.
const PROMPTS_EXPIRED_UNTIL: &[u8] = b"prompts_expired_until";
/// Records per write batch in scans that rewrite or remove (bounds the memory a batch holds).
const SCAN_BATCH: usize = 1_000;

/// Whether a record goes on page `p`: it has room, and the record is of the page's key class
/// (a key's first byte; pages never mix classes, so the text-keyed range can be scanned apart).
fn fits(p: &PageBuilder, key: &[u8], record: &[u8]) -> bool {
    p.fits(key.len(), record.len()) && p.last_key().first() == key.first()
}

/// One page's change: the records it loses (whose outcomes go too) and what replaces it.
struct PageEdit {
    page_key: IVec,
    dropped: Vec<Vec<u8>>,
    replacement: Option<(Vec<u8>, Vec<u8>)>,
}

fn lock_poisoned() -> StoreError {
    StoreError::Io(std::io::Error::other("context table lock poisoned"))
}

impl Store {
    /// Opens (or creates) the store in `dir` for reading; see [`Self::open_with`].
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`. A store of the first (JSON) layout is migrated to
    /// this one in batches, each record written anew before its old copy goes, so an
    /// interrupted migration resumes at the next open. A corrupt or unreadable store is an
    /// error naming the path.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, LoadError> {
        if dir.exists() && !dir.is_dir() {
            return Err(LoadError::invalid(
                dir,
                "the feedback data directory is a file, not a directory",
            ));
        }
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
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
        let contexts_tree = tree(CONTEXTS)?;
        let mut contexts = Contexts::default();
        for (i, kv) in contexts_tree.iter().enumerate() {
            let bad = |m: String| LoadError::invalid(dir, format!("context table: {m}"));
            let (k, v) = kv.map_err(|e| bad(e.to_string()))?;
            let c: Context = postcard::from_bytes(&v).map_err(|e| bad(e.to_string()))?;
            // Numbers are dense from 0; a gap would make later records resolve wrongly.
            if k.as_ref() != u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes() {
                return Err(bad(format!("entry {i} is out of order")));
            }
            contexts
                .index
                .insert(c.clone(), u32::try_from(i).unwrap_or(u32::MAX));
            contexts.list.push(c);
        }
        let store = Self {
            decisions: tree(DECISIONS)?,
            runs: Arc::default(),
            outcomes: tree(OUTCOMES)?,
            meta: tree(META)?,
            contexts_tree,
            contexts: Arc::new(RwLock::new(contexts)),
            db,
            options,
            path: dir.to_path_buf(),
        };
        store
            .migrate_first_layout()
            .map_err(|e| LoadError::invalid(dir, format!("migrating the JSON layout: {e}")))?;
        store
            .migrate_to_pages()
            .map_err(|e| LoadError::invalid(dir, format!("packing decisions into pages: {e}")))?;
        store
            .find_runs()
            .map_err(|e| LoadError::invalid(dir, format!("reading the newest pages: {e}")))?;
        Ok(store)
    }

    /// Packs the second layout's one-decision-per-key tree into pages, in key order (so the
    /// pages are runs that do not overlap), a batch of pages at a time: each batch is flushed
    /// before its old records go, and an interrupted run packs the same pages again.
    fn migrate_to_pages(&self) -> Result<(), StoreError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_DECISIONS.as_bytes())
        {
            return Ok(());
        }
        let legacy = self.db.open_tree(LEGACY_DECISIONS)?;
        loop {
            let mut pages = sled::Batch::default();
            let mut gone = sled::Batch::default();
            let mut page: Option<PageBuilder> = None;
            let mut n = 0;
            for kv in legacy.iter().take(SCAN_BATCH) {
                let (k, v) = kv?;
                if let Some(p) = page.take_if(|p| !fits(p, &k, &v)) {
                    let (pk, pv) = p.finish();
                    pages.insert(pk, pv);
                }
                page.get_or_insert_with(|| PageBuilder::new(false))
                    .push(&k, &v);
                gone.remove(k);
                n += 1;
            }
            if n == 0 {
                break;
            }
            if let Some(p) = page {
                let (pk, pv) = p.finish();
                pages.insert(pk, pv);
            }
            self.decisions.apply_batch(pages)?;
            self.db.flush()?;
            legacy.apply_batch(gone)?;
        }
        drop(legacy);
        self.db.drop_tree(LEGACY_DECISIONS)?;
        self.db.flush()?;
        Ok(())
    }

    /// Reads, per key class, the last key of the newest run page.
    fn find_runs(&self) -> Result<(), StoreError> {
        let mut runs = BTreeMap::new();
        for class in [KEY_UUID_V7, KEY_TEXT] {
            for kv in self.decisions.range(vec![class]..vec![class + 1]).rev() {
                let (_, v) = kv?;
                let page = Page::parse(&v)?;
                if !page.single() {
                    if let Some((k, _)) = page.records().last() {
                        runs.insert(class, k.to_vec());
                    }
                    break;
                }
            }
        }
        *self.runs.lock().map_err(|_| lock_poisoned())? = runs;
        Ok(())
    }

    /// The page holding the decision under `key`, as (page key, page value). Walking back from
    /// the key, only single pages can sit between it and the run that would hold it (runs never
    /// overlap), so the walk stops at the first run page.
    fn find_page(&self, key: &[u8]) -> Result<Option<(IVec, IVec)>, StoreError> {
        for kv in self.decisions.range(..=key).rev() {
            let (k, v) = kv?;
            let page = Page::parse(&v)?;
            if page.get(key).is_some() {
                return Ok(Some((k, v)));
            }
            if !page.single() {
                break;
            }
        }
        Ok(None)
    }

    /// Whether the store holds the decision under `key`.
    fn contains_decision(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.find_page(key)?.is_some())
    }

    /// Where a scan for decisions at or after `key` must start: the newest run page that
    /// begins before it may hold some of them.
    fn scan_start(&self, key: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        for kv in self.decisions.range(..key.clone()).rev() {
            let (k, v) = kv?;
            if !Page::parse(&v)?.single() {
                return Ok(k.to_vec());
            }
        }
        Ok(key)
    }

    /// Stores one decision that falls inside the runs already written: into the page that
    /// already holds its key (a decision logged twice), else as a page of its own.
    fn put_single(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        if let Some((pk, pv)) = self.find_page(key)? {
            let page = Page::parse(&pv)?;
            let mut b = PageBuilder::new(page.single());
            for (k, r) in page.records() {
                b.push(k, if *k == key { record } else { r });
            }
            self.decisions.insert(pk, b.finish().1)?;
            return Ok(());
        }
        let mut b = PageBuilder::new(true);
        b.push(key, record);
        let (k, v) = b.finish();
        self.decisions.insert(k, v)?;
        Ok(())
    }

    /// Removes `dropped` records' outcomes, then replaces page `page_key` by `replacement`
    /// (or removes it): outcomes first, so a crash in between leaves decisions without
    /// outcomes, never outcomes that look like orphans.
    fn apply_edits(&self, edits: Vec<PageEdit>) -> Result<(), StoreError> {
        let mut outcomes = sled::Batch::default();
        let mut pages = sled::Batch::default();
        for e in edits {
            for k in &e.dropped {
                for kv in self.outcomes.scan_prefix(k) {
                    outcomes.remove(kv?.0);
                }
            }
            pages.remove(e.page_key);
            if let Some((k, v)) = e.replacement {
                pages.insert(k, v);
            }
        }
        self.outcomes.apply_batch(outcomes)?;
        self.decisions.apply_batch(pages)?;
        Ok(())
    }

    /// Moves the first layout's JSON records into this layout's trees, then drops the old trees.
    fn migrate_first_layout(&self) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        for (old, is_decision) in [("decisions", true), ("outcomes", false)] {
            if !names.iter().any(|n| n.as_ref() == old.as_bytes()) {
                continue;
            }
            let tree = self.db.open_tree(old)?;
            loop {
                let mut gone = sled::Batch::default();
                let mut fresh = sled::Batch::default();
                let mut n = 0;
                for kv in tree.iter().take(SCAN_BATCH) {
                    let (k, v) = kv?;
                    if is_decision {
                        let d = decode_decision(String::new, &v, &[])?;
                        let ctx = self.context_of(&d)?;
                        fresh.insert(
                            decision_key(&d.decision_id),
                            encode_decision(&d, ctx, self.options.embedding_dim),
                        );
                    } else {
                        let o = decode_outcome(&k, &v)?;
                        fresh.insert(outcome_key(&o.decision_id, &o.source), encode_outcome(&o));
                    }
                    gone.remove(k);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                if is_decision {
                    // Into the second layout's tree, which is then packed into pages.
                    self.db.open_tree(LEGACY_DECISIONS)?.apply_batch(fresh)?;
                } else {
                    self.outcomes.apply_batch(fresh)?;
                }
                self.db.flush()?;
                tree.apply_batch(gone)?;
            }
            drop(tree);
            self.db.drop_tree(old)?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// The context number of a decision's model, tiers and schema, interning it on first use.
    fn context_of(&self, d: &DecisionRecord) -> Result<u32, StoreError> {
        {
            // Nearly every record names one of the newest contexts: compare in place rather
            // than build and hash a key of cloned strings.
            let r = self.contexts.read().map_err(|_| lock_poisoned())?;
            let newest = r.list.iter().enumerate().rev().take(4);
            for (i, c) in newest {
                if c.is_of(d) {
                    return Ok(u32::try_from(i).unwrap_or(u32::MAX));
                }
            }
        }
        let c = Context {
            model_version: d.model_version.clone(),
            tiers: d.tiers.clone(),
            schema_fingerprint: d.schema_fingerprint.clone(),
        };
        if let Some(&n) = self
            .contexts
            .read()
            .map_err(|_| lock_poisoned())?
            .index
            .get(&c)
        {
            return Ok(n);
        }
        let mut w = self.contexts.write().map_err(|_| lock_poisoned())?;
        if let Some(&n) = w.index.get(&c) {
            return Ok(n);
        }
        let n = u32::try_from(w.list.len()).unwrap_or(u32::MAX);
        let bytes = postcard::to_allocvec(&c).map_err(CodecError::from)?;
        // Written before any record that names it, so the log never holds a dangling number.
        self.contexts_tree.insert(n.to_be_bytes(), bytes)?;
        w.index.insert(c.clone(), n);
        w.list.push(c);
        Ok(n)
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<DecisionRecord, StoreError> {
        let contexts = self.contexts.read().map_err(|_| lock_poisoned())?;
        Ok(decode_decision(
            || key_decision_id(key).unwrap_or_default(),
            value,
            &contexts.list,
        )?)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Writes decisions as pages in one batch (not flushed; sled flushes in the background).
    /// Those above the newest run extend the runs; any at or below it (queued late, or a clock
    /// that stepped back) are stored one per page, so runs never overlap.
    pub fn put_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        let encoded = records
            .iter()
            .map(|r| self.encode(r))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.put_encoded(encoded)
    }

    /// A decision's key and record as [`Self::put_encoded`] takes them. The server encodes on
    /// the thread that routed, so the record's many small buffers are freed where they were
    /// made and only these two cross to the writer.
    pub fn encode(&self, d: &DecisionRecord) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let ctx = self.context_of(d)?;
        Ok((
            decision_key(&d.decision_id),
            encode_decision(d, ctx, self.options.embedding_dim),
        ))
    }

    /// [`Self::put_decisions`] for records already encoded by [`Self::encode`].
    pub fn put_encoded(&self, mut encoded: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        // Stable, so of one id logged twice in a batch the later record is kept.
        encoded.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(encoded.len());
        for e in encoded {
            match last.last_mut() {
                Some(prev) if prev.0 == e.0 => *prev = e,
                _ => last.push(e),
            }
        }
        let mut batch = sled::Batch::default();
        let mut singles = Vec::new();
        {
            let mut runs = self.runs.lock().map_err(|_| lock_poisoned())?;
            let mut page: Option<PageBuilder> = None;
            for (k, r) in last {
                let class = k.first().copied().unwrap_or_default();
                if runs.get(&class).is_some_and(|end| k <= *end) {
                    singles.push((k, r));
                    continue;
                }
                if let Some(p) = page.take_if(|p| !fits(p, &k, &r)) {
                    let (pk, pv) = p.finish();
                    batch.insert(pk, pv);
                }
                page.get_or_insert_with(|| PageBuilder::new(false))
                    .push(&k, &r);
                runs.insert(class, k);
            }
            if let Some(p) = page {
                let (pk, pv) = p.finish();
                batch.insert(pk, pv);
            }
        }
        self.decisions.apply_batch(batch)?;
        for (k, r) in singles {
            self.put_single(&k, &r)?;
        }
        Ok(())
    }

    /// Stores an outcome, one record per decision and source, merged by [`merge`]: the first
    /// verdict wins, and an outcome without a verdict (latency or cost only) never blocks a
    /// later verdict. Not flushed: call [`Self::flush`] before acknowledging.
    pub fn put_outcome(&self, mut r: OutcomeRecord) -> Result<Stored, StoreError> {
        let orphan = !self.contains_decision(&decision_key(&r.decision_id))?;
        r.orphan = orphan;
        let key = outcome_key(&r.decision_id, &r.source);
        // Compare-and-swap until no concurrent writer of the same key got in between.
        loop {
            let old = self.outcomes.get(&key)?;
            let next = match &old {
                None => Some(r.clone()),
                Some(bytes) => merge(decode_outcome(&key, bytes)?, &r),
            };
            let Some(next) = next else {
                return Ok(Stored {
                    duplicate: true,
                    orphan,
                });
            };
            let swapped = self
                .outcomes
                .compare_and_swap(&key, old, Some(encode_outcome(&next)))?;
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

    /// Number of decisions and outcomes stored (counts every record: for tests and tools, not
    /// the serving path).
    pub fn counts(&self) -> (usize, usize) {
        let decisions = self
            .decisions
            .iter()
            .values()
            .filter_map(|v| page_len(&v.ok()?).ok())
            .sum();
        (decisions, self.outcomes.len())
    }

    /// Every decision, oldest first by page (server-made ids sort by time; other ids follow
    /// them; a decision that was queued late comes near, not exactly at, its place).
    pub fn decisions(&self) -> impl Iterator<Item = Result<DecisionRecord, StoreError>> + '_ {
        self.decisions
            .iter()
            .flat_map(move |kv| self.decode_page(kv))
    }

    /// A page's decisions, or the error that stopped reading it.
    fn decode_page(
        &self,
        kv: sled::Result<(IVec, IVec)>,
    ) -> Vec<Result<DecisionRecord, StoreError>> {
        let page = |v: &IVec| -> Result<Vec<Result<DecisionRecord, StoreError>>, StoreError> {
            Ok(Page::parse(v)?
                .records()
                .iter()
                .map(|(k, r)| self.decode(k, r))
                .collect())
        };
        match kv.map_err(StoreError::from).and_then(|(_, v)| page(&v)) {
            Ok(records) => records,
            Err(e) => vec![Err(e)],
        }
    }

    /// Every outcome, grouped by decision.
    pub fn outcomes(&self) -> impl Iterator<Item = Result<OutcomeRecord, StoreError>> + '_ {
        self.outcomes.iter().map(|kv| {
            let (k, v) = kv?;
            Ok(decode_outcome(&k, &v)?)
        })
    }

    /// Pages that may hold decisions older than `cutoff_ms`: those keyed before it, then every
    /// page of keys that do not sort by time. Callers still check each record's own time.
    fn older_than(&self, cutoff_ms: u64) -> impl Iterator<Item = sled::Result<(IVec, IVec)>> {
        self.decisions
            .range(..time_key(cutoff_ms))
            .chain(self.decisions.range(text_keys_start()..))
    }

    /// Drops stored prompt texts older than `retention_ms` (their hashes stay). Decisions
    /// already passed by an earlier run are not read again.
    pub fn expire_prompts(&self, now_ms: u64, retention_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let done = self
            .meta
            .get(PROMPTS_EXPIRED_UNTIL)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut n = 0;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        let scan = self
            .decisions
            .range(self.scan_start(time_key(done.min(cutoff)))?..time_key(cutoff))
            .chain(self.decisions.range(text_keys_start()..));
        for item in scan {
            let (pk, pv) = item?;
            let page = Page::parse(&pv)?;
            let mut b = PageBuilder::new(page.single());
            let mut changed = 0;
            for (k, r) in page.records() {
                let mut d = self.decode(k, r)?;
                if d.prompt.is_some() && d.time_unix_ms < cutoff {
                    d.prompt = None;
                    let ctx = self.context_of(&d)?;
                    b.push(k, &encode_decision(&d, ctx, self.options.embedding_dim));
                    changed += 1;
                } else {
                    b.push(k, r);
                }
            }
            if changed > 0 {
                batch.insert(pk, b.finish().1);
                n += changed;
                pending += changed;
                if pending >= SCAN_BATCH {
                    self.decisions.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
        }
        self.decisions.apply_batch(batch)?;
        self.meta
            .insert(PROMPTS_EXPIRED_UNTIL, &cutoff.max(done).to_be_bytes())?;
        Ok(n)
    }

    /// Removes decisions older than `retention_ms` with their outcomes, and orphan outcomes
    /// observed before then; returns how many decisions went. Writes go in batches of 1,000, so
    /// a large expiry never holds one huge batch in memory.
    pub fn expire_decisions(&self, now_ms: u64, retention_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let gone = self.drop_records(self.older_than(cutoff), usize::MAX, |r| {
            Ok(decision_time(r)? < cutoff)
        })?;
        let mut orphans = sled::Batch::default();
        for item in self.outcomes.iter() {
            let (k, v) = item?;
            let o = decode_outcome(&k, &v)?;
            if o.orphan && u64::try_from(o.observed_at_unix_ms).unwrap_or(0) < cutoff {
                orphans.remove(k);
            }
        }
        self.outcomes.apply_batch(orphans)?;
        Ok(gone)
    }

    /// Removes the `n` oldest decisions with their outcomes (the size cap); returns how many went.
    pub fn remove_oldest(&self, n: usize) -> Result<usize, StoreError> {
        self.drop_records(self.decisions.iter(), n, |_| Ok(true))
    }

    /// Drops the records `pick` chooses from the pages `pages` yields, at most `limit` of them,
    /// with their outcomes, a batch of page edits at a time (so a large removal never holds
    /// one huge batch in memory); returns how many went.
    fn drop_records(
        &self,
        pages: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
        limit: usize,
        mut pick: impl FnMut(&[u8]) -> Result<bool, CodecError>,
    ) -> Result<usize, StoreError> {
        let mut gone = 0;
        let mut edits = Vec::new();
        let mut pending = 0;
        for item in pages {
            if gone == limit {
                break;
            }
            let (pk, pv) = item?;
            let page = Page::parse(&pv)?;
            let mut dropped = Vec::new();
            let replacement = page.filtered(|k, r| {
                let drop = gone + dropped.len() < limit && pick(r)?;
                if drop {
                    dropped.push(k.to_vec());
                }
                Ok(!drop)
            })?;
            if dropped.is_empty() {
                continue;
            }
            gone += dropped.len();
            pending += dropped.len();
            edits.push(PageEdit {
                page_key: pk,
                dropped,
                replacement,
            });
            if pending >= SCAN_BATCH {
                self.apply_edits(std::mem::take(&mut edits))?;
                pending = 0;
            }
        }
        self.apply_edits(edits)?;
        Ok(gone)
    }

    fn outcomes_of(&self, decision_key: &[u8]) -> Result<Vec<OutcomeRecord>, StoreError> {
        self.outcomes
            .scan_prefix(decision_key)
            .map(|kv| {
                let (k, v) = kv?;
                Ok(decode_outcome(&k, &v)?)
            })
            .collect()
    }

    /// Writes one JSON line per decision at or after `since_ms` with its outcomes, then one
    /// line per orphan decision id with its outcomes (`"decision": null`). Returns the number
    /// of lines.
    pub fn export(&self, since_ms: Option<u64>, out: &mut impl Write) -> Result<usize, StoreError> {
        let mut lines = 0;
        let scan = self
            .decisions
            .range(self.scan_start(time_key(since_ms.unwrap_or(0)))?..text_keys_start())
            .chain(self.decisions.range(text_keys_start()..));
        for item in scan {
            let (_, v) = item?;
            for (k, r) in Page::parse(&v)?.records() {
                let d = self.decode(k, r)?;
                if since_ms.is_some_and(|s| d.time_unix_ms < s) {
                    continue;
                }
                let outcomes = self.outcomes_of(k)?;
                serde_json::to_writer(
                    &mut *out,
                    &serde_json::json!({"decision_id": d.decision_id, "decision": d, "outcomes": outcomes}),
                )?;
                out.write_all(b"\n")?;
                lines += 1;
            }
        }
        let mut orphans: BTreeMap<String, Vec<OutcomeRecord>> = BTreeMap::new();
        for item in self.outcomes.iter() {
            let (k, v) = item?;
            let o = decode_outcome(&k, &v)?;
            if !self.contains_decision(&decision_key(&o.decision_id))?
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
    use super::super::page::PAGE_RECORDS;
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
        let mut left: Vec<String> = s.outcomes().map(|o| o.unwrap().decision_id).collect();
        left.sort();
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

    fn v7(ms: u64) -> String {
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(ms / 1_000, 0, 0, 0)).to_string()
    }

    #[test]
    fn a_first_layout_store_is_migrated_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let id = v7(5_000);
        let d = DecisionRecord {
            decision_id: id.clone(),
            features: vec![1.0, 0.5, -0.25],
            ..decision("unused", 5_000)
        };
        {
            // What the first layout wrote: JSON values under text keys.
            let db = sled::open(&p).unwrap();
            let t = db.open_tree("decisions").unwrap();
            t.insert(id.as_bytes(), serde_json::to_vec(&d).unwrap())
                .unwrap();
            let o = db.open_tree("outcomes").unwrap();
            let out = outcome(&id, "user", 0.5);
            o.insert(format!("{id}/user"), serde_json::to_vec(&out).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.decisions().map(Result::unwrap).collect::<Vec<_>>(), [d]);
        let outs: Vec<OutcomeRecord> = s.outcomes().map(Result::unwrap).collect();
        assert_eq!(outs, [outcome(&id, "user", 0.5)]);
        assert!(
            !s.db.tree_names().iter().any(|n| n.as_ref() == b"decisions"),
            "the old trees are gone"
        );
        // An outcome arriving now finds the migrated decision.
        assert!(!s.put_outcome(outcome(&id, "judge", 1.0)).unwrap().orphan);
        drop(s);
        assert_eq!(Store::open(&p).unwrap().counts(), (1, 2));
    }

    #[test]
    fn decisions_queued_late_are_found_exported_once_and_expired_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (1..=300).map(|i| v7(i * 1_000)).collect();
        let at = |i: usize| decision(&ids[i], (i as u64 + 1) * 1_000);
        // Every third decision reaches the writer after the batch that followed it.
        let (late, on_time): (Vec<usize>, Vec<usize>) = (0..300).partition(|i| i % 3 == 0);
        s.put_decisions(&on_time.iter().map(|&i| at(i)).collect::<Vec<_>>())
            .unwrap();
        s.put_decisions(&late.iter().map(|&i| at(i)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(
            s.decisions.len(),
            200_usize.div_ceil(PAGE_RECORDS) + 100,
            "200 in full run pages, the 100 late ones alone"
        );
        // The same decision logged again replaces its record, in a run page and alone.
        for i in [1, 3] {
            s.put_decisions(&[DecisionRecord {
                prompt_tokens: 99,
                ..at(i)
            }])
            .unwrap();
        }
        assert_eq!(s.counts().0, 300);
        let twice: Vec<DecisionRecord> = s
            .decisions()
            .map(Result::unwrap)
            .filter(|d| d.prompt_tokens == 99)
            .collect();
        assert_eq!(twice.len(), 2);
        for id in &ids {
            assert!(
                !s.put_outcome(outcome(id, "user", 1.0)).unwrap().orphan,
                "{id}"
            );
        }
        assert!(
            s.put_outcome(outcome(&v7(150_000), "user", 1.0))
                .unwrap()
                .orphan
        );
        let mut out = Vec::new();
        assert_eq!(s.export(None, &mut out).unwrap(), 301);
        let text = String::from_utf8(out).unwrap();
        for id in &ids {
            // The line's id, the decision's and its outcome's: one line per decision.
            assert_eq!(text.matches(id.as_str()).count(), 3, "{id}");
        }
        // Retention takes decisions by their own time, across run pages and lone ones.
        assert_eq!(s.expire_decisions(151_000, 100_500).unwrap(), 50);
        assert_eq!(s.counts(), (250, 250));
        let mut times: Vec<u64> = s.decisions().map(|d| d.unwrap().time_unix_ms).collect();
        times.sort_unstable();
        assert_eq!(times.first(), Some(&51_000));
        // The cap removes exactly what it asks for, splitting a page if it must.
        assert_eq!(s.remove_oldest(7).unwrap(), 7);
        assert_eq!(s.counts(), (243, 243));
        for id in &ids[50..] {
            let found = s.contains_decision(&decision_key(id)).unwrap();
            let has_outcome = s.outcomes().any(|o| o.unwrap().decision_id == *id);
            assert_eq!(
                found, has_outcome,
                "a decision and its outcomes go together: {id}"
            );
        }
    }

    #[test]
    fn a_store_of_one_decision_per_key_is_packed_into_pages_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let records: Vec<DecisionRecord> = (1..=200)
            .map(|i| decision(&v7(i * 1_000), i * 1_000))
            .collect();
        {
            let s = Store::open(&p).unwrap();
            let legacy = s.db.open_tree(LEGACY_DECISIONS).unwrap();
            for d in &records {
                let ctx = s.context_of(d).unwrap();
                legacy
                    .insert(decision_key(&d.decision_id), encode_decision(d, ctx, 0))
                    .unwrap();
            }
            s.put_outcome(outcome(&records[5].decision_id, "user", 0.5))
                .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert!(
            !s.db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == LEGACY_DECISIONS.as_bytes()),
            "the old tree is gone"
        );
        assert_eq!(
            s.decisions.len(),
            200_usize.div_ceil(PAGE_RECORDS),
            "packed into full pages"
        );
        assert_eq!(
            s.decisions().map(Result::unwrap).collect::<Vec<_>>(),
            records
        );
        assert!(
            !s.put_outcome(outcome(&records[150].decision_id, "user", 1.0))
                .unwrap()
                .orphan
        );
        // New decisions after the packed ones extend the runs.
        s.put_decisions(&[decision(&v7(300_000), 300_000)]).unwrap();
        assert_eq!(s.decisions.len(), 200_usize.div_ceil(PAGE_RECORDS) + 1);
    }

    #[test]
    fn time_ranges_use_the_keys_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (1..=5).map(|i| v7(i * 10_000)).collect();
        let mut records: Vec<DecisionRecord> = ids
            .iter()
            .zip(1..)
            .map(|(id, i)| decision(id, i * 10_000))
            .collect();
        // A caller-chosen id sorts after the UUIDs and is judged by its own time.
        records.push(decision("custom", 15_000));
        records.reverse();
        s.put_decisions(&records).unwrap();
        for id in &ids {
            s.put_outcome(outcome(id, "user", 1.0)).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(s.export(Some(30_000), &mut out).unwrap(), 3);
        let order: Vec<String> = s.decisions().map(|d| d.unwrap().decision_id).collect();
        assert_eq!(order[..5], ids[..], "UUIDv7 keys sort by time");
        // Retention: 10 s and 15 s go (the text id by its own time), with their outcomes.
        assert_eq!(s.expire_decisions(36_000, 16_000).unwrap(), 2);
        assert_eq!(s.counts(), (4, 4));
        // The cap's removal takes the oldest first.
        assert_eq!(s.remove_oldest(2).unwrap(), 2);
        let left: Vec<String> = s.decisions().map(|d| d.unwrap().decision_id).collect();
        assert_eq!(left, [ids[3].clone(), ids[4].clone()]);
        assert_eq!(s.counts().1, 2);
    }

    #[test]
    fn prompt_expiry_does_not_reread_what_it_already_passed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for t in [1_000, 3_000] {
            s.put_decisions(&[decision(&v7(t), t)]).unwrap();
        }
        assert_eq!(s.expire_prompts(10_000, 100).unwrap(), 2);
        // A record written later with an old time is below the watermark and before the page
        // that straddles it: not looked at again.
        s.put_decisions(&[decision(&v7(2_000), 2_000)]).unwrap();
        assert_eq!(s.expire_prompts(10_000, 100).unwrap(), 0);
        // Newer records past retention are.
        s.put_decisions(&[decision(&v7(12_000), 12_000)]).unwrap();
        assert_eq!(s.expire_prompts(20_000, 100).unwrap(), 1);
    }
}
