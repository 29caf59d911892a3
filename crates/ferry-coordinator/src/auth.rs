//! Authentication of client calls: bearer tokens, known by their SHA-256 (the database keeps
//! only hashes), looked up in memory on every call. The interceptor puts the caller's
//! [`Principal`] into the request; each handler then asks for the one role it needs with
//! [`allow`]. The HTTP face authenticates through the same [`Auth::authenticate`] (bearer
//! tokens) and [`Auth::by_hash`] (its sessions).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ferry_core::access::{ApiRole, Principal, parse_roles};
use ferry_proto::identity::{PeerIdentity, PeerKind};
use ferry_store::{Store, api_token};
use tonic::{Request, Status};

use crate::error::EngineError;

/// Hex SHA-256 of a token: the only form the database keeps.
pub fn hash_token(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (see [`ferry_proto::bearer::new_token`]).
pub fn new_token() -> Result<String, EngineError> {
    ferry_proto::bearer::new_token()
        .ok_or_else(|| EngineError::InvalidRequest("the system has no randomness to offer".into()))
}

/// The coordinator's view of who may call it.
pub struct Auth {
    enabled: bool,
    /// Token hash → caller, for every valid token (plus the bootstrap token).
    tokens: RwLock<HashMap<String, Principal>>,
}

impl Auth {
    /// Tokens off: every call is made as [`Principal::local`] (a loopback-only coordinator).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Auth {
            enabled: false,
            tokens: RwLock::new(HashMap::new()),
        })
    }

    /// Tokens on: the valid tokens in the store, and the bootstrap token from `bootstrap`
    /// (a file only its owner can read) when given.
    pub async fn load(store: &Store, bootstrap: Option<&Path>) -> Result<Arc<Self>, String> {
        let mut tokens = HashMap::new();
        if let Some(path) = bootstrap {
            let token = read_secret_file(path)?;
            tokens.insert(
                hash_token(&token),
                Principal {
                    name: "bootstrap".into(),
                    roles: vec![ApiRole::Admin],
                },
            );
        }
        let auth = Arc::new(Auth {
            enabled: true,
            tokens: RwLock::new(tokens),
        });
        let rows = store.tokens().await.map_err(|e| e.to_string())?;
        for row in rows {
            auth.insert(&row);
        }
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Makes a stored token valid (or forgets it when revoked).
    pub fn insert(&self, row: &api_token::Model) {
        let Ok(mut map) = self.tokens.write() else {
            return;
        };
        if row.revoked_at.is_some() {
            map.remove(&row.token_hash);
            return;
        }
        match parse_roles(&row.roles) {
            Ok(roles) => {
                map.insert(
                    row.token_hash.clone(),
                    Principal {
                        name: row.name.clone(),
                        roles,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(token = row.id, error = %e, "token with unreadable roles ignored")
            }
        }
    }

    /// The caller an `authorization` header value (`Bearer TOKEN`) speaks for.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, EngineError> {
        if !self.enabled {
            return Ok(Principal::local());
        }
        let Some(header) = header else {
            return Err(EngineError::Unauthenticated(
                "this coordinator needs a token: set FERRY_TOKEN or `auth.token_file`".into(),
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                EngineError::Unauthenticated(
                    "the authorization header is not `Bearer TOKEN`".into(),
                )
            })?;
        let map = self
            .tokens
            .read()
            .map_err(|_| EngineError::Unauthenticated("token table unavailable".into()))?;
        map.get(&hash_token(token)).cloned().ok_or_else(|| {
            security_event("unknown or revoked token presented", "");
            EngineError::Unauthenticated("the token is unknown or revoked".into())
        })
    }

    /// The caller a still-valid token speaks for, by the token's hash (an HTTP session keeps
    /// only the hash, so revoking the token ends its sessions too).
    pub fn by_hash(&self, hash: &str) -> Option<Principal> {
        if !self.enabled {
            return Some(Principal::local());
        }
        self.tokens.read().ok()?.get(hash).cloned()
    }

    /// The gRPC interceptor: authenticates and puts the [`Principal`] into the request.
    pub fn interceptor(
        self: &Arc<Self>,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let auth = self.clone();
        move |mut req: Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            // An agent's certificate (checked by TLS against the CA) lets it read: the
            // monitor stage reports on its task. It never grants more than `viewer`.
            let agent = match ferry_proto::identity::peer_identity(&req) {
                Some(PeerIdentity {
                    kind: PeerKind::Agent,
                    name,
                }) if header.is_none() => Some(name),
                _ => None,
            };
            let principal = match agent {
                Some(name) => Principal {
                    name: format!("agent:{name}"),
                    roles: vec![ApiRole::Viewer],
                },
                None => auth.authenticate(header).map_err(Status::from)?,
            };
            req.extensions_mut().insert(principal);
            Ok(req)
        }
    }
}

/// The caller of `req` if they hold `role`; the refusal names what is missing.
pub fn allow<T>(req: &Request<T>, role: ApiRole) -> Result<Principal, Status> {
    let who = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
    if who.may(role) {
        Ok(who)
    } else {
        security_event("call refused for lack of a role", &who.name);
        Err(Status::from(EngineError::PermissionDenied(format!(
            "`{}` lacks the `{role}` role this call needs",
            who.name
        ))))
    }
}

/// A security-relevant refusal, logged under its own target so operators can alert on it.
pub fn security_event(what: &str, who: &str) {
    tracing::warn!(target: "ferry::security", who, "security: {what}");
}

/// Reads a token from a file that only its owner may read.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    ferry_fs::check_private(path).map_err(|e| format!("{} {e}", path.display()))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim().to_owned();
    if token.len() < 32 {
        return Err(format!(
            "{} holds {} characters; a token needs at least 32 (make one with `ferry token generate`)",
            path.display(),
            token.len()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() -> Result<(), EngineError> {
        let a = new_token()?;
        let b = new_token()?;
        assert_ne!(a, b);
        let prefix = ferry_proto::bearer::TOKEN_PREFIX;
        assert!(a.starts_with(prefix) && a.len() == prefix.len() + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
        Ok(())
    }

    #[test]
    fn unknown_tokens_and_missing_headers_are_refused() {
        let auth = Auth {
            enabled: true,
            tokens: RwLock::new(HashMap::new()),
        };
        assert!(matches!(
            auth.authenticate(None),
            Err(EngineError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer nope")),
            Err(EngineError::Unauthenticated(_))
        ));
        let row = api_token::Model {
            id: 1,
            name: "alice".into(),
            roles: "viewer".into(),
            token_hash: hash_token("secret-token"),
            created_by: "bootstrap".into(),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        };
        auth.insert(&row);
        assert_eq!(
            auth.authenticate(Some("Bearer secret-token"))
                .ok()
                .map(|p| p.name),
            Some("alice".into())
        );
        auth.insert(&api_token::Model {
            revoked_at: Some(chrono::Utc::now()),
            ..row
        });
        assert!(auth.authenticate(Some("Bearer secret-token")).is_err());
        assert_eq!(
            Auth::disabled().authenticate(None).ok(),
            Some(Principal::local())
        );
    }
}
