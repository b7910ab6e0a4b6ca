//! `sigil-agent up`: one command for a single machine. It runs an issuer in
//! this process (SQLite in the data directory), attests the agent to it,
//! registers the invoking user (`spiffe://<td>/user/<name>`, selected by uid),
//! prints how to reach the Workload API and keeps a live status line. A second
//! run reuses the data directory: same CA, same agent, same entries.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use sigil_issuer::clock::{unix_secs, SystemClock};
use sigil_issuer::store::{EntryFields, Selector, Store};
use workload_api::id::parse_trust_domain;

use crate::config::{AgentConfig, FileConfig};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the issuer and agent keep their state.
    #[arg(long, env = "SIGIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// Where to serve the Workload API (default: <data-dir>/api.sock).
    #[arg(long)]
    socket_path: Option<PathBuf>,
    #[arg(long, env = "SIGIL_LOG_LEVEL", default_value = "warn")]
    log_level: String,
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
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let name = crate::attestor::unix::name_of(Path::new("/etc/passwd"), uid)
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .unwrap_or_else(|| format!("uid-{uid}"));
    (uid, name)
}

/// Refuses to reuse a data directory made for another trust domain.
fn check_trust_domain(data_dir: &Path, trust_domain: &str) -> Result<(), String> {
    let marker = data_dir.join("trust_domain");
    match std::fs::read_to_string(&marker) {
        Ok(existing) if existing.trim() != trust_domain => Err(format!(
            "{} belongs to trust domain {}, not {trust_domain}; use --trust-domain {} or another --data-dir",
            data_dir.display(),
            existing.trim(),
            existing.trim()
        )),
        Ok(_) => Ok(()),
        Err(_) => std::fs::write(&marker, format!("{trust_domain}\n")).map_err(|e| e.to_string()),
    }
}

/// Creates the entry unless one with the same SPIFFE ID and parent exists.
async fn ensure_entry(store: &Store, fields: EntryFields) -> Result<(), String> {
    let existing = store
        .list_entries(Some(&fields.spiffe_id), Some(&fields.parent_id))
        .await
        .map_err(|e| e.to_string())?;
    if existing
        .iter()
        .any(|e| e.fields.selectors == fields.selectors)
    {
        return Ok(());
    }
    store
        .create_entry(&fields, unix_secs(SystemTime::now()))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub async fn up(args: UpArgs) -> Result<(), String> {
    sigil_issuer::cli::init_logging(&args.log_level, sigil_issuer::config::LogFormat::Text);
    let trust_domain =
        parse_trust_domain(&args.trust_domain).map_err(|e| format!("--trust-domain: {e}"))?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    sigil_issuer::server::create_private_dir(&data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().map_err(|e| e.to_string())?;
    check_trust_domain(&data_dir, trust_domain.as_str())?;
    let socket_path = args
        .socket_path
        .unwrap_or_else(|| data_dir.join("api.sock"));

    let mut issuer_config =
        sigil_issuer::config::Config::new(trust_domain.clone(), data_dir.join("issuer"));
    issuer_config.agent_api_address = "127.0.0.1:0".parse().expect("static address");
    issuer_config.admin_socket_path = data_dir.join("issuer/private/admin.sock");
    let issuer = sigil_issuer::server::start(issuer_config, Arc::new(SystemClock))
        .await
        .map_err(|e| format!("issuer: {e}"))?;
    let state = issuer.running_state();
    let token = sigil_issuer::attestation::generate_join_token(
        &state.store,
        state.config.join_token_ttl,
        SystemTime::now(),
    )
    .await
    .map_err(|e| e.to_string())?;

    let trust_bundle = data_dir.join("issuer/bundle.json");
    sigil_issuer::ca::keys::write_private(&trust_bundle, &state.ca.bundle().to_jwks_json())
        .map_err(|e| e.to_string())?;
    let agent_config = AgentConfig::from_file(FileConfig {
        trust_domain: Some(trust_domain.to_string()),
        issuer_address: Some(issuer.agent_api_address.to_string()),
        data_dir: Some(data_dir.join("agent")),
        socket_path: Some(socket_path.clone()),
        join_token: Some(token.secret.clone()),
        trust_bundle_path: Some(trust_bundle),
        ..FileConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let agent = crate::agent::start(agent_config)
        .await
        .map_err(|e| format!("agent: {e}"))?;

    // The node alias keeps the user's entry stable across agent identities.
    let agent_id = agent.node.svid().spiffe_id.to_string();
    let node_id = format!("spiffe://{}/node/local", trust_domain.as_str());
    ensure_entry(
        &state.store,
        EntryFields {
            spiffe_id: node_id.clone(),
            parent_id: agent_id.clone(),
            selectors: vec![Selector::new("spiffe_id", agent_id.clone())],
            ..EntryFields::default()
        },
    )
    .await?;
    let (uid, user) = invoking_user();
    let user_id = format!("spiffe://{}/user/{user}", trust_domain.as_str());
    ensure_entry(
        &state.store,
        EntryFields {
            spiffe_id: user_id.clone(),
            parent_id: node_id,
            selectors: vec![Selector::new("unix", format!("uid:{uid}"))],
            ..EntryFields::default()
        },
    )
    .await?;

    println!(
        "Sigil is up: trust domain {trust_domain}, data in {}",
        data_dir.display()
    );
    println!("Workload API socket: {}", socket_path.display());
    println!("Processes of uid {uid} are {user_id}.");
    println!();
    println!(
        "    export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        socket_path.display()
    );
    println!();
    println!(
        "Register more workloads with: sigil-issuer entry create --socket-path {} ...",
        issuer.admin_socket_path.display()
    );
    println!("Press Ctrl-C to stop.");

    let status_task = tokio::spawn(show_status(agent.status.clone(), agent.served.clone()));
    super::shutdown_signal().await;
    status_task.abort();
    println!();
    println!("Stopping.");
    agent.shutdown().await;
    issuer.shutdown().await;
    Ok(())
}

/// A live status line on a terminal; otherwise a line whenever it changes.
async fn show_status(
    mut status: tokio::sync::watch::Receiver<crate::svid::Status>,
    served: Arc<crate::source::Served>,
) {
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let s = status.borrow_and_update().clone();
        let next = match s
            .next_rotation
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
        {
            Some(d) => format!(
                "next rotation in {}",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            ),
            None => "no rotation scheduled".into(),
        };
        let error = s
            .last_error
            .map(|e| format!(" · issuer: {e}"))
            .unwrap_or_default();
        let line = format!(
            "SVIDs held: {} · calls served: {} · JWT-SVIDs served: {} · {next}{error}",
            s.svids,
            served.calls.load(Ordering::Relaxed),
            served.jwt_svids.load(Ordering::Relaxed),
        );
        if terminal {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if line.split(" · next").next() != last.split(" · next").next() {
            println!("{line}");
        }
        last = line;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}
