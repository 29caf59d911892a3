//! Mutual TLS for Ferry's gRPC: the coordinator's server configuration and the endpoint
//! agents and the CLI connect through, from the `tls:` config keys (PEM files).

use std::path::{Path, PathBuf};

use ferry_core::config::TlsConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {} holds no PEM block (-----BEGIN ...)", .path.display())]
    NotPem { what: &'static str, path: PathBuf },
    #[error("the private key {} {detail}", .path.display())]
    Key { path: PathBuf, detail: String },
    #[error("`tls.{0}` must be set to serve TLS")]
    Missing(&'static str),
    #[error("`{url}`: {message}")]
    Url { url: String, message: String },
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Reads a private key, refusing one that group or others may read.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    ferry_fs::check_private(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    read_pem("private key", path)
}

/// A certificate chain and its private key as PEM (the key refused when group or others may
/// read it): for a listener that serves TLS outside tonic (the coordinator's HTTP face).
pub fn read_identity_pem(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((read_pem("certificate", cert)?, read_key(key)?))
}

fn identity(tls: &TlsConfig) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read_pem("certificate", &tls.cert)?,
        read_key(&tls.key)?,
    ))
}

/// The coordinator's TLS: presents `cert`, and asks every peer for a certificate chained to
/// `ca`. A client certificate stays optional at the TLS layer (the CLI authenticates with a
/// token); the agent service refuses a peer without one.
pub fn server_config(tls: &TlsConfig) -> Result<ServerTlsConfig, TlsError> {
    if tls.cert.as_os_str().is_empty() {
        return Err(TlsError::Missing("cert"));
    }
    let ca = read_pem("CA certificate", &tls.ca)?;
    Ok(ServerTlsConfig::new()
        .identity(identity(tls)?)
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(true))
}

/// The endpoint for `url`: `https://` with `tls` configured (the coordinator's certificate
/// checked against `ca`, ours presented when `cert` is set), `http://` without.
pub fn endpoint(url: &str, tls: &TlsConfig) -> Result<Endpoint, TlsError> {
    let https = url.starts_with("https://");
    if tls.enabled() != https {
        let message = if https {
            "an https:// address needs `tls.ca` (the CA that signed the coordinator's certificate)"
        } else {
            "`tls` is configured: use an https:// address"
        };
        return Err(TlsError::Url {
            url: url.to_owned(),
            message: message.into(),
        });
    }
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Url {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    if !https {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem("CA certificate", &tls.ca)?));
    if !tls.cert.as_os_str().is_empty() {
        config = config.identity(identity(tls)?);
    }
    Ok(endpoint.tls_config(config)?)
}
