//! Coordinator errors and the one table that maps them to gRPC status codes.

use ferry_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// The request is valid but the task's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// No credentials, or credentials the coordinator does not know (or revoked).
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, without the role (or identity) the call needs.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<EngineError> for tonic::Status {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::NotFound(_) => tonic::Status::not_found(msg),
            EngineError::InvalidRequest(_) => tonic::Status::invalid_argument(msg),
            EngineError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            EngineError::Store(StoreError::Refused { .. }) => tonic::Status::invalid_argument(msg),
            EngineError::Store(_) => tonic::Status::internal(msg),
            EngineError::ShuttingDown => tonic::Status::unavailable(msg),
            EngineError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            EngineError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the engine stopped unexpectedly: {0}")]
    Engine(String),
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] ferry_proto::tls::TlsError),
    /// The configuration would expose the coordinator without TLS or tokens.
    #[error("{0}")]
    Insecure(String),
    #[error("bootstrap token: {0}")]
    Bootstrap(String),
}
