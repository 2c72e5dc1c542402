//! Load shedding: a bound on calls in flight per kind of call, a short wait queue, an immediate
//! refusal beyond both, and the gRPC layer that applies them before a request body is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The kinds of call bounded separately: completions hold their slot for seconds, and must not
/// starve routing, which holds it for microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Route and outcome calls.
    Route,
    /// Complete and streamed completions, over every door.
    Complete,
}

impl Class {
    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::Complete => "complete",
        }
    }
}

/// One bound: `slots` calls in flight, at most `queue` more waiting up to `wait`.
#[derive(Debug)]
pub struct Gate {
    key: &'static str,
    slots: Arc<Semaphore>,
    limit: usize,
    queue: usize,
    waiting: AtomicUsize,
    wait: Duration,
    /// Calls refused so far.
    pub shed: AtomicU64,
}

/// Held while a call runs; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    /// A gate of `limit` slots (set by config key `key`) with a queue of `queue` waiting at
    /// most `wait`.
    pub fn new(key: &'static str, limit: usize, queue: usize, wait: Duration) -> Self {
        Self {
            key,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            queue,
            waiting: AtomicUsize::new(0),
            wait,
            shed: AtomicU64::new(0),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// A slot now, or after a short wait in the queue, or [`Error::Overloaded`] at once when the
    /// queue is full too.
    pub async fn admit(&self) -> Result<Permit, Error> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _permit: p });
        }
        let refused = || {
            self.shed.fetch_add(1, Ordering::Relaxed);
            Error::Overloaded {
                key: self.key,
                in_flight: self.limit,
                retry_after_s: 1,
            }
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(refused());
        }
        let got = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(p)) => Ok(Permit { _permit: p }),
            _ => Err(refused()),
        }
    }
}

/// A slot taken by the gRPC door before the request body was read, handed to the handler in
/// the request's extensions (which must be `Clone`, hence the shared cell).
#[derive(Debug, Clone)]
pub struct Admitted(Arc<std::sync::Mutex<Option<Permit>>>);

impl Admitted {
    /// The slot, once: a second take finds nothing.
    pub fn take(&self) -> Option<Permit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }

    /// Whether the handler has taken the slot, which it does once the body is decoded.
    fn taken(&self) -> bool {
        self.0.lock().map_or(true, |p| p.is_none())
    }
}

/// The class of a `triage.v1.Router` call by its gRPC path; `None` for calls that are not
/// bounded (health, reflection, admin).
pub fn grpc_class(path: &str) -> Option<Class> {
    match path.strip_prefix("/triage.v1.Router/")? {
        "Route" | "RecordOutcome" => Some(Class::Route),
        "Complete" | "CompleteStream" => Some(Class::Complete),
        _ => None,
    }
}

/// A tower layer for the gRPC server that admits bounded calls before their bodies are read:
/// admitting after decoding let a flood of large requests hold every body in memory at once
/// (2,000 streams of 100 KB took RSS to ~500 MB), whatever the in-flight bound. An admitted
/// call whose body has not arrived within `body_timeout` is answered `DEADLINE_EXCEEDED`, so
/// trickled bodies cannot hold the slots.
#[derive(Debug, Clone)]
pub struct AdmitLayer {
    admission: Arc<Admission>,
    body_timeout: Duration,
}

impl AdmitLayer {
    /// The layer over a server's gates, with `server.body_timeout_ms`.
    pub fn new(admission: Arc<Admission>, body_timeout: Duration) -> Self {
        Self {
            admission,
            body_timeout,
        }
    }
}

impl<S> tower::Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            admission: self.admission.clone(),
            body_timeout: self.body_timeout,
        }
    }
}

/// The service [`AdmitLayer`] builds.
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
    body_timeout: Duration,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Admit<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let Some(class) = grpc_class(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        // The clone that was polled ready serves this call; a fresh clone waits for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (admission, body_timeout) = (self.admission.clone(), self.body_timeout);
        Box::pin(async move {
            let slot = match admission.gate(class).admit().await {
                Ok(p) => Admitted(Arc::new(std::sync::Mutex::new(Some(p)))),
                Err(e) => return Ok(tonic::Status::from(e).into_http()),
            };
            req.extensions_mut().insert(slot.clone());
            let call = inner.call(req);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => r,
                () = tokio::time::sleep(body_timeout) => {
                    if slot.taken() {
                        call.await
                    } else {
                        // Dropping the call drops the half-read body and frees the slot.
                        Ok(tonic::Status::from(Error::DeadlineExceeded(format!(
                            "request body not received within server.body_timeout_ms ({} ms)",
                            body_timeout.as_millis()
                        )))
                        .into_http())
                    }
                }
            }
        })
    }
}

/// The gates of one server.
#[derive(Debug)]
pub struct Admission {
    route: Gate,
    complete: Gate,
}

impl Admission {
    /// Gates from `[server]`'s bounds.
    pub fn new(config: &crate::config::ServerConfig) -> Self {
        Self {
            route: Gate::new(
                "server.max_in_flight_routes",
                config.max_in_flight_routes,
                config.max_queued,
                config.queue_timeout,
            ),
            complete: Gate::new(
                "server.max_in_flight_completions",
                config.max_in_flight_completions,
                config.max_queued,
                config.queue_timeout,
            ),
        }
    }

    /// The gate for a class of call.
    pub fn gate(&self, class: Class) -> &Gate {
        match class {
            Class::Route => &self.route,
            Class::Complete => &self.complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_calls_are_classed_and_the_rest_left_alone() {
        assert_eq!(grpc_class("/triage.v1.Router/Route"), Some(Class::Route));
        assert_eq!(
            grpc_class("/triage.v1.Router/RecordOutcome"),
            Some(Class::Route)
        );
        assert_eq!(
            grpc_class("/triage.v1.Router/CompleteStream"),
            Some(Class::Complete)
        );
        assert_eq!(grpc_class("/triage.v1.Router/Stats"), None);
        assert_eq!(grpc_class("/grpc.health.v1.Health/Check"), None);
        assert_eq!(grpc_class("/other.Router/Route"), None);
    }

    #[tokio::test]
    async fn beyond_the_slots_and_the_queue_calls_are_refused_at_once() {
        let gate = Gate::new("test.limit", 2, 1, Duration::from_secs(30));
        let a = gate.admit().await.unwrap();
        let _b = gate.admit().await.unwrap();
        assert_eq!(gate.in_flight(), 2);
        // The third waits in the queue; a fourth finds the queue full and is refused.
        let gate = Arc::new(gate);
        let g = gate.clone();
        let queued = tokio::spawn(async move { g.admit().await.map(|_| ()) });
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = gate.admit().await.unwrap_err();
        assert!(matches!(
            refused,
            Error::Overloaded {
                key: "test.limit",
                in_flight: 2,
                retry_after_s: 1
            }
        ));
        assert_eq!(gate.shed.load(Ordering::Relaxed), 1);
        drop(a);
        queued.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_queued_call_gives_up_after_the_wait() {
        let gate = Gate::new("test.limit", 1, 4, Duration::from_millis(50));
        let _held = gate.admit().await.unwrap();
        assert!(matches!(gate.admit().await, Err(Error::Overloaded { .. })));
    }
}
