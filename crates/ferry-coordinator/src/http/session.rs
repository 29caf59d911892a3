//! Browser sessions: `POST /api/login` turns a bearer token into an HttpOnly, SameSite=Strict
//! cookie; requests that change state with that cookie must carry the session's CSRF token
//! in `X-CSRF-Token`. A session keeps only the token's hash, so revoking the token ends the
//! session at once. Sessions live in memory (a restarted coordinator asks browsers to log in
//! again), at most [`MAX_SESSIONS`], each for [`SESSION_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ferry_core::access::Principal;

use super::extract::{ApiError, ApiResult, changes_state};
use crate::auth::{Auth, hash_token, new_token, security_event};
use crate::error::ErrorCode;

pub const COOKIE: &str = "ferry_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    token_hash: String,
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// Session id's hash → session (the id itself is only in the browser's cookie).
    map: Mutex<HashMap<String, Session>>,
}

/// A new session: the cookie's value and the CSRF token.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

impl Sessions {
    /// Opens a session for a caller who presented `token`.
    pub fn open(&self, token: &str) -> ApiResult<NewSession> {
        let id = new_token()?;
        let csrf = new_token()?;
        let mut map = self
            .map
            .lock()
            .map_err(|_| ApiError::new(ErrorCode::Internal, "session table unavailable"))?;
        let now = Instant::now();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many open sessions; use a bearer token, or try again later",
            ));
        }
        map.insert(
            hash_token(&id),
            Session {
                token_hash: hash_token(token),
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok(NewSession { id, csrf })
    }

    /// Ends the session the request's cookie names, if any.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers)
            && let Ok(mut map) = self.map.lock()
        {
            map.remove(&hash_token(&id));
        }
    }

    /// The CSRF token of the request's session.
    pub fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        let map = self.map.lock().ok()?;
        map.get(&hash_token(&id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf.clone())
    }

    /// The caller of a request that carries the session cookie (`None` without one).
    pub fn caller(&self, parts: &Parts, auth: &Auth) -> ApiResult<Option<Principal>> {
        let Some(id) = cookie(&parts.headers) else {
            return Ok(None);
        };
        let (token_hash, csrf) = {
            let map = self
                .map
                .lock()
                .map_err(|_| ApiError::new(ErrorCode::Internal, "session table unavailable"))?;
            match map.get(&hash_token(&id)) {
                Some(s) if s.expires > Instant::now() => (s.token_hash.clone(), s.csrf.clone()),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Unauthenticated,
                        "the session has ended; log in again",
                    ));
                }
            }
        };
        if changes_state(&parts.method) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(sent.as_bytes(), csrf.as_bytes()) {
                security_event("state-changing request without its CSRF token", "");
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    "a request that changes state with the session cookie needs the session's `X-CSRF-Token` header",
                ));
            }
        }
        // A WebSocket or any other request from another site's page is refused.
        if let Some(origin) = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            && let Some(host) = parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            if !origin_host.eq_ignore_ascii_case(host) {
                security_event("cross-origin request with a session cookie", "");
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("requests from {origin} may not use this site's session"),
                ));
            }
        }
        match auth.by_hash(&token_hash) {
            Some(p) => Ok(Some(p)),
            None => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the token this session was opened with is revoked",
            )),
        }
    }
}

/// The session id in the request's cookies.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// The `Set-Cookie` value for a new session (`Secure` over TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    cookie::Cookie::build((COOKIE, id.to_owned()))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::seconds(SESSION_TTL.as_secs() as i64))
        .build()
        .to_string()
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    cookie::Cookie::build((COOKIE, ""))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
