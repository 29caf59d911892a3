//! Who a TLS peer is: the name in its certificate. Ferry's certificates (`ferry pki`) carry
//! it as a URI subject-alternative name, `ferry://agent/NAME` or `ferry://client/NAME`, so a
//! client certificate can never pass for an agent's and the reverse.

use tonic::Request;

const AGENT: &str = "ferry://agent/";
const CLIENT: &str = "ferry://client/";

/// What kind of peer a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Agent,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub kind: PeerKind,
    pub name: String,
}

/// The URI an agent's (or client's) certificate carries.
pub fn identity_uri(kind: PeerKind, name: &str) -> String {
    match kind {
        PeerKind::Agent => format!("{AGENT}{name}"),
        PeerKind::Client => format!("{CLIENT}{name}"),
    }
}

/// The identity in a DER certificate, if it carries one of Ferry's URIs.
pub fn identity_of_der(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(uri) => {
            if let Some(name) = uri.strip_prefix(AGENT) {
                Some(PeerIdentity {
                    kind: PeerKind::Agent,
                    name: name.to_owned(),
                })
            } else {
                uri.strip_prefix(CLIENT).map(|name| PeerIdentity {
                    kind: PeerKind::Client,
                    name: name.to_owned(),
                })
            }
        }
        _ => None,
    })
}

/// The identity of the peer of `req`: `None` without TLS or without a client certificate
/// (the TLS layer has already checked the chain against the CA).
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    identity_of_der(leaf.as_ref())
}
