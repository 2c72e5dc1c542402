//! Building the gRPC server: limits, timeouts, health, reflection and graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::proto::v1::router_server::RouterServer;
use crate::service::RouterService;

/// Errors while starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the embedded descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `triage.v1.Router`, `grpc.health.v1.Health` and server reflection on `listener`
/// until `shutdown` resolves; in-flight requests are allowed to finish.
pub async fn serve(
    engine: Arc<Engine>,
    feedback: Option<Arc<crate::feedback::Feedback>>,
    gateway: Option<Arc<crate::chain::Gateway>>,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let limits = engine.config().server.clone();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServer<RouterService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let watcher = spawn_model_watch(engine.clone());
    let core = crate::app::Triage::new(engine, feedback, gateway);
    let service = RouterService::new(core.clone());
    // One shutdown for both front doors: the gRPC one's future fires it for the HTTP one.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|l| {
        let app = crate::http::router(core.clone(), limits.max_request_bytes);
        tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.changed().await;
            };
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                tracing::error!(error = %e, "HTTP front door failed");
            }
        })
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let router = RouterServer::new(service).max_decoding_message_size(limits.max_request_bytes);
    // No server-wide timeout: completions have their own deadline (gateway.call_timeout_ms)
    // and the other RPCs theirs (server.request_timeout_ms), each answered DEADLINE_EXCEEDED.
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .add_service(health)
        .add_service(reflection)
        .add_service(router)
        // Without TCP_NODELAY, small gRPC replies wait on delayed ACKs (~40 ms each).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(h) = http_task {
        let _ = h.await;
    }
    Ok(())
}

/// Reloads the configured model file (used by SIGHUP and the file watch). Errors keep the old
/// model and are logged.
pub fn reload_configured(engine: &Engine, why: &str) {
    let path = &engine.config().model.classifier;
    match engine.store().reload(engine.config(), path) {
        Ok(v) => tracing::info!(model_version = %v, path = %path.display(), why, "model reloaded"),
        Err(e) => tracing::error!(error = %e, why, "model not reloaded; the old one keeps serving"),
    }
}

/// What identifies one version of the model file. The modification time alone misses a file
/// replaced within one tick of the kernel's coarse clock; an atomic rename (the usual deploy)
/// always brings a new inode, and most edits change the length.
#[derive(Debug, PartialEq)]
struct Stamp {
    modified: std::time::SystemTime,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok()?,
        len: m.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&m),
    })
}

/// Polls the classifier file's [`Stamp`] and reloads it when it changes.
fn spawn_model_watch(engine: Arc<Engine>) -> Option<tokio::task::JoinHandle<()>> {
    let every = engine.config().model.watch_interval?;
    // Read the starting time stamp now, not in the task: a spawned task may first run after
    // the server already answers, and a file replaced in between would then never reload.
    let path = engine.config().model.classifier.clone();
    let mut last = stamp(&path);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now.is_some() && now != last {
                last = now;
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || reload_configured(&e, "file changed"))
                    .await;
            }
        }
    }))
}
