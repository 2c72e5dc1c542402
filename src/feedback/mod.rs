//! The feedback loop's write path: decisions logged off the request path through a bounded
//! queue, outcomes made durable by group commit before they are acknowledged.

mod codec;
mod page;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

pub use codec::{CodecError, hex};
pub use store::{
    DEFAULT_CACHE_BYTES, DecisionRecord, KnobsRecord, OutcomeRecord, Store, StoreError,
    StoreOptions, Stored,
};

use crate::error::LoadError;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Queue sizes and batch limits.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackLimits {
    /// Decisions waiting to be written; beyond this they are dropped and counted.
    pub decision_queue: usize,
    /// Outcomes waiting to be written; beyond this callers wait (outcomes are never dropped).
    pub outcome_queue: usize,
    /// Most records written per batch (and per flush for outcomes).
    pub batch: usize,
    /// Bytes on disk beyond which the oldest decisions are removed with their outcomes.
    pub max_store_bytes: Option<u64>,
}

/// Counters exposed for operators.
#[derive(Debug, Default)]
pub struct Counters {
    /// Decisions written.
    pub decisions_written: AtomicU64,
    /// Decisions dropped because the queue was full.
    pub decisions_dropped: AtomicU64,
    /// Outcomes stored (first per source).
    pub outcomes_stored: AtomicU64,
    /// Outcomes that repeated a (decision, source) pair.
    pub outcomes_duplicate: AtomicU64,
    /// Outcomes whose decision was not in this store.
    pub outcomes_orphan: AtomicU64,
    /// Records that failed to write or flush.
    pub write_errors: AtomicU64,
    /// Of those, records refused because the disk was full (or read-only).
    pub out_of_space: AtomicU64,
    /// Decisions removed to keep the store under `max_store_bytes`.
    pub decisions_capped: AtomicU64,
}

/// How long the decision writer waits for more decisions before writing a partial batch.
const DECISION_COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

/// Checks the size cap every this many decision batches (and on the first).
const CAP_CHECK_BATCHES: u64 = 16;
/// After a removal, the store holds this share of the decisions the cap allows.
const CAP_LOW_WATER: f64 = 0.8;

/// The size cap, enforced by the decision writer. sled neither shrinks its files nor frees
/// space at once when records go, so the on-disk size cannot steer removals directly: the
/// first time the store passes the cap, its bytes per decision (sled's overhead included)
/// fix how many decisions the cap holds, and from then on the oldest go whenever there are
/// more. sled reuses the space they leave.
#[derive(Debug)]
struct Cap {
    max_bytes: u64,
    batches: u64,
    /// Decisions in the store, counted once at the first check and kept up to date after.
    count: Option<u64>,
    /// Decisions the cap holds, once measured.
    allowed: Option<u64>,
}

