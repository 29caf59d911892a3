//! Bearer tokens on the wire: how a token is made and how a client sends it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

/// A token's prefix, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "ferry_";

/// A new random token: `ferry_` and 64 hex digits (256 bits); `None` when the system has no
/// randomness to offer.
pub fn new_token() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(format!(
        "{TOKEN_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing without a token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Fails when the token holds characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token {
            Some(t) => format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| "the token holds characters a header cannot carry".to_owned()),
            None => Ok(Bearer(None)),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
