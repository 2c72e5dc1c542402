//! The feedback loop's write path: decisions logged off the request path through a bounded
//! queue, outcomes made durable by group commit before they are acknowledged.

mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

pub use store::{DecisionRecord, KnobsRecord, OutcomeRecord, Store, StoreError, Stored};

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
    /// Batches that failed to write or flush.
    pub write_errors: AtomicU64,
}

type OutcomeJob = (OutcomeRecord, oneshot::Sender<Result<Stored, String>>);

/// The running feedback writers over one store.
#[derive(Debug)]
pub struct Feedback {
    store: Store,
    decisions: mpsc::Sender<DecisionRecord>,
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
        store_prompts: bool,
    ) -> Result<Arc<Self>, LoadError> {
        let store = Store::open(dir)?;
        let counters = Arc::new(Counters::default());
        let (dtx, mut drx) = mpsc::channel::<DecisionRecord>(limits.decision_queue.max(1));
        let (otx, mut orx) = mpsc::channel::<OutcomeJob>(limits.outcome_queue.max(1));
        let batch = limits.batch.max(1);
        {
            let (store, counters) = (store.clone(), counters.clone());
            std::thread::Builder::new()
                .name("triage-decisions".into())
                .spawn(move || {
                    let mut buf = Vec::with_capacity(batch);
                    while drx.blocking_recv_many(&mut buf, batch) > 0 {
                        match store.put_decisions(&buf) {
                            Ok(()) => {
                                counters.decisions_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // Counted in records, like every other counter here.
                                counters.write_errors.fetch_add(buf.len() as u64, Ordering::Relaxed);
                                tracing::error!(error = %e, lost = buf.len(), "writing decisions failed");
                            }
                        }
                        buf.clear();
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
                        let results: Vec<Result<Stored, String>> = buf
                            .iter()
                            .map(|(r, _)| store.put_outcome(r.clone()).map_err(|e| e.to_string()))
                            .collect();
                        let flushed = store.flush().map_err(|e| e.to_string());
                        for ((_, ack), res) in buf.drain(..).zip(results) {
                            let res = match (&flushed, res) {
                                (Err(e), _) => Err(e.clone()),
                                (Ok(()), r) => r,
                            };
                            match &res {
                                Ok(s) if s.duplicate => {
                                    counters.outcomes_duplicate.fetch_add(1, Ordering::Relaxed)
                                }
                                Ok(s) => {
                                    if s.orphan {
                                        counters.outcomes_orphan.fetch_add(1, Ordering::Relaxed);
                                    }
                                    counters.outcomes_stored.fetch_add(1, Ordering::Relaxed)
                                }
                                Err(_) => counters.write_errors.fetch_add(1, Ordering::Relaxed),
                            };
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
        if self.decisions.try_send(record).is_err() {
            let n = self
                .counters
                .decisions_dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "decision log queue full; decisions dropped");
            }
        }
    }

    /// Stores an outcome and returns once it is durable.
    pub async fn record_outcome(&self, record: OutcomeRecord) -> Result<Stored, String> {
        let (tx, rx) = oneshot::channel();
        self.outcomes
            .send((record, tx))
            .await
            .map_err(|_| "the outcome writer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the outcome writer has stopped".to_string())?
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
