//! What every handler shares.

use std::sync::Arc;

use super::session::Sessions;
use crate::api::WorkflowApi;
use crate::auth::Auth;
use crate::observe::Observer;

pub struct HttpState {
    pub api: Arc<WorkflowApi>,
    pub auth: Arc<Auth>,
    pub sessions: Sessions,
    pub observer: Arc<Observer>,
    /// Whether the listener speaks TLS (session cookies are then `Secure`).
    pub tls: bool,
}

pub type AppState = Arc<HttpState>;
