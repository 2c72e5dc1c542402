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

/// Every error a gRPC handler can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's fault.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Featurizing failed (tokenizer error); the server's fault, not the caller's.
    #[error("featurizer: {0}")]
    Featurize(String),
    /// A blocking task was cancelled or panicked.
    #[error("internal: {0}")]
    Internal(String),
    /// The operation needs something the server is not set up for, or was refused as a whole
    /// (feedback disabled, a model file that does not fit).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A transient failure: the caller should retry (e.g. an outcome that could not be made durable).
    #[error("{0}")]
    Unavailable(String),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match &err {
            Error::Request(RequestError::Invalid { .. }) => {
                tonic::Status::invalid_argument(err.to_string())
            }
            Error::Request(RequestError::NoEligibleTier(_)) => {
                tonic::Status::failed_precondition(err.to_string())
            }
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m.clone()),
            Error::Unavailable(m) => tonic::Status::unavailable(m.clone()),
            Error::Featurize(_) | Error::Internal(_) => {
                tracing::error!(error = %err, "internal error while routing");
                tonic::Status::internal("internal error while routing; see server log")
            }
        }
    }
}
