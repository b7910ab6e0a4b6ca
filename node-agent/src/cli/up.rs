//! `sigil-agent up`: one command for a single machine. It runs an issuer in
//! this process (SQLite in the data directory), attests the agent to it,
//! registers the invoking user (`spiffe://<td>/user/<name>`, selected by uid)
//! through the issuer's admin API, as `sigil-issuer entry create` would,
//! prints how to reach the Workload API and keeps a live status line. A
//! second run reuses the data directory: same CA, same agent, same entries.
//!
//! Layout: the data directory is traversable by every local user so that
//! any process can reach `api.sock` (callers are told apart by their peer
//! credentials); `issuer/` and `agent/` inside it are private (0700).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use proto::admin::admin_client::AdminClient;
use proto::admin::{BundleRequest, CreateEntryRequest, CreateJoinTokenRequest, EntryFields};
use proto::admin::{JoinToken, ListEntriesRequest};
use proto::issuer::Selector;
use sigil_issuer::clock::SystemClock;
use tonic::transport::Channel;
use workload_api::files::{DirLock, LockError};
use workload_api::id::parse_trust_domain;

use crate::config::{AgentConfig, ConfigError, FileConfig};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the issuer and agent keep their state.
    #[arg(long, env = "SIGIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The trust domain of the embedded issuer.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// Where to serve the Workload API (default: <data-dir>/api.sock).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    /// off, error, warn (default), info, debug, trace, or target=level directives.
    #[arg(long, env = "SIGIL_LOG_LEVEL", default_value = "warn")]
    log_level: String,
}

/// Why `up` could not bring Sigil up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    #[error("--trust-domain: {0}")]
    TrustDomain(workload_api::IdError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("{dir} belongs to trust domain {existing}, not {wanted}; use --trust-domain {existing} or another --data-dir")]
    OtherTrustDomain {
        dir: PathBuf,
        existing: String,
        wanted: String,
    },
    #[error("issuer: {0}")]
    Issuer(#[from] sigil_issuer::server::StartError),
    #[error("admin API: {0}")]
    AdminConnect(#[from] workload_api::client::ClientError),
    #[error("admin API, {action}: {}", .status.message())]
    Admin {
        action: &'static str,
        status: tonic::Status,
    },
    #[error("trust bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent: {0}")]
    Agent(#[from] crate::agent::AgentError),
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("sigil");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/share/sigil");
    }
    PathBuf::from("sigil-data")
}

/// The uid and user name of this process.
fn invoking_user() -> (u32, String) {
    let uid = workload_api::files::current_uid().unwrap_or(0);
    let name = crate::attestor::unix::name_of(Path::new("/etc/passwd"), uid)
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .unwrap_or_else(|| format!("uid-{uid}"));
    (uid, name)
}

/// Refuses to reuse a data directory made for another trust domain.
fn check_trust_domain(data_dir: &Path, trust_domain: &str) -> Result<(), UpError> {
    let marker = data_dir.join("trust_domain");
    match std::fs::read_to_string(&marker) {
        Ok(existing) if existing.trim() != trust_domain => Err(UpError::OtherTrustDomain {
            dir: data_dir.to_owned(),
            existing: existing.trim().to_owned(),
            wanted: trust_domain.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(_) => std::fs::write(&marker, format!("{trust_domain}\n")).map_err(|source| {
            UpError::DataDir {
                path: marker,
                source,
            }
        }),
    }
}

/// The first directory on the way to `path` that other users cannot pass,
/// if any: with one, only this user reaches the socket.
fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().skip(1).find_map(|dir| {
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| dir.to_owned())
    })
}

/// Creates the entry through the admin API unless one with the same SPIFFE
/// ID, parent and selectors exists.
async fn ensure_entry(
    admin: &mut AdminClient<Channel>,
    fields: EntryFields,
) -> Result<(), UpError> {
    let existing = admin
        .list_entries(ListEntriesRequest {
            spiffe_id: fields.spiffe_id.clone(),
            parent_id: fields.parent_id.clone(),
        })
        .await
        .map_err(|status| UpError::Admin {
            action: "listing entries",
            status,
        })?
        .into_inner()
        .entries;
    if existing.iter().any(|e| e.selectors == fields.selectors) {
        return Ok(());
    }
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(fields),
        })
        .await
        .map_err(|status| UpError::Admin {
            action: "creating an entry",
            status,
        })?;
    Ok(())
}

pub async fn up(args: UpArgs) -> Result<(), UpError> {
    let log_level = workload_api::logging::parse_level(Some(&args.log_level), "warn")?;
    workload_api::logging::init(&log_level, workload_api::logging::LogFormat::Text);
    let trust_domain = parse_trust_domain(&args.trust_domain).map_err(UpError::TrustDomain)?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let data_dir_error = |path: &Path| {
        let path = path.to_owned();
        move |source| UpError::DataDir { path, source }
    };
    workload_api::files::create_dir(&data_dir, 0o755).map_err(data_dir_error(&data_dir))?;
    let data_dir = data_dir.canonicalize().map_err(data_dir_error(&data_dir))?;
    let _lock = DirLock::acquire(&data_dir)?;
    check_trust_domain(&data_dir, trust_domain.as_str())?;
    let socket_path = args
        .socket_path
        .unwrap_or_else(|| data_dir.join("api.sock"));

    let mut issuer_config =
        sigil_issuer::config::Config::new(trust_domain.clone(), data_dir.join("issuer"));
    issuer_config.agent_api_address = "127.0.0.1:0".parse().expect("static address");
    issuer_config.http_address = Some("127.0.0.1:0".parse().expect("static address"));
    issuer_config.admin_socket_path = data_dir.join("issuer/private/admin.sock");
    let issuer = sigil_issuer::server::start(issuer_config, Arc::new(SystemClock)).await?;
    let result = serve(&issuer, &data_dir, &socket_path, trust_domain.as_str()).await;
    issuer.shutdown().await;
    result
}

