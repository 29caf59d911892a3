//! The agent gRPC service: one long-lived bidirectional stream per agent.

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::v1::{self, agent_message, agent_service_server::AgentService};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::auth::security_event;
use crate::engine::{EngineHandle, EngineMsg};
use ferry_proto::identity::{PeerIdentity, PeerKind};

pub struct AgentApi {
    pub engine: EngineHandle,
    pub next_conn: AtomicU64,
    pub store: ferry_store::Store,
    pub downloads: std::sync::Arc<crate::downloads::Downloads>,
    /// TLS is on: every agent must present a certificate, and its name is the agent's.
    pub require_certificates: bool,
}

impl AgentApi {
    /// The agent name the peer's certificate carries; `None` without TLS (loopback only).
    fn certified_name<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if !self.require_certificates {
            return Ok(None);
        }
        match ferry_proto::identity::peer_identity(req) {
            Some(PeerIdentity {
                kind: PeerKind::Agent,
                name,
            }) => Ok(Some(name)),
            Some(other) => {
                security_event(
                    "agent call with a non-agent certificate refused",
                    &other.name,
                );
                Err(Status::permission_denied(format!(
                    "the certificate names client `{}`, not an agent",
                    other.name
                )))
            }
            None => {
                security_event("agent call without a certificate refused", "");
                Err(Status::unauthenticated(
                    "agents must present a certificate issued by this deployment's CA (`ferry pki issue --agent NAME`)",
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type AttachStream = UnboundedReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let certified = self.certified_name(&req)?;
        let mut inbound = req.into_inner();
        let register = match inbound.message().await? {
            Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Register(r)),
                ..
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the stream must be Register",
                ));
            }
        };
        if let Some(certified) = &certified
            && register.agent_name.trim() != certified
        {
            security_event(
                &format!(
                    "registration as `{}` refused: the certificate names `{certified}`",
                    register.agent_name
                ),
                certified,
            );
            return Err(Status::permission_denied(format!(
                "the certificate names agent `{certified}`, not `{}`",
                register.agent_name
            )));
        }
        let name = register.agent_name.clone();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.engine
            .send(EngineMsg::AgentAttached {
                conn_id,
                register,
                tx,
                reply,
            })
            .await?;
        answer
            .await
            .map_err(|_| Status::unavailable("the engine is shutting down"))??;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(v1::AgentMessage {
                        msg: Some(msg),
                        seq,
                    })) => {
                        let m = EngineMsg::FromAgent {
                            name: name.clone(),
                            conn_id,
                            seq,
                            msg,
                        };
                        if engine.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        debug!(agent = %name, "agent closed its stream");
                        break;
                    }
                    Err(e) => {
                        warn!(agent = %name, error = %e, "agent stream broke");
                        break;
                    }
                }
            }
            let _ = engine
                .send(EngineMsg::AgentDetached { name, conn_id })
                .await;
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn upload_output(
        &self,
        req: Request<Streaming<v1::OutputChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
        let certified = self.certified_name(&req)?;
        let receipt = self
            .downloads
            .receive(&self.store, certified.as_deref(), req.into_inner())
            .await?;
        Ok(Response::new(receipt))
    }
}
