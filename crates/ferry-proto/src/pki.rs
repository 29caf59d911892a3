//! `ferry pki`: a small certificate authority for one Ferry deployment. `init` creates the
//! CA (`ca.pem`, `ca-key.pem`); `issue` signs a coordinator's (server), an agent's or a
//! client's certificate with it. Agents and clients carry their name as a `ferry://` URI
//! (see [`crate::identity`]); the coordinator's certificate names its hosts.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{PeerKind, identity_uri};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists already; remove it first to replace it", .0.display())]
    Exists(PathBuf),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The coordinator, reachable under these host names or addresses.
    Coordinator(Vec<String>),
    Agent(String),
    Client(String),
}

impl Subject {
    /// The file stem its certificate is written under: `coordinator`, `agent-NAME`,
    /// `client-NAME`.
    pub fn stem(&self) -> String {
        match self {
            Subject::Coordinator(_) => "coordinator".into(),
            Subject::Agent(n) => format!("agent-{n}"),
            Subject::Client(n) => format!("client-{n}"),
        }
    }
}

/// Paths of a written certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a new file (never over an existing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists(path.to_owned())
            } else {
                PkiError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(1);
    let end = now + chrono::Duration::days(i64::from(days.max(1)));
    params.not_before = rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "`{name}` must be 1-100 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

/// Creates a CA in `dir` (`ca.pem`, and `ca-key.pem` readable by its owner only).
pub fn init(dir: &Path, days: u32) -> Result<Issued, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Ferry CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

/// Signs a certificate for `subject` with the CA in `ca_dir`, written to `out_dir` as
/// `STEM.pem` and `STEM-key.pem` (mode 600).
pub fn issue(
    ca_dir: &Path,
    subject: &Subject,
    days: u32,
    out_dir: &Path,
) -> Result<Issued, PkiError> {
    let ca_cert_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match subject {
        Subject::Coordinator(hosts) => {
            if hosts.is_empty() {
                return Err(PkiError::Invalid(
                    "name at least one host the coordinator is reached under".into(),
                ));
            }
            dn.push(DnType::CommonName, hosts[0].clone());
            for h in hosts {
                let san = match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into().map_err(|_| {
                        PkiError::Invalid(format!("`{h}` is not a host name or address"))
                    })?),
                };
                params.subject_alt_names.push(san);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Subject::Agent(name) | Subject::Client(name) => {
            check_name(name)?;
            let kind = if matches!(subject, Subject::Agent(_)) {
                PeerKind::Agent
            } else {
                PeerKind::Client
            };
            dn.push(DnType::CommonName, name.clone());
            params.subject_alt_names =
                vec![SanType::URI(identity_uri(kind, name).try_into().map_err(
                    |_| PkiError::Invalid(format!("`{name}` cannot be put in a URI")),
                )?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let stem = subject.stem();
    let cert_path = out_dir.join(format!("{stem}.pem"));
    let key_path = out_dir.join(format!("{stem}-key.pem"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{PeerIdentity, identity_of_der};

    #[test]
    fn issued_certificates_carry_their_identity() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        init(dir.path(), 3650)?;
        assert!(matches!(init(dir.path(), 10), Err(PkiError::Exists(_))));
        let agent = issue(
            dir.path(),
            &Subject::Agent("train-1".into()),
            365,
            dir.path(),
        )?;
        let pem = std::fs::read_to_string(&agent.cert)?;
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
        let der = der.contents;
        assert_eq!(
            identity_of_der(&der),
            Some(PeerIdentity {
                kind: PeerKind::Agent,
                name: "train-1".into()
            })
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&agent.key)?.permissions().mode() & 0o777,
            0o600
        );
        let server = issue(
            dir.path(),
            &Subject::Coordinator(vec!["127.0.0.1".into(), "coord.example".into()]),
            365,
            dir.path(),
        )?;
        let pem = std::fs::read_to_string(&server.cert)?;
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
        let der = der.contents;
        assert_eq!(identity_of_der(&der), None);
        assert!(issue(dir.path(), &Subject::Agent("a/b".into()), 1, dir.path()).is_err());
        Ok(())
    }
}
