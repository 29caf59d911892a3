//! The coordinator's HTTP/JSON face (seed 000 §9): axum on its own listener
//! (`coordinator.http_listen`), TLS from config, the same tokens and roles as gRPC.
//!
//! Handlers translate JSON to the service's messages and call the gRPC service
//! implementation in process (as an HTTP/JSON transcoding gateway would, without the second
//! hop), so validation, roles, audit and engine ordering live once. Errors map through the
//! one table in [`crate::error`]. The OpenAPI document is generated from the handlers'
//! annotations and the view types.

mod dashboard;
mod extract;
mod routes;
mod session;
mod state;
mod stream;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use extract::ApiError;
pub use session::Sessions;
pub use state::{AppState, HttpState};

/// The routes and the OpenAPI document they were annotated with.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = routes::api_router().split_for_parts();
    let openapi_json = match openapi.to_pretty_json() {
        Ok(json) => Arc::new(json),
        Err(e) => {
            warn!(error = %e, "cannot render the OpenAPI document");
            Arc::new("{}".to_owned())
        }
    };
    let docs = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/api/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/api/openapi.json"),
        title: Some("Ferry API"),
    });
    api.route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let json = openapi_json.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    json.as_str().to_owned(),
                )
                    .into_response()
            }
        }),
    )
    .fallback(|| async {
        ApiError::new(
            crate::error::ErrorCode::NotFound,
            "no such path; the API is described at /api/openapi.json",
        )
        .into_response()
    })
    .with_state(state)
    .merge(docs)
    .merge(dashboard::router())
    .layer(axum::middleware::map_response(security_headers))
}

/// Headers every answer carries: no sniffing, no framing by other sites, no caching of API
/// answers (they may hold what only this caller may see).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Serves `router` on `listener` (TLS through `tls` when given) until `stop` fires; then
/// lets open requests finish for a moment. WebSocket upgrades are carried.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    stop: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("HTTP: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => {
                    // A handshake that does not finish in time is dropped.
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(socket),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, "HTTP: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(socket), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            info!("HTTP: connections still open at shutdown were dropped");
        }
    }
}