impl Cap {
    fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            batches: 0,
            count: None,
            allowed: None,
        }
    }

    fn check(&mut self, store: &Store, counters: &Counters, written: u64) {
        if let Some(c) = &mut self.count {
            *c += written;
        }
        self.batches += 1;
        if (self.batches - 1) % CAP_CHECK_BATCHES != 0 {
            return;
        }
        let count = *self.count.get_or_insert_with(|| store.counts().0 as u64);
        if self.allowed.is_none() {
            let Ok(size) = store.size_on_disk() else {
                return;
            };
            if size <= self.max_bytes || count == 0 {
                return;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let allowed = (self.max_bytes as f64 / (size as f64 / count as f64)) as u64;
            self.allowed = Some(allowed.max(1));
        }
        let allowed = self.allowed.unwrap_or(u64::MAX);
        if count <= allowed {
            return;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let keep = (allowed as f64 * CAP_LOW_WATER) as u64;
        let remove = usize::try_from(count - keep).unwrap_or(usize::MAX);
        match store.remove_oldest(remove) {
            Ok(gone) => {
                let gone = gone as u64;
                self.count = Some(count - gone);
                counters.decisions_capped.fetch_add(gone, Ordering::Relaxed);
                tracing::info!(
                    max = self.max_bytes,
                    allowed,
                    removed = gone,
                    "feedback store at feedback.max_store_bytes; oldest decisions removed"
                );
            }
            Err(e) => tracing::error!(error = %e, "removing the oldest decisions failed"),
        }
    }
}

/// Counts a stored outcome by what it turned out to be.
fn count_stored(counters: &Counters, s: Stored) {
    let c = if s.duplicate {
        &counters.outcomes_duplicate
    } else {
        if s.orphan {
            counters.outcomes_orphan.fetch_add(1, Ordering::Relaxed);
        }
        &counters.outcomes_stored
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the decision writer takes: decisions, and the gateway's own facts about the calls it
/// made for them. Neither is acknowledged to anyone, so neither waits for a flush; the facts
/// queue behind their decision, so they are never stored before it.
#[derive(Debug)]
enum LogEntry {
    /// Key and record, encoded by [`Store::encode`] on the routing thread.
    Decision((Vec<u8>, Vec<u8>)),
    Call(OutcomeRecord),
}

/// Counts a failed write of `records` records, telling a full disk apart.
fn count_failure(counters: &Counters, e: &StoreError, records: u64) {
    counters.write_errors.fetch_add(records, Ordering::Relaxed);
    if e.is_out_of_space() {
        counters.out_of_space.fetch_add(records, Ordering::Relaxed);
    }
}

/// Why an outcome was not stored; it never was acknowledged, so the caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OutcomeError {
    /// What failed.
    pub message: String,
    /// The disk was full or read-only (retry once space returns).
    pub out_of_space: bool,
}

impl OutcomeError {
    fn from_store(e: &StoreError) -> Self {
        Self {
            message: e.to_string(),
            out_of_space: e.is_out_of_space(),
        }
    }

    fn stopped() -> Self {
        Self {
            message: "the outcome writer has stopped".into(),
            out_of_space: false,
        }
    }
}

type OutcomeJob = (OutcomeRecord, oneshot::Sender<Result<Stored, OutcomeError>>);

/// The running feedback writers over one store.
#[derive(Debug)]
pub struct Feedback {
    store: Store,
    decisions: mpsc::Sender<LogEntry>,
    outcomes: mpsc::Sender<OutcomeJob>,
    counters: Arc<Counters>,
    /// Whether decisions keep the prompt text.
    pub store_prompts: bool,
}

impl Feedback {
    /// Opens the store and starts one writer thread for decisions and one for outcomes.
    pub fn start(
        dir: &Path,
        limits: FeedbackLimits,
        options: StoreOptions,
        store_prompts: bool,
    ) -> Result<Arc<Self>, LoadError> {
        let store = Store::open_with(dir, options)?;
        let counters = Arc::new(Counters::default());
        let (dtx, mut drx) = mpsc::channel::<LogEntry>(limits.decision_queue.max(1));
        let (otx, mut orx) = mpsc::channel::<OutcomeJob>(limits.outcome_queue.max(1));
        let batch = limits.batch.max(1);
        {
            let (store, counters) = (store.clone(), counters.clone());
            std::thread::Builder::new()
                .name("triage-decisions".into())
                .spawn(move || {
                    let mut buf = Vec::with_capacity(batch);
                    let mut decisions = Vec::with_capacity(batch);
                    let mut calls = Vec::new();
                    let mut cap = limits.max_store_bytes.map(Cap::new);
                    while drx.blocking_recv_many(&mut buf, batch) > 0 {
                        if buf.len() < batch {
                            // Decisions are never acknowledged, so waiting a little to write
                            // hundreds at once costs nothing and saves a sled batch (and a
                            // wake-up) per handful of requests.
                            std::thread::sleep(DECISION_COALESCE);
                            while buf.len() < batch {
                                let Ok(r) = drx.try_recv() else { break };
                                buf.push(r);
                            }
                        }
                        for entry in buf.drain(..) {
                            match entry {
                                LogEntry::Decision(d) => decisions.push(d),
                                LogEntry::Call(o) => calls.push(o),
                            }
                        }
                        let mut written = 0;
                        let n = decisions.len() as u64;
                        match store.put_encoded(std::mem::take(&mut decisions)) {
                            Ok(()) => {
                                written = n;
                                counters
                                    .decisions_written
                                    .fetch_add(written, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // Counted in records, like every other counter here; decisions
                                // are dropped rather than retried so routing never waits on disk.
                                count_failure(&counters, &e, n);
                                tracing::error!(error = %e, lost = n, "writing decisions failed");
                            }
                        }
                        // After the decisions they came behind, so none looks like an orphan.
                        for o in calls.drain(..) {
                            match store.put_outcome(o) {
                                Ok(s) => count_stored(&counters, s),
                                Err(e) => count_failure(&counters, &e, 1),
                            }
                        }
                        if let Some(cap) = &mut cap {
                            cap.check(&store, &counters, written);
                        }
                    }
                    let _ = store.flush();
                })
                .map_err(|e| LoadError::io(dir, e))?;
        }
        {
            let (store, counters) = (store.clone(), counters.clone());
            std::thread::Builder::new()
                .name("triage-outcomes".into())
                .spawn(move || {
                    let mut buf: Vec<OutcomeJob> = Vec::with_capacity(batch);
                    while orx.blocking_recv_many(&mut buf, batch) > 0 {
                        // Group commit: store the whole batch, flush once, then acknowledge.
                        let results: Vec<Result<Stored, OutcomeError>> = buf
                            .iter()
                            .map(|(r, _)| {
                                store
                                    .put_outcome(r.clone())
                                    .map_err(|e| OutcomeError::from_store(&e))
                            })
                            .collect();
                        let flushed = store.flush().map_err(|e| OutcomeError::from_store(&e));
                        for ((_, ack), res) in buf.drain(..).zip(results) {
                            let res = match (&flushed, res) {
                                (Err(e), _) => Err(e.clone()),
                                (Ok(()), r) => r,
                            };
                            match &res {
                                Ok(s) => count_stored(&counters, *s),
                                Err(e) => {
                                    if e.out_of_space {
                                        counters.out_of_space.fetch_add(1, Ordering::Relaxed);
                                    }
                                    counters.write_errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let _ = ack.send(res);
                        }
                    }
                })
                .map_err(|e| LoadError::io(dir, e))?;
        }
        Ok(Arc::new(Self {
            store,
            decisions: dtx,
            outcomes: otx,
            counters,
            store_prompts,
        }))
    }

    /// Queues a decision without waiting; a full queue drops it and counts the drop, so logging
    /// never slows routing down.
    pub fn log_decision(&self, record: DecisionRecord) {
        match self.store.encode(&record) {
            Ok(encoded) => self.log(LogEntry::Decision(encoded)),
            Err(e) => {
                count_failure(&self.counters, &e, 1);
                tracing::error!(error = %e, "encoding a decision failed; dropped");
            }
        }
    }

    /// Queues the gateway's facts about a call (latency, tokens, cost, error class) behind its
    /// decision, without waiting and without a flush; dropped and counted like decisions when
    /// the queue is full.
    pub fn log_call(&self, record: OutcomeRecord) {
        self.log(LogEntry::Call(record));
    }

    fn log(&self, entry: LogEntry) {
        if self.decisions.try_send(entry).is_err() {
            let n = self
                .counters
                .decisions_dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "decision log queue full; decisions and call records dropped"
                );
            }
        }
    }

    /// Stores an outcome and returns once it is durable.
    pub async fn record_outcome(&self, record: OutcomeRecord) -> Result<Stored, OutcomeError> {
        let (tx, rx) = oneshot::channel();
        self.outcomes
            .send((record, tx))
            .await
            .map_err(|_| OutcomeError::stopped())?;
        rx.await.map_err(|_| OutcomeError::stopped())?
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The store (for export and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }
}
