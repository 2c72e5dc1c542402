//! The library's error enums and the single mapping from them to `tonic::Status`.

use std::path::PathBuf;

/// A request that cannot be served as sent. Each variant names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// A field was malformed or out of range; the message names the field and the limit.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the offending field, as in the proto (`messages[2].content`).
        field: String,
        /// What is wrong, including the limit where one applies.
        message: String,
    },
    /// The knobs leave no tier to choose (e.g. every allowed tier costs more than `max_cost_usd`).
    #[error("no tier satisfies the request: {0}")]
    NoEligibleTier(String),
}

impl RequestError {
    /// Shorthand for [`RequestError::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem with a file the service loads at start (config, model, tokenizer, embeddings).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but its contents are not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl LoadError {
    /// Shorthand for [`LoadError::Invalid`].
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`LoadError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Errors from fitting or evaluating a classifier.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data cannot train the requested model.
    #[error("{0}")]
    Data(String),
    /// The optimizer failed.
    #[error("fitting tier {tier}: {message}")]
    Fit {
        /// The tier whose head failed to fit.
        tier: String,
        /// The optimizer's message.
        message: String,
    },
    /// A dataset or model file could not be read or written.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Every error the application core returns, whichever door the request came through.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's fault.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The request body is beyond `server.max_request_bytes`.
    #[error("body: {0}")]
    TooLarge(String),
    /// Something the caller named does not exist here (a model, a route).
    #[error("{0}")]
    NotFound(String),
    /// Featurizing failed (tokenizer error); the server's fault, not the caller's.
    #[error("featurizer: {0}")]
    Featurize(String),
    /// A blocking task was cancelled or panicked.
    #[error("internal: {0}")]
    Internal(String),
    /// `Complete` was asked of a server with no providers configured.
    #[error("no providers are configured on this server ([providers.NAME] in the config)")]
    NoGateway,
    /// An outcome was sent to a server that does not keep them.
    #[error("feedback is disabled on this server (feedback.enabled = false)")]
    FeedbackDisabled,
    /// A model file that does not fit was refused; the old model keeps serving.
    #[error("model not reloaded, the old one keeps serving: {0}")]
    Reload(String),
    /// A transient failure: the caller should retry (e.g. an outcome that could not be made durable).
    #[error("{0}")]
    Unavailable(String),
    /// The call's deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No member of the tier's chain answered.
    #[error(transparent)]
    Chain(#[from] crate::chain::ChainError),
    /// A stream broke after content was sent.
    #[error(transparent)]
    Stream(#[from] crate::chain::StreamError),
    /// The caller's token is missing or wrong, or does not allow this call.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// More calls are in flight than the bound `key` allows; retry after the hint.
    #[error(
        "overloaded: {in_flight} calls in flight ({key}, with server.max_queued waiting); retry after {retry_after_s} s"
    )]
    Overloaded {
        /// The config key of the bound.
        key: &'static str,
        /// The bound that was reached.
        in_flight: usize,
        /// Seconds to wait, sent as `Retry-After`.
        retry_after_s: u64,
    },
}

/// How one error is answered on each transport: the one table every door reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// gRPC status code.
    pub grpc: tonic::Code,
    /// HTTP status.
    pub http: u16,
    /// OpenAI's error `type`.
    pub kind: &'static str,
}

impl Error {
    /// The transport answers for this error.
    pub fn answer(&self) -> Answer {
        use crate::chain::{ChainError, StreamError};
        use tonic::Code;
        let (grpc, http, kind) = match self {
            Self::Request(RequestError::Invalid { .. }) => {
                (Code::InvalidArgument, 400, "invalid_request_error")
            }
            Self::Request(RequestError::NoEligibleTier(_)) => {
                (Code::FailedPrecondition, 422, "invalid_request_error")
            }
            Self::TooLarge(_) => (Code::ResourceExhausted, 413, "invalid_request_error"),
            Self::NotFound(_) => (Code::NotFound, 404, "not_found_error"),
            Self::NoGateway => (Code::Unimplemented, 501, "not_implemented"),
            Self::FeedbackDisabled => (Code::FailedPrecondition, 503, "service_unavailable"),
            Self::Reload(_) => (Code::FailedPrecondition, 409, "invalid_request_error"),
            Self::Unavailable(_) => (Code::Unavailable, 503, "service_unavailable"),
            Self::DeadlineExceeded(_)
            | Self::Chain(ChainError::DeadlineExceeded(_))
            | Self::Stream(StreamError::Chain(ChainError::DeadlineExceeded(_))) => {
                (Code::DeadlineExceeded, 504, "timeout")
            }
            Self::Chain(ChainError::Invalid { .. })
            | Self::Stream(StreamError::Chain(ChainError::Invalid { .. })) => {
                (Code::InvalidArgument, 400, "invalid_request_error")
            }
            Self::Chain(ChainError::Exhausted(_))
            | Self::Stream(StreamError::Chain(ChainError::Exhausted(_)))
            | Self::Stream(StreamError::Interrupted { .. }) => {
                (Code::Unavailable, 502, "upstream_error")
            }
            Self::Chain(ChainError::Cancelled(_))
            | Self::Stream(StreamError::Chain(ChainError::Cancelled(_))) => {
                (Code::Cancelled, 499, "cancelled")
            }
            Self::Featurize(_) | Self::Internal(_) => (Code::Internal, 500, "server_error"),
            Self::Auth(crate::auth::AuthError::Unauthenticated) => {
                (Code::Unauthenticated, 401, "authentication_error")
            }
            Self::Auth(crate::auth::AuthError::Forbidden) => {
                (Code::PermissionDenied, 403, "permission_error")
            }
            Self::Overloaded { .. } => (Code::ResourceExhausted, 429, "rate_limit_error"),
        };
        Answer { grpc, http, kind }
    }

    /// The message shown to the caller: the error itself, except for the server's own
    /// faults, which are logged and answered without detail.
    pub fn public_message(&self) -> String {
        match self {
            Self::Featurize(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                "internal error; see the server log".into()
            }
            _ => self.to_string(),
        }
    }

    /// A short class for outcomes and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Chain(e) | Self::Stream(crate::chain::StreamError::Chain(e)) => e.class(),
            Self::Stream(crate::chain::StreamError::Interrupted { .. }) => "interrupted",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            _ => "error",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.answer().grpc, err.public_message())
    }
}
