//! Coordinator errors and the one table that maps them to HTTP statuses, gRPC codes and the
//! `code` of the HTTP face's JSON error body.

use ferry_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A request field is wrong; `message` says which and why.
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// A fault of the coordinator's (a file it cannot read, a stored row it cannot decode).
    #[error("{0}")]
    Internal(String),
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

/// What kind of failure an answer reports: the one table both faces map from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

/// Every [`ErrorCode`] with its name in JSON bodies, its HTTP status and its gRPC code.
pub const ERROR_TABLE: &[(ErrorCode, &str, u16, tonic::Code)] = &[
    (
        ErrorCode::InvalidArgument,
        "invalid_argument",
        400,
        tonic::Code::InvalidArgument,
    ),
    (ErrorCode::NotFound, "not_found", 404, tonic::Code::NotFound),
    (
        ErrorCode::AlreadyExists,
        "already_exists",
        409,
        tonic::Code::AlreadyExists,
    ),
    (
        ErrorCode::FailedPrecondition,
        "failed_precondition",
        409,
        tonic::Code::FailedPrecondition,
    ),
    (
        ErrorCode::Unauthenticated,
        "unauthenticated",
        401,
        tonic::Code::Unauthenticated,
    ),
    (
        ErrorCode::PermissionDenied,
        "permission_denied",
        403,
        tonic::Code::PermissionDenied,
    ),
    (
        ErrorCode::PayloadTooLarge,
        "payload_too_large",
        413,
        tonic::Code::ResourceExhausted,
    ),
    (
        ErrorCode::UnsupportedMediaType,
        "unsupported_media_type",
        415,
        tonic::Code::InvalidArgument,
    ),
    (
        ErrorCode::Unavailable,
        "unavailable",
        503,
        tonic::Code::Unavailable,
    ),
    (ErrorCode::Internal, "internal", 500, tonic::Code::Internal),
];

impl ErrorCode {
    fn row(self) -> &'static (ErrorCode, &'static str, u16, tonic::Code) {
        ERROR_TABLE
            .iter()
            .find(|r| r.0 == self)
            .unwrap_or(&ERROR_TABLE[ERROR_TABLE.len() - 1])
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    pub fn http_status(self) -> u16 {
        self.row().2
    }

    pub fn grpc(self) -> tonic::Code {
        self.row().3
    }

    /// The code a gRPC status carries (the HTTP face answers a service error with it).
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::Ok => ErrorCode::Internal,
            tonic::Code::ResourceExhausted => ErrorCode::PayloadTooLarge,
            tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
            tonic::Code::Aborted => ErrorCode::FailedPrecondition,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorCode::Unavailable,
            c => ERROR_TABLE
                .iter()
                .find(|r| r.3 == c)
                .map_or(ErrorCode::Internal, |r| r.0),
        }
    }
}

/// The metadata key a gRPC error names the wrong request field under.
pub const FIELD_METADATA: &str = "ferry-error-field";

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::InvalidRequest(_) | EngineError::InvalidField { .. } => {
                ErrorCode::InvalidArgument
            }
            EngineError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            EngineError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            EngineError::Store(StoreError::Refused { .. }) => ErrorCode::InvalidArgument,
            EngineError::Store(_) | EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::ShuttingDown => ErrorCode::Unavailable,
            EngineError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            EngineError::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    /// The request field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            EngineError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<EngineError> for tonic::Status {
    fn from(e: EngineError) -> Self {
        let mut status = tonic::Status::new(e.code().grpc(), e.to_string());
        if let Some(field) = e.field()
            && let Ok(v) = field.parse()
        {
            status.metadata_mut().insert(FIELD_METADATA, v);
        }
        status
    }
}

impl From<ferry_core::pipeline::RequestError> for EngineError {
    fn from(e: ferry_core::pipeline::RequestError) -> Self {
        EngineError::InvalidField {
            field: e.field.to_owned(),
            message: e.to_string(),
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
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpListen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] ferry_proto::tls::TlsError),
    #[error("HTTP TLS: {0}")]
    HttpTls(String),
    /// The configuration would expose the coordinator without TLS or tokens.
    #[error("{0}")]
    Insecure(String),
    #[error("bootstrap token: {0}")]
    Bootstrap(String),
}
