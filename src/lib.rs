//! triage: an adaptive LLM request router. Featurize a prompt, estimate which cost tier is good
//! enough, and answer over gRPC with the tier, its model chain and the reasons.
//!
//! The data flow is the module map: the doors ([`service`] for gRPC, [`http`]) parse and
//! convert, [`app`] owns every step, [`engine`] runs
//! [`features`] → [`classifier`] → [`policy`] on the [`model_store`]'s current snapshot;
//! [`train`] fits and evaluates classifiers offline with the same featurizer.

pub mod admission;
pub mod anthropic_door;
pub mod app;
pub mod auth;
pub mod chain;
pub mod classifier;
pub mod collect;
pub mod config;
pub mod engine;
pub mod error;
pub mod features;
pub mod feedback;
pub mod files;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model_store;
pub mod policy;
pub mod prototypes;
pub mod providers;
pub mod server;
pub mod service;
pub mod tls;
pub mod train;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `triage.v1`.
    #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
    pub mod v1 {
        tonic::include_proto!("triage.v1");
    }
    /// Encoded descriptors of `triage.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("triage_descriptor");
}
