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
    /// A public address without authentication.
    #[error("{0}")]
    Unauthenticated(String),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `triage.v1.Router`, `grpc.health.v1.Health` and server reflection on `listener`
/// (and the HTTP doors on `http`) until `shutdown` resolves; in-flight requests then get
/// `server.drain_timeout_ms` to finish before the server stops anyway.
pub async fn serve(
    engine: Arc<Engine>,
    feedback: Option<Arc<crate::feedback::Feedback>>,
    gateway: Option<Arc<crate::chain::Gateway>>,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let limits = engine.config().server.clone();
    let auth = &engine.config().auth;
    auth.check_bind(listener.local_addr()?)
        .map_err(ServeError::Unauthenticated)?;
    if let Some(h) = &http {
        auth.check_bind(h.local_addr()?)
            .map_err(ServeError::Unauthenticated)?;
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServer<RouterService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let tls = match &limits.tls {
        Some(m) => Some(Arc::new(crate::tls::Tls::new(m).map_err(ServeError::Tls)?)),
        None => None,
    };
    let watcher = spawn_model_watch(engine.clone());
    #[cfg(unix)]
    let hangup = spawn_hangup(engine.clone(), tls.clone())?;
    let core = crate::app::Triage::new(engine, feedback, gateway);
    let gates = core.admission().clone();
    let service = RouterService::new(core.clone());
    // One shutdown for both front doors: the gRPC one's future fires it for the HTTP one.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|l| {
        let app = crate::http::router(core.clone(), &limits);
        tokio::spawn(serve_http(
            l,
            app,
            limits.clone(),
            tls.clone(),
            stop_rx.clone(),
        ))
    });
    let draining = core.clone();
    let shutdown = async move {
        shutdown.await;
        draining.start_draining();
        health_reporter
            .set_not_serving::<RouterServer<RouterService>>()
            .await;
        let _ = stop_tx.send(true);
    };
    let router = RouterServer::new(service).max_decoding_message_size(limits.max_request_bytes);
    // No server-wide timeout: completions have their own deadline (gateway.call_timeout_ms)
    // and the other RPCs theirs (server.request_timeout_ms), each answered DEADLINE_EXCEEDED.
    let services = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .layer(tower::util::MapResponseLayer::new(
            decode_error_is_invalid_argument::<tonic::body::Body>,
        ))
        .layer(crate::admission::AdmitLayer::new(
            gates,
            limits.body_timeout,
        ))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(router);
    type Served<'a> =
        std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;
    // At most server.max_connections gRPC connections open at once; beyond them new ones wait
    // in the kernel's backlog instead of each taking h2 buffers.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let grpc: Served<'_> = match tls {
        None => Box::pin(services.serve_with_incoming_shutdown(
            plain_incoming(listener, slots, stop_rx.clone()),
            shutdown,
        )),
        Some(tls) => Box::pin(services.serve_with_incoming_shutdown(
            tls_incoming(listener, tls, limits.header_timeout, slots, stop_rx.clone()),
            shutdown,
        )),
    };
    let mut drained = stop_rx.clone();
    let deadline = async move {
        stopped(&mut drained).await;
        tokio::time::sleep(limits.drain_timeout).await;
    };
    tokio::select! {
        r = grpc => r?,
        () = deadline => tracing::warn!(
            drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
            "gRPC calls still running at the drain deadline (server.drain_timeout_ms) were cut"
        ),
    }
    if let Some(w) = watcher {
        w.abort();
    }
    #[cfg(unix)]
    hangup.abort();
    if let Some(h) = http_task {
        let _ = h.await;
    }
    Ok(())
}

/// A request whose protobuf does not decode (invalid UTF-8 in a string field, a truncated
/// message) is the caller's fault: tonic answers it `INTERNAL`, this makes it
/// `INVALID_ARGUMENT`, keeping prost's message, which names the field.
fn decode_error_is_invalid_argument<B>(mut r: axum::http::Response<B>) -> axum::http::Response<B> {
    let h = r.headers();
    let decode = h.get("grpc-status").is_some_and(|v| v == "13")
        && h.get("grpc-message").is_some_and(|m| {
            m.as_bytes()
                .starts_with(b"failed%20to%20decode%20Protobuf%20message")
        });
    if decode {
        r.headers_mut()
            .insert("grpc-status", axum::http::HeaderValue::from_static("3"));
    }
    r
}

