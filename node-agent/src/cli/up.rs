//! `sigil-agent up`: one command for a single machine. It runs an issuer in
//! this process (SQLite in the data directory), attests the agent to it,
//! registers the invoking user (`spiffe://<td>/user/<name>`, selected by uid)
//! through the issuer's admin API, as `sigil-issuer entry create` would,
//! prints how to reach the Workload API and keeps a live status line. A
//! second run reuses the data directory: same CA, same agent, same entries.
//!
//! The user is also an owner (`spiffe://<td>/owner/<name>`, key in
//! `owner/owner.jwk`): the user's entry carries the owner's consent, so its
//! credentials are owner-bound from the first fetch. Consent is signed for
//! 30 days and renewed, on start and while running, a week before it lapses.
//!
//! Layout: the data directory is traversable by every local user so that
//! any process can reach `api.sock` (callers are told apart by their peer
//! credentials); `issuer/`, `agent/` and `owner/` inside it are private (0700).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use proto::admin::admin_client::AdminClient;
use proto::admin::{BundleRequest, CreateEntryRequest, CreateJoinTokenRequest, EntryFields};
use proto::admin::{JoinToken, ListEntriesRequest, UpdateEntryRequest};
use proto::issuer::{Entry, Selector};
use sigil_issuer::clock::SystemClock;
use tonic::transport::Channel;
use workload_api::files::{DirLock, LockError};
use workload_api::id::parse_trust_domain;

use crate::config::{AgentConfig, ConfigError, FileConfig};

mod owner;

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
    #[error("owner key {path}: {reason}")]
    OwnerKey { path: PathBuf, reason: String },
    #[error("owner {id} is registered with key {registered}, not with the key in {path} ({local}); restore that key file or use another --data-dir")]
    OwnerKeyMismatch {
        id: String,
        path: PathBuf,
        registered: String,
        local: String,
    },
    #[error("owner {id} was revoked at {revoked_at}; up does not register it again: use another --data-dir")]
    OwnerRevoked { id: String, revoked_at: String },
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

/// Makes sure the entry exists: created through the admin API unless one
/// with the same SPIFFE ID, parent and selectors exists. With an `owner`,
/// the entry is bound to it: a new entry is created with the owner's
/// consent, an existing one that is unbound or whose consent lapses within
/// [`owner::RENEW_BEFORE`] is updated (at its revision) with a fresh one.
/// An entry an operator bound to another owner is left as it is.
async fn ensure_entry(
    admin: &mut AdminClient<Channel>,
    mut fields: EntryFields,
    owner: Option<&owner::LocalOwner>,
) -> Result<Entry, UpError> {
    let admin_call = |action| move |status| UpError::Admin { action, status };
    let existing = admin
        .list_entries(ListEntriesRequest {
            spiffe_id: fields.spiffe_id.clone(),
            parent_id: fields.parent_id.clone(),
        })
        .await
        .map_err(admin_call("listing entries"))?
        .into_inner()
        .entries
        .into_iter()
        .find(|e| e.selectors == fields.selectors);
    let now = owner::unix_now();
    let Some(entry) = existing else {
        if let Some(owner) = owner {
            owner.bind(&mut fields, now)?;
        }
        let created = admin
            .create_entry(CreateEntryRequest {
                entry: Some(fields),
            })
            .await
            .map_err(admin_call("creating an entry"))?;
        return Ok(created.into_inner());
    };
    let Some(owner) = owner else {
        return Ok(entry);
    };
    match owner.binding(&fields, entry.owner.as_ref(), now) {
        owner::Binding::Current => Ok(entry),
        owner::Binding::OtherOwner => {
            tracing::warn!(
                entry_id = %entry.id,
                owner = %entry.owner.as_ref().map(|o| o.id.as_str()).unwrap_or_default(),
                "the entry is bound to another owner; left as it is"
            );
            Ok(entry)
        }
        owner::Binding::Renew => {
            let mut fields = fields_of(&entry);
            owner.bind(&mut fields, now)?;
            let updated = admin
                .update_entry(UpdateEntryRequest {
                    id: entry.id.clone(),
                    entry: Some(fields),
                    revision: entry.revision,
                })
                .await
                .map_err(admin_call("renewing the owner's consent"))?;
            Ok(updated.into_inner())
        }
    }
}

