//! Building the gRPC server: limits, timeouts, health, reflection and graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

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
    listener: TcpListener,
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
    let router = RouterServer::new(RouterService::new(engine))
        .max_decoding_message_size(limits.max_request_bytes);
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .add_service(health)
        .add_service(reflection)
        .add_service(router)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