/// A gRPC connection (plain or TLS) holding one of `server.max_connections` slots until it
/// closes.
struct Held<IO = tokio::net::TcpStream> {
    io: IO,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// Reported as not vectored on purpose: h2 then copies DATA frames up to 1 KB into its
    /// write buffer instead of chaining each one over 256 bytes, and a chained frame makes it
    /// flush before it buffers the next. A `Route` answer (~390 bytes) therefore cost a
    /// `writev` (or TLS record) of its own; copied, the answers of many streams go out in one.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Held<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(&self.io)
    }
}

/// The next connection once a slot is free, or `None` once `stop` fires.
async fn accept_held(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Held> {
    let slot = tokio::select! {
        s = slots.clone().acquire_owned() => s.ok()?,
        () = stopped(stop) => return None,
    };
    let io = accept(listener, stop).await?;
    Some(Held { io, _slot: slot })
}

/// Plain gRPC connections, each holding a slot.
fn plain_incoming(
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Held, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(held) = accept_held(&listener, &slots, &mut stop).await {
            if tx.send(Ok(held)).await.is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// gRPC connections over TLS: accepted here, each holding a slot, each handshake in its own
/// task (bounded by `server.header_timeout_ms`) with the certificate current at that moment,
/// so a SIGHUP reload applies to every new connection.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<crate::tls::Tls>,
    handshake: std::time::Duration,
    slots: Arc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<Held<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(Held { io, _slot }) = accept_held(&listener, &slots, &mut stop).await {
            let (acceptor, tx) = (tls.grpc_acceptor(), tx.clone());
            tokio::spawn(async move {
                // The slot is held through the handshake too.
                if let Some(io) = handshake_within(handshake, &acceptor, io).await {
                    let _ = tx.send(Ok(Held { io, _slot })).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The next connection (TCP_NODELAY set), or `None` once `stop` fires. Accept errors (out of
/// file descriptors and the like) wait a little and keep serving.
async fn accept(
    listener: &TcpListener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    // Without TCP_NODELAY, small replies wait on delayed ACKs (~40 ms each).
                    let _ = s.set_nodelay(true);
                    return Some(s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = stopped(stop) => return None,
        }
    }
}

/// A TLS handshake bounded like a request head, so a client that never finishes it holds its
/// own task for a while and nothing else.
async fn handshake_within<IO>(
    limit: std::time::Duration,
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: IO,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The HTTP accept loop: at most `server.max_connections` open, request heads within
/// `server.header_timeout_ms` (a slowloris connection is closed), and on shutdown a drain of
/// at most `server.drain_timeout_ms`.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: crate::config::ServerConfig,
    tls: Option<Arc<crate::tls::Tls>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
            () = stopped(&mut stop) => break,
        };
        let Some(stream) = accept(&listener, &mut stop).await else {
            break;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let tls = tls.as_ref().map(|t| t.http_acceptor());
        let handshake = limits.header_timeout;
        // Each connection (and its TLS handshake) runs in its own task, holding one slot.
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    if let Some(s) = handshake_within(handshake, &acceptor, stream).await {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(s), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => tracing::warn!(
            "HTTP calls still running at the drain deadline (server.drain_timeout_ms) were cut"
        ),
    }
}

/// SIGHUP reloads the configured model and, with TLS, re-reads the certificate files; either
/// keeps what it has on a bad file. Both read files, so both run on the blocking pool.
#[cfg(unix)]
fn spawn_hangup(
    engine: Arc<Engine>,
    tls: Option<Arc<crate::tls::Tls>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (e, tls) = (engine.clone(), tls.clone());
            let _ = tokio::task::spawn_blocking(move || {
                reload_configured(&e, "SIGHUP");
                match tls.map(|t| t.reload()) {
                    Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
                    Some(Err(e)) => tracing::error!(error = %e, "TLS certificate not reloaded; the current one keeps serving"),
                    None => {}
                }
            })
            .await;
        }
    }))
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
