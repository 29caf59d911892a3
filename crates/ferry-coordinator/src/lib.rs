//! Ferry's coordinator: the DAG workflow engine, the gRPC services in front of it, and the
//! HTTP/JSON face over the same service implementation.
//!
//! `run` is the whole coordinator; the daemon only parses arguments and calls it, and tests
//! call it with a listener on port 0.

mod agent_api;
mod api;
pub mod auth;
mod downloads;
pub mod engine;
pub mod error;
pub mod follow;
mod graph_api;
pub mod http;
pub mod observe;
mod schedule_api;
pub mod schedules;

use std::future::Future;
use std::sync::atomic::AtomicU64;

use ferry_core::config::FerryConfig;
use ferry_core::pipeline::PipelineSettings;
use ferry_proto::v1::agent_service_server::AgentServiceServer;
use ferry_proto::v1::workflow_service_server::WorkflowServiceServer;
use ferry_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::info;

pub use error::{CoordinatorError, EngineError};
pub use ferry_core::units::format_duration;

/// Runs the coordinator on `listener` (gRPC) and `http_listener` (the HTTP face, when given;
/// bind it with [`bind_http`]) until `shutdown` resolves.
///
/// On shutdown the engine commits what it decided and stops first, which closes the agents'
/// streams (they keep their jobs and re-attach to the next coordinator); then the server stops.
pub async fn run(
    config: FerryConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let addr = listener.local_addr().ok();
    check_exposure(&config, addr)?;
    let tls = if config.tls.enabled() {
        Some(ferry_proto::tls::server_config(&config.tls)?)
    } else {
        None
    };
    let http_tls = match &http_listener {
        Some(l) => {
            let tls = http_tls(&config)?;
            check_http_exposure(&config, l.local_addr().ok(), tls.is_some())?;
            tls
        }
        None => None,
    };
    // A database still starting (or failing over) is waited for, as systemd would restart
    // us until it answers; every try is logged.
    let store = Store::connect_waiting(
        &config.coordinator.database_url,
        std::time::Duration::from_secs(5),
        |e, wait| tracing::warn!(error = %e, "database unreachable; trying again in {wait:?}"),
    )
    .await?;
    let auth = if config.auth.enabled() {
        let bootstrap = &config.auth.bootstrap_token_file;
        let bootstrap = (!bootstrap.as_os_str().is_empty()).then_some(bootstrap.as_path());
        auth::Auth::load(&store, bootstrap)
            .await
            .map_err(CoordinatorError::Bootstrap)?
    } else {
        auth::Auth::disabled()
    };
    let settings = engine::EngineSettings {
        heartbeat: config.workflow.heartbeat(),
        agent_timeout: config.workflow.agent_timeout(),
        auto_resume: config.workflow.auto_resume,
        pipeline: PipelineSettings {
            confirm_transfer_above: config.transfer.confirm_above,
            cleanup_staging: config.workflow.cleanup_staging,
            keep_checkpoints: config.workflow.keep_checkpoints,
        },
        observer: observe::Observer::new(config.workflow.notification.clone()),
        coordinator_name: config.coordinator.name.clone(),
        clock: engine::Clock::System,
        pools: config.workflow.pools.clone(),
    };
    let observer = settings.observer.clone();
    let (engine, handle) = engine::Engine::start(store.clone(), settings)
        .await
        .map_err(|e| CoordinatorError::Engine(e.to_string()))?;
    let stop_engine = CancellationToken::new();
    if http_listener.is_none() {
        info!("HTTP API off (set `coordinator.http_listen` to serve it)");
    }
    tokio::spawn(rotate_logs(
        store.clone(),
        config.workflow.log_rotation_size,
        config.workflow.heartbeat(),
        stop_engine.clone(),
    ));
    let engine_task = tokio::spawn(engine.run(stop_engine.clone()));
    // Schedules and backfills: their due runs, created through the engine.
    let schedule_interval =
        std::time::Duration::from_secs(config.workflow.schedule_interval.max(1));
    let schedules = schedules::ScheduleService::new(
        store.clone(),
        handle.clone(),
        schedules::WallClock::System,
        schedule_interval,
    );
    tokio::spawn(
        schedules
            .clone()
            .run(schedule_interval, stop_engine.clone()),
    );
    let engine_done = CancellationToken::new();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkflowServiceServer<api::WorkflowApi>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<agent_api::AgentApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Clients that speak only the older protocol (Python's grpcio-reflection, some grpcurl
    // builds) are answered too.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let downloads = std::sync::Arc::new(downloads::Downloads::new(
        config.coordinator.data_dir.clone(),
        config.coordinator.name.clone(),
    ));
    let workflow_api = std::sync::Arc::new(api::WorkflowApi {
        store: store.clone(),
        engine: handle.clone(),
        downloads: downloads.clone(),
        graph_edits: tokio::sync::Mutex::new(()),
        auth: auth.clone(),
        schedules,
    });
    if let Some(listener) = http_listener {
        let state = std::sync::Arc::new(http::HttpState {
            api: workflow_api.clone(),
            auth: auth.clone(),
            sessions: http::Sessions::default(),
            observer: observer.clone(),
            tls: http_tls.is_some(),
        });
        info!(
            addr = ?listener.local_addr().ok(),
            tls = http_tls.is_some(),
            "HTTP API listening (OpenAPI at /api/openapi.json, reference at /api/docs)"
        );
        tokio::spawn(http::serve(
            listener,
            http_tls,
            http::router(state),
            stop_engine.clone(),
        ));
    }
    let agent_api = agent_api::AgentApi {
        engine: handle,
        next_conn: AtomicU64::new(1),
        store,
        downloads,
        require_certificates: tls.is_some(),
    };

    {
        let stop_engine = stop_engine.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("shutting down");
            stop_engine.cancel();
        });
    }
    let server_stop = engine_done.clone();
    info!(
        addr = ?addr,
        tls = tls.is_some(),
        tokens = auth.enabled(),
        "coordinator listening"
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            WorkflowServiceServer::from_arc(workflow_api)
                .max_decoding_message_size(ferry_core::limits::REQUEST_BYTES)
                .max_encoding_message_size(ferry_core::limits::REQUEST_BYTES),
            auth.interceptor(),
        ))
        .add_service(AgentServiceServer::new(agent_api))
        // No Nagle: agent commands are small messages that must leave at once.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                server_stop.cancelled().await;
            },
        );
    let server_task = tokio::spawn(server);
    let engine_result = engine_task.await;
    engine_done.cancel();
    let server_result = server_task
        .await
        .map_err(|e| CoordinatorError::Engine(format!("server task panicked: {e}")))?;
    engine_result.map_err(|e| CoordinatorError::Engine(format!("engine task panicked: {e}")))?;
    server_result?;
    Ok(())
}

