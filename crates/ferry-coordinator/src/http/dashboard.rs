//! The web dashboard: the single-page app built from `dashboard/` (its build output,
//! `dashboard/dist`, is committed and embedded in this binary by the crate's build script), served
//! at `/` beside the API.
//!
//! Files under `assets/` carry a content hash in their names and are cached for a year;
//! `index.html` is never cached, so a new coordinator's dashboard is picked up at the next
//! load. Any other GET path that is not a file (`/runs/42`, `/agents`) answers with
//! `index.html`, where the app's router takes over. Paths under `/api/` are never the
//! dashboard's: an unknown one answers the API's JSON 404.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::extract::ApiError;
use crate::error::ErrorCode;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_files.rs"));
}

/// What `index.html` may load: only this origin's scripts, styles and connections (the
/// graph view sets inline styles).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes: `/` and every path no other route takes.
pub fn router() -> Router {
    Router::new()
        .route("/", any(serve))
        .route("/{*path}", any(serve))
}

fn file(path: &str) -> Option<&'static [u8]> {
    embedded::FILES
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .and_then(|i| embedded::FILES.get(i))
        .map(|(_, bytes)| *bytes)
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn not_found() -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        "no such path; the API is described at /api/openapi.json",
    )
    .into_response()
}

fn respond(path: &str, bytes: &'static [u8], head: bool) -> Response {
    let cache = if path == "index.html" {
        "no-store"
    } else if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if path == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    res
}

async fn serve(req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    // The API's paths keep the API's answers, whatever the method.
    if path == "api" || path.starts_with("api/") {
        return not_found();
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return not_found();
    }
    let path = if path.is_empty() { "index.html" } else { path };
    if let Some(bytes) = file(path) {
        return respond(path, bytes, head);
    }
    // A missing hashed asset is an old page asking for files a newer build replaced: a 404,
    // never the app's HTML in their place.
    if path.starts_with("assets/") || path.contains("..") {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            "not found",
        )
            .into_response();
    }
    match file("index.html") {
        Some(bytes) => respond("index.html", bytes, head),
        None => (
            StatusCode::NOT_FOUND,
            "this coordinator was built without its dashboard (dashboard/dist was empty)",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_lookup() {
        assert!(embedded::FILES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/x.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    #[tokio::test]
    async fn spa_fallback_and_api_paths() {
        let req = |method: Method, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("a request")
        };
        let res = serve(req(Method::GET, "/runs/42")).await;
        if file("index.html").is_some() {
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers().get(header::CACHE_CONTROL),
                Some(&HeaderValue::from_static("no-store"))
            );
            assert_eq!(
                res.headers().get(header::CONTENT_TYPE),
                Some(&HeaderValue::from_static("text/html; charset=utf-8"))
            );
        }
        for (method, uri) in [
            (Method::GET, "/api/no-such-thing"),
            (Method::POST, "/api/workflow/tasks/1/nothing"),
            (Method::POST, "/runs"),
        ] {
            let res = serve(req(method, uri)).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(
                res.headers().get(header::CONTENT_TYPE),
                Some(&HeaderValue::from_static("application/json")),
                "{uri}"
            );
        }
        let res = serve(req(Method::GET, "/assets/gone-123.js")).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        if let Some((path, _)) = embedded::FILES
            .iter()
            .find(|(p, _)| p.starts_with("assets/"))
        {
            let res = serve(req(Method::GET, &format!("/{path}"))).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers().get(header::CACHE_CONTROL),
                Some(&HeaderValue::from_static(
                    "public, max-age=31536000, immutable"
                ))
            );
        }
    }
}
