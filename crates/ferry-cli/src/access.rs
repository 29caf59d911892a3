//! Trust commands: `ferry pki` (the deployment's CA and certificates, no coordinator
//! needed), `ferry token` (bearer tokens), `ferry audit` and `ferry whoami`, and how the CLI
//! connects: TLS from `tls:` and a token from `FERRY_TOKEN` or a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ferry_core::config::{FerryConfig, TlsConfig};
use ferry_proto::bearer::Bearer;
use ferry_proto::pki::{self, Subject};
use ferry_proto::v1::{self, workflow_service_client::WorkflowServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The client every command uses: the token travels with each call.
pub type Client = WorkflowServiceClient<InterceptedService<Channel, Bearer>>;

/// What the CLI connects with.
pub struct Credentials {
    pub tls: TlsConfig,
    pub token: Option<String>,
}

impl Credentials {
    /// `tls` and `auth.token_file` from the config file (when given); the token from
    /// `FERRY_TOKEN`, else `token_file`, else the config's `auth.token_file`.
    pub fn load(config: Option<&Path>, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let config = match config {
            Some(path) => FerryConfig::load(Some(path), std::env::vars())?,
            None => FerryConfig::default(),
        };
        let token = match std::env::var("FERRY_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                let file = token_file.map(Path::to_path_buf).or_else(|| {
                    let f = &config.auth.token_file;
                    (!f.as_os_str().is_empty()).then(|| f.clone())
                });
                match file {
                    Some(f) => Some(read_token(&f)?),
                    None => None,
                }
            }
        };
        Ok(Credentials {
            tls: config.tls,
            token,
        })
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    if let Err(e) = ferry_fs::check_private(path) {
        bail!("the token file {} {e}", path.display());
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// Connects to `url` with `creds`.
pub async fn connect(url: &str, creds: &Credentials) -> anyhow::Result<Client> {
    let endpoint = ferry_proto::tls::endpoint(url, &creds.tls)
        .map_err(|e| crate::Unreachable(e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        crate::Unreachable(format!(
            "cannot reach the coordinator at {url}: {e} (is ferry-coordinatord running? set --coordinator or FERRY_COORDINATOR)"
        ))
    })?;
    let bearer = Bearer::new(creds.token.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(WorkflowServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(ferry_core::limits::REQUEST_BYTES)
        .max_encoding_message_size(ferry_core::limits::REQUEST_BYTES))
}

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create the deployment's CA in DIR (`ca.pem`, and `ca-key.pem`: keep it offline).
    Init {
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA in `--dir`: exactly one of `--coordinator`,
    /// `--agent` or `--client`. Writes STEM.pem and STEM-key.pem (mode 600) into `--out`.
    Issue {
        /// The CA's directory.
        #[arg(long, default_value = ".", env = "FERRY_PKI_DIR")]
        dir: PathBuf,
        /// The coordinator's host names or addresses, comma-separated (what agents and the
        /// CLI connect to).
        #[arg(long, value_delimiter = ',')]
        coordinator: Vec<String>,
        /// An agent's name: the only name it may register under.
        #[arg(long)]
        agent: Option<String>,
        /// A client (person or script) certificate.
        #[arg(long)]
        client: Option<String>,
        /// Where to write (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn pki(cmd: PkiCmd) -> anyhow::Result<()> {
    match cmd {
        PkiCmd::Init { dir, days } => {
            let issued = pki::init(&dir, days)?;
            println!(
                "CA created: {} (key {}, mode 600: keep it where only the CA's owner can read it)",
                issued.cert.display(),
                issued.key.display()
            );
        }
        PkiCmd::Issue {
            dir,
            coordinator,
            agent,
            client,
            out,
            days,
        } => {
            let subject = match (coordinator.is_empty(), agent, client) {
                (false, None, None) => Subject::Coordinator(coordinator),
                (true, Some(a), None) => Subject::Agent(a),
                (true, None, Some(c)) => Subject::Client(c),
                _ => bail!("name exactly one of --coordinator, --agent or --client"),
            };
            let out = out.unwrap_or_else(|| dir.clone());
            let issued = pki::issue(&dir, &subject, days, &out)?;
            println!(
                "issued {}: {} (key {})",
                subject.stem(),
                issued.cert.display(),
                issued.key.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print a new random token without storing it (for `auth.bootstrap_token_file`).
    Generate,
    /// Create a token for NAME with roles (viewer, operator, approver, author, admin);
    /// the token is printed once.
    Create {
        name: String,
        #[arg(long = "role", short, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    List,
    /// Revoke a token by id (it stops working at once).
    Revoke {
        id: i64,
    },
}

fn token_json(t: &v1::TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "name": t.name, "roles": t.roles, "created_by": t.created_by,
        "created_at": t.created_at, "revoked_at": t.revoked_at,
    })
}

pub async fn token(
    cmd: TokenCmd,
    url: &str,
    creds: &Credentials,
    json: bool,
) -> anyhow::Result<()> {
    if let TokenCmd::Generate = cmd {
        let token = ferry_proto::bearer::new_token()
            .ok_or_else(|| anyhow::anyhow!("the system has no randomness to offer"))?;
        println!("{token}");
        return Ok(());
    }
    let mut client = connect(url, creds).await?;
    match cmd {
        TokenCmd::Generate => {}
        TokenCmd::Create { name, roles } => {
            let created = client
                .create_token(v1::CreateTokenRequest { name, roles })
                .await
                .map_err(crate::status)?
                .into_inner();
            let info = created.info.unwrap_or_default();
            if json {
                let mut v = token_json(&info);
                v["token"] = created.token.into();
                crate::print_json(&v)?;
            } else {
                println!(
                    "token {} for {} ({}); shown once, store it now:\n{}",
                    info.id,
                    info.name,
                    info.roles.join(","),
                    created.token
                );
            }
        }
        TokenCmd::List => {
            let tokens = client
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map_err(crate::status)?
                .into_inner()
                .tokens;
            if json {
                crate::print_json(&serde_json::Value::from(
                    tokens.iter().map(token_json).collect::<Vec<_>>(),
                ))?;
            } else {
                println!(
                    "{:>4}  {:<24} {:<28} {:<16} STATE",
                    "ID", "NAME", "ROLES", "CREATED BY"
                );
                for t in tokens {
                    let state = if t.revoked_at.is_empty() {
                        "valid".to_owned()
                    } else {
                        format!("revoked {}", t.revoked_at)
                    };
                    println!(
                        "{:>4}  {:<24} {:<28} {:<16} {state}",
                        t.id,
                        t.name,
                        t.roles.join(","),
                        t.created_by
                    );
                }
            }
        }
        TokenCmd::Revoke { id } => {
            let t = client
                .revoke_token(v1::TokenRef { id })
                .await
                .map_err(crate::status)?
                .into_inner();
            if json {
                crate::print_json(&token_json(&t))?;
            } else {
                println!("token {} ({}) revoked", t.id, t.name);
            }
        }
    }
    Ok(())
}

pub async fn audit(
    client: &mut Client,
    limit: u32,
    actor: Option<String>,
    before: i64,
    json: bool,
) -> anyhow::Result<()> {
    let entries = client
        .list_audit(v1::ListAuditRequest {
            limit,
            before_id: before,
            actor: actor.unwrap_or_default(),
        })
        .await
        .map_err(crate::status)?
        .into_inner()
        .entries;
    if json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id, "timestamp": e.timestamp, "actor": e.actor,
                    "action": e.action, "target": e.target, "detail": e.detail,
                })
            })
            .collect();
        return crate::print_json(&serde_json::Value::from(v));
    }
    for e in entries.iter().rev() {
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!("  {}", e.detail)
        };
        println!(
            "{:>6}  {}  {:<16} {:<20} {}{detail}",
            e.id, e.timestamp, e.actor, e.action, e.target
        );
    }
    Ok(())
}

pub async fn whoami(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let me = client
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map_err(crate::status)?
        .into_inner();
    if json {
        return crate::print_json(&serde_json::json!({
            "name": me.name, "roles": me.roles, "auth_enabled": me.auth_enabled,
        }));
    }
    if me.auth_enabled {
        println!("{} ({})", me.name, me.roles.join(","));
    } else {
        println!(
            "{} (this coordinator checks no tokens: loopback only)",
            me.name
        );
    }
    Ok(())
}