/// Refuses to expose the coordinator beyond loopback without TLS and tokens (unless the
/// configuration says `insecure: true`, which is logged at every start).
fn check_exposure(
    config: &FerryConfig,
    addr: Option<std::net::SocketAddr>,
) -> Result<(), CoordinatorError> {
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    let protected = config.tls.enabled() && config.auth.enabled();
    if loopback || protected {
        return Ok(());
    }
    let missing = match (config.tls.enabled(), config.auth.enabled()) {
        (false, false) => {
            "TLS (`tls.ca`, `tls.cert`, `tls.key`) and tokens (`auth.bootstrap_token_file` or `auth.required`)"
        }
        (false, true) => {
            "TLS (`tls.ca`, `tls.cert`, `tls.key`): tokens would cross the network in clear"
        }
        _ => "tokens (`auth.bootstrap_token_file` or `auth.required`)",
    };
    if config.insecure {
        tracing::warn!(
            target: "ferry::security",
            addr = ?addr,
            "INSECURE: listening beyond loopback without {missing}; anyone who reaches this port may run code on every agent host"
        );
        return Ok(());
    }
    Err(CoordinatorError::Insecure(format!(
        "refusing to listen on {} without {missing}; configure them (see docs/operations.md, Security), listen on 127.0.0.1, or set `insecure: true` for a lab",
        addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
    )))
}

/// Binds `coordinator.http_listen` (port 0 picks a free port); `None` when it is empty.
pub async fn bind_http(config: &FerryConfig) -> Result<Option<TcpListener>, CoordinatorError> {
    let addr = &config.coordinator.http_listen;
    if addr.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| CoordinatorError::HttpListen {
            addr: addr.clone(),
            source,
        })
}

/// The HTTP listener's TLS: `coordinator.http_tls_cert`/`http_tls_key`, else the gRPC
/// listener's `tls.cert`/`tls.key` when TLS is configured; `None`: plain HTTP.
fn http_tls(config: &FerryConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, CoordinatorError> {
    let c = &config.coordinator;
    let (cert, key) = if !c.http_tls_cert.as_os_str().is_empty() {
        (&c.http_tls_cert, &c.http_tls_key)
    } else if config.tls.enabled() {
        (&config.tls.cert, &config.tls.key)
    } else {
        return Ok(None);
    };
    let (cert_pem, key_pem) = ferry_proto::tls::read_identity_pem(cert, key)?;
    let bad = |what: &str, e: String| {
        CoordinatorError::HttpTls(format!("{what} {}: {e}", cert.display()))
    };
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", e.to_string()))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| CoordinatorError::HttpTls(format!("private key {}: {e}", key.display())))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions for", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        server,
    ))))
}

/// Refuses to serve HTTP beyond loopback without TLS and tokens (unless `insecure: true`).
fn check_http_exposure(
    config: &FerryConfig,
    addr: Option<std::net::SocketAddr>,
    tls: bool,
) -> Result<(), CoordinatorError> {
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    if loopback || (tls && config.auth.enabled()) {
        return Ok(());
    }
    let missing = match (tls, config.auth.enabled()) {
        (false, false) => "TLS and tokens",
        (false, true) => "TLS: tokens and session cookies would cross the network in clear",
        _ => "tokens (`auth.bootstrap_token_file` or `auth.required`)",
    };
    if config.insecure {
        tracing::warn!(
            target: "ferry::security",
            addr = ?addr,
            "INSECURE: HTTP API beyond loopback without {missing}"
        );
        return Ok(());
    }
    Err(CoordinatorError::Insecure(format!(
        "refusing to serve the HTTP API on {} without {missing}; configure them (see docs/operations.md, Security), listen on 127.0.0.1, or set `insecure: true` for a lab",
        addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
    )))
}

/// Keeps every task's log lines in `task_logs` within `max_bytes` (`workflow.log_rotation_size`;
/// 0: never rotate), checking every `every`: older lines move into compressed archives that the
/// log API still serves. Runs beside the engine (which only inserts lines).
async fn rotate_logs(
    store: Store,
    max_bytes: u64,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    if max_bytes == 0 {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tasks = match store.tasks_over_log_size(max_bytes).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check log sizes");
                continue;
            }
        };
        for task_id in tasks {
            match store.rotate_logs(task_id, max_bytes).await {
                Ok(lines) if lines > 0 => {
                    info!(task_id, lines, "older log lines rotated into an archive")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(task_id, error = %e, "cannot rotate logs"),
            }
        }
    }
}