/// The fields of a stored entry, to update it with. The expiry of a bound
/// entry came from its old consent: cleared, the new consent sets it.
fn fields_of(entry: &Entry) -> EntryFields {
    EntryFields {
        spiffe_id: entry.spiffe_id.clone(),
        parent_id: entry.parent_id.clone(),
        selectors: entry.selectors.clone(),
        x509_svid_ttl: entry.x509_svid_ttl,
        jwt_svid_ttl: entry.jwt_svid_ttl,
        dns_names: entry.dns_names.clone(),
        hint: entry.hint.clone(),
        federates_with: entry.federates_with.clone(),
        admin: entry.admin,
        downstream: entry.downstream,
        expires_at: if entry.owner.is_some() {
            0
        } else {
            entry.expires_at
        },
        owner_id: String::new(),
        consent: String::new(),
    }
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
    let result = register_and_wait(
        &mut admin,
        &agent,
        trust_domain,
        data_dir,
        issuer,
        socket_path,
    )
    .await;
    agent.shutdown().await;
    result
}

/// How often a running `up` checks whether the user's consent needs renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Registers the node alias, the invoking user as an owner and the user's
/// entry bound to it, tells the user how to reach everything, and shows
/// the status until Ctrl-C or SIGTERM, renewing the consent on the way.
async fn register_and_wait(
    admin: &mut AdminClient<Channel>,
    agent: &crate::agent::RunningAgent,
    trust_domain: &str,
    data_dir: &Path,
    issuer: &sigil_issuer::server::RunningIssuer,
    socket_path: &Path,
) -> Result<(), UpError> {
    let admin_socket = &issuer.admin_socket_path;
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
        None,
    )
    .await?;
    let (uid, user) = invoking_user();
    let owner =
        owner::LocalOwner::ensure(admin, data_dir, owner::owner_id(trust_domain, &user)).await?;
    let user_id = format!("spiffe://{trust_domain}/user/{user}");
    let user_fields = EntryFields {
        spiffe_id: user_id.clone(),
        parent_id: node_id.clone(),
        selectors: vec![selector("unix", format!("uid:{uid}"))],
        ..EntryFields::default()
    };
    let user_entry = ensure_entry(admin, user_fields.clone(), Some(&owner)).await?;

    workload_api::outln!("Sigil is up: trust domain {trust_domain}");
    workload_api::outln!("Workload API socket: {}", socket_path.display());
    if let Some(dir) = closed_ancestor(socket_path) {
        workload_api::outln!(
            "Note: {} is closed to other users, so only this user reaches the socket; use --socket-path or --data-dir elsewhere to serve them.",
            dir.display()
        );
    }
    workload_api::outln!("Processes of uid {uid} are {user_id}.");
    match &user_entry.owner {
        Some(bound) if bound.id == owner.id => workload_api::outln!(
            "Their credentials are bound to owner {} (key {}).",
            owner.id,
            owner.key_path.display()
        ),
        Some(bound) => workload_api::outln!("Their credentials are bound to owner {}.", bound.id),
        None => workload_api::outln!("Their credentials are not owner-bound."),
    }
    workload_api::outln!();
    workload_api::outln!(
        "    export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        socket_path.display()
    );
    workload_api::outln!("    export SIGIL_ADMIN_SOCKET={}", admin_socket.display());
    if let Some(http) = issuer.http_address {
        workload_api::outln!("    export SIGIL_ISSUER_URL=http://{http}");
    }
    workload_api::outln!();
    workload_api::outln!(
        "Every issuance is in the signed event log (key {}): sigil-issuer audit export > events.jsonl",
        issuer.state.events.key().verifier_key()
    );
    workload_api::outln!(
        "Register more workloads with: sigil-issuer entry create --parent-id {node_id} --spiffe-id ... --selector unix:uid:..."
    );
    workload_api::outln!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    let status_task = std::io::stdout()
        .is_terminal()
        .then(|| tokio::spawn(show_status(agent.status.clone(), agent.served.clone())));
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut renewal =
        tokio::time::interval_at(tokio::time::Instant::now() + RENEWAL_CHECK, RENEWAL_CHECK);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = renewal.tick() => {
                if let Err(e) = ensure_entry(admin, user_fields.clone(), Some(&owner)).await {
                    tracing::warn!(error = %e, "renewing the owner's consent failed; retrying in an hour");
                }
            }
        }
    }
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
