//! A task's live stream over WebSocket (seed 000 §9.2's `logs/stream`) and Server-Sent
//! Events: the log history from a given line, live lines, step states and progress, then a
//! final message with the task's end state. Both carry [`StreamMessage`]s from
//! [`crate::follow`], which bounds what a follower may hold; a WebSocket client that does not
//! take a message within [`SEND_TIMEOUT`] is dropped.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_proto::v1::{self, workflow_service_server::WorkflowService};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::extract::{ApiError, ApiResult, Caller, P, Q, bounded};
use super::state::AppState;
use super::views::{ErrorBody, LogView, StreamEvent, StreamMessage, StreamQuery};
use crate::api::WorkflowApi;
use crate::error::{EngineError, ErrorCode};
use crate::follow::{FollowEvent, FollowOptions, follow};

/// How long a WebSocket client may take to accept one message before it is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

fn message(e: Result<FollowEvent, EngineError>) -> StreamMessage {
    let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.into()));
    match e {
        Ok(FollowEvent::Log(l)) => StreamMessage::Log(LogView::from(crate::api::log_to_wire(&l))),
        Ok(FollowEvent::Step {
            step,
            status,
            progress_json,
        }) => StreamMessage::Step {
            step,
            status,
            progress: progress_json.as_deref().filter(|p| !p.is_empty()).map(json),
        },
        Ok(FollowEvent::Progress {
            step,
            progress_json,
        }) => StreamMessage::Progress {
            step,
            progress: json(&progress_json),
        },
        Ok(FollowEvent::End { status, reason }) => StreamMessage::End { status, reason },
        Err(e) => StreamMessage::Error {
            message: e.to_string(),
        },
    }
}

/// Checks the caller may read the task, then starts following it.
async fn start(
    st: &AppState,
    caller: &Caller,
    id: i64,
    q: &StreamQuery,
) -> ApiResult<mpsc::Receiver<Result<FollowEvent, EngineError>>> {
    let after_id = bounded("after_id", q.after_id, 0, None)?.unwrap_or(0);
    <WorkflowApi as WorkflowService>::get_task_status(
        &st.api,
        caller.request(v1::TaskRef { task_id: id }),
    )
    .await?;
    Ok(follow(
        st.api.store.clone(),
        &st.api.engine,
        id,
        after_id,
        FollowOptions { states: true },
    ))
}

/// Follows a task over a WebSocket: text frames, one JSON message each (`type`: `log`,
/// `step`, `progress`, then `end` with the task's final state).
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/logs/stream", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), StreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; every text frame is a StreamMessage", body = StreamMessage),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
pub async fn log_stream(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
    Q(q): Q<StreamQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let Ok(ws) = ws else {
        // RFC 9110 §15.5.22: the client must switch protocols to use this path.
        let mut res = ApiError::new(
            ErrorCode::InvalidArgument,
            "this path is a WebSocket: connect with ws:// or wss:// (or read the same messages as Server-Sent Events from /api/workflow/tasks/{id}/events)",
        )
        .into_response();
        *res.status_mut() = StatusCode::UPGRADE_REQUIRED;
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(res);
    };
    let rx = start(&st, &caller, id, &q).await?;
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| pump(socket, rx))
        .into_response())
}

/// Messages written to a WebSocket before one flush: what waits is sent in one write.
const WS_BATCH: usize = 64;

async fn pump(socket: WebSocket, mut rx: mpsc::Receiver<Result<FollowEvent, EngineError>>) {
    let (mut sink, mut incoming) = socket.split();
    let mut batch = Vec::with_capacity(WS_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, WS_BATCH) => {
                if n == 0 {
                    let _ = sink.close().await;
                    return;
                }
                match tokio::time::timeout(SEND_TIMEOUT, send_batch(&mut sink, &mut batch)).await {
                    Ok(Ok(false)) => {}
                    Ok(Ok(true)) => {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
                        return;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::info!("a WebSocket follower took more than {SEND_TIMEOUT:?} for {n} messages; dropped");
                        return;
                    }
                }
            }
            // Reading keeps pings answered and notices the client leaving.
            frame = incoming.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Writes `batch` (emptied) and flushes once; true when it held the last message.
async fn send_batch(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    batch: &mut Vec<Result<FollowEvent, EngineError>>,
) -> Result<bool, axum::Error> {
    let mut last = false;
    for event in batch.drain(..) {
        if last {
            continue;
        }
        let msg = message(event);
        last = matches!(msg, StreamMessage::End { .. } | StreamMessage::Error { .. });
        let text = serde_json::to_string(&msg).map_err(axum::Error::new)?;
        sink.feed(Message::Text(text.into())).await?;
    }
    sink.flush().await?;
    Ok(last)
}

/// Follows a task as Server-Sent Events (for clients that cannot open a WebSocket): the same
/// messages, each as an event named by its `type`.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/events", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), StreamQuery),
    responses(
        (status = 200, description = "An event stream; every event's data is a StreamMessage", content_type = "text/event-stream", body = StreamEvent),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
pub async fn event_stream(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
    Q(q): Q<StreamQuery>,
) -> ApiResult<Response> {
    let rx = start(&st, &caller, id, &q).await?;
    let events = ReceiverStream::new(rx).map(|e| {
        let msg = message(e);
        let name = match &msg {
            StreamMessage::Log(_) => "log",
            StreamMessage::Step { .. } => "step",
            StreamMessage::Progress { .. } => "progress",
            StreamMessage::End { .. } => "end",
            StreamMessage::Error { .. } => "error",
        };
        let event = Event::default().event(name);
        let event = match &msg {
            StreamMessage::Log(l) => event.id(l.id.to_string()),
            _ => event,
        };
        Ok::<_, Infallible>(event.json_data(&msg).unwrap_or_else(|_| Event::default()))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