/// Everything `up` does while its issuer runs.
async fn serve(
    issuer: &sigil_issuer::server::RunningIssuer,
    data_dir: &Path,
    socket_path: &Path,
    trust_domain: &str,
) -> Result<(), UpError> {
    let admin_socket = &issuer.admin_socket_path;
    let mut admin = sigil_issuer::admin_client::connect(admin_socket).await?;
    let admin_call = |action| move |status| UpError::Admin { action, status };
    let bundle = admin
        .get_bundle(BundleRequest {})
        .await
        .map_err(admin_call("reading the bundle"))?
        .into_inner();
    let trust_bundle = data_dir.join("issuer/bundle.json");
    workload_api::files::write_private(&trust_bundle, &bundle.jwks).map_err(|source| {
        UpError::Bundle {
            path: trust_bundle.clone(),
            source,
        }
    })?;
    // Used only when the agent holds no usable SVID; unused, it expires.
    let JoinToken { token, .. } = admin
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .map_err(admin_call("creating a join token"))?
        .into_inner();
    let agent_config = AgentConfig::from_file(FileConfig {
        trust_domain: Some(trust_domain.to_owned()),
        issuer_address: Some(issuer.agent_api_address.to_string()),
        data_dir: Some(data_dir.join("agent")),
        socket_path: Some(socket_path.to_owned()),
        join_token: Some(token),
        trust_bundle_path: Some(trust_bundle),
        ..FileConfig::default()
    })?;
    let agent = crate::agent::start(agent_config).await?;
    let result =
        register_and_wait(&mut admin, &agent, trust_domain, admin_socket, socket_path).await;
    agent.shutdown().await;
    result
}

/// Registers the node alias and the invoking user, tells the user how to
/// reach everything, and shows the status until Ctrl-C or SIGTERM.
async fn register_and_wait(
    admin: &mut AdminClient<Channel>,
    agent: &crate::agent::RunningAgent,
    trust_domain: &str,
    admin_socket: &Path,
    socket_path: &Path,
) -> Result<(), UpError> {
    // The node alias keeps the user's entry stable across agent identities.
    let agent_id = agent.node.svid().spiffe_id.to_string();
    let node_id = format!("spiffe://{trust_domain}/node/local");
    ensure_entry(
        admin,
        EntryFields {
            spiffe_id: node_id.clone(),
            parent_id: agent_id.clone(),
            selectors: vec![selector("spiffe_id", agent_id)],
            ..EntryFields::default()
        },
    )
    .await?;
    let (uid, user) = invoking_user();
    let user_id = format!("spiffe://{trust_domain}/user/{user}");
    ensure_entry(
        admin,
        EntryFields {
            spiffe_id: user_id.clone(),
            parent_id: node_id.clone(),
            selectors: vec![selector("unix", format!("uid:{uid}"))],
            ..EntryFields::default()
        },
    )
    .await?;

    workload_api::outln!("Sigil is up: trust domain {trust_domain}");
    workload_api::outln!("Workload API socket: {}", socket_path.display());
    if let Some(dir) = closed_ancestor(socket_path) {
        workload_api::outln!(
            "Note: {} is closed to other users, so only this user reaches the socket; use --socket-path or --data-dir elsewhere to serve them.",
            dir.display()
        );
    }
    workload_api::outln!("Processes of uid {uid} are {user_id}.");
    workload_api::outln!();
    workload_api::outln!(
        "    export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        socket_path.display()
    );
    workload_api::outln!("    export SIGIL_ADMIN_SOCKET={}", admin_socket.display());
    workload_api::outln!();
    workload_api::outln!(
        "Register more workloads with: sigil-issuer entry create --parent-id {node_id} --spiffe-id ... --selector unix:uid:..."
    );
    workload_api::outln!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    let status_task = std::io::stdout()
        .is_terminal()
        .then(|| tokio::spawn(show_status(agent.status.clone(), agent.served.clone())));
    super::shutdown_signal().await;
    if let Some(task) = status_task {
        task.abort();
        workload_api::outln!();
    }
    workload_api::outln!("Stopping.");
    Ok(())
}

fn selector(kind: &str, value: impl Into<String>) -> Selector {
    Selector {
        r#type: kind.to_owned(),
        value: value.into(),
    }
}

/// A live status line, redrawn in place on the terminal.
async fn show_status(
    mut status: tokio::sync::watch::Receiver<crate::svid::Status>,
    served: Arc<crate::source::Served>,
) {
    loop {
        let s = status.borrow_and_update().clone();
        let next = match s.next_rotation {
            Some(t) => format!(
                "next rotation in {}",
                humantime::format_duration(Duration::from_secs(
                    t.duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs()
                ))
            ),
            None => "no rotation scheduled".into(),
        };
        let error = s
            .last_error
            .map(|e| format!(" · issuer: {e}"))
            .unwrap_or_default();
        workload_api::out!(
            "\r\x1b[2KSVIDs held: {} · calls served: {} · JWT-SVIDs served: {} · {next}{error}",
            s.svids,
            served.calls.load(Ordering::Relaxed),
            served.jwt_svids.load(Ordering::Relaxed),
        );
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}
