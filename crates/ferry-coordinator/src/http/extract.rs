//! What every handler takes from a request (the caller, a JSON body, query and path values),
//! each checked with a refusal that names what is wrong, and the error answer.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::access::{ApiRole, Principal};
use serde::de::DeserializeOwned;

use super::state::AppState;
use super::views::{ErrorBody, ErrorDetail};
use crate::error::{ErrorCode, FIELD_METADATA};

/// An error answer: `{"error": {"code", "message", "field"}}` with the table's HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError {
            code: ErrorCode::from_grpc(s.code()),
            message: s.message().to_owned(),
            field: s
                .metadata()
                .get(FIELD_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

impl From<crate::error::EngineError> for ApiError {
    fn from(e: crate::error::EngineError) -> Self {
        ApiError {
            code: e.code(),
            field: e.field().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        if status.is_server_error() {
            tracing::warn!(code = self.code.name(), "HTTP answer: {}", self.message);
        }
        let mut res = (
            status,
            axum::Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.name().to_owned(),
                    message: self.message,
                    field: self.field,
                },
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The authenticated caller: from `Authorization: Bearer TOKEN`, or from the session cookie
/// (then a state-changing request must carry the session's `X-CSRF-Token`).
pub struct Caller(pub Principal);

impl Caller {
    /// A gRPC request carrying this caller, for the service implementation.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.extensions_mut().insert(self.0.clone());
        req
    }

    /// Refuses a caller without `role` (the service checks again; this is for what the
    /// HTTP face serves itself: outputs, metrics, the stream).
    pub fn require(&self, role: ApiRole) -> ApiResult<()> {
        if self.0.may(role) {
            return Ok(());
        }
        crate::auth::security_event("call refused for lack of a role", &self.0.name);
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("`{}` lacks the `{role}` role this call needs", self.0.name),
        ))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let value = auth.to_str().map_err(|_| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "the authorization header is not text",
                )
            })?;
            return Ok(Caller(state.auth.authenticate(Some(value))?));
        }
        if let Some(principal) = state.sessions.caller(parts, &state.auth)? {
            return Ok(Caller(principal));
        }
        // Tokens off (a loopback coordinator): every caller is `local`.
        Ok(Caller(state.auth.authenticate(None)?))
    }
}

/// Whether a request may change state (and so needs the CSRF token with a cookie).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A JSON body of at most [`ferry_core::limits::REQUEST_BYTES`], decoded into `T`; a
/// refusal names the field at fault.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &AppState) -> ApiResult<Self> {
        let bytes = json_bytes(req).await?;
        decode(&bytes).map(JsonBody)
    }
}

/// The body's bytes, after checking it says it is JSON and fits.
pub async fn json_bytes(req: Request) -> ApiResult<axum::body::Bytes> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    let limit = ferry_core::limits::REQUEST_BYTES;
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is larger than {limit} bytes"),
                )
            } else {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("cannot read the body: {e}"),
                )
            }
        })
}

/// Decodes JSON into `T`; the error names the path of the field at fault.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let field = if path.is_empty() || path == "." {
            backticked(&inner)
        } else {
            Some(path.clone())
        };
        let message = if path.is_empty() || path == "." {
            format!("the body is not what this call takes: {inner}")
        } else {
            format!("`{path}`: {inner}")
        };
        ApiError {
            code: ErrorCode::InvalidArgument,
            message,
            field,
        }
    })
}

/// The first `name` in an error message (serde's "missing field `x`", "unknown field `x`").
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Query parameters decoded into `T`; a refusal names the parameter.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> ApiResult<Self> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Q).map_err(|e| {
            let inner = e.inner().to_string();
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." {
                backticked(&inner)
            } else {
                Some(path)
            };
            ApiError {
                code: ErrorCode::InvalidArgument,
                message: match &field {
                    Some(f) => format!("query parameter `{f}`: {inner}"),
                    None => format!("query: {inner}"),
                },
                field,
            }
        })
    }
}

/// A query number that, when given, must lie within `min..=max`; the refusal names it.
pub fn bounded<T>(field: &str, value: Option<T>, min: T, max: Option<T>) -> ApiResult<Option<T>>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    match value {
        Some(v) if v < min || max.is_some_and(|m| v > m) => {
            let allowed = match max {
                Some(m) => format!("{min}-{m}"),
                None => format!("at least {min}"),
            };
            Err(ApiError::field(
                ErrorCode::InvalidArgument,
                field,
                format!("`{field}` must be {allowed}"),
            ))
        }
        v => Ok(v),
    }
}

/// Path segments decoded into `T` (ids must be numbers).
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        nested: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn decode_errors_name_the_field() {
        let e = decode::<Body>(b"{}").err().map(|e| e.field);
        assert_eq!(e, Some(Some("name".to_owned())));
        let e = decode::<Body>(br#"{"name": 3}"#).err().map(|e| e.field);
        assert_eq!(e, Some(Some("name".to_owned())));
        let e = decode::<Body>(br#"{"name": "a", "nested": {"n": "x"}}"#)
            .err()
            .map(|e| e.field);
        assert_eq!(e, Some(Some("nested.n".to_owned())));
        let e = decode::<Body>(br#"{"name": "a", "extra": 1}"#)
            .err()
            .map(|e| e.field);
        assert_eq!(e, Some(Some("extra".to_owned())));
        let e = decode::<Body>(b"{not json").err().map(|e| e.code);
        assert_eq!(e, Some(ErrorCode::InvalidArgument));
    }
}
