//! `sigil-issuer audit`: export the event log from a running issuer's HTTP
//! endpoint, and verify an export offline, trusting nothing but the log's
//! verifier key.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::eventlog::leaf::Leaf;
use crate::eventlog::verify::{verify_export, verify_export_with, Report, VerifyError};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Write the log's events, its latest checkpoint and its key to stdout
    /// as JSON lines: a header, then one leaf per line.
    Export {
        /// The first index to export; the header then carries the hashes
        /// that stand for the events before it.
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[command(flatten)]
        url: LogUrlArg,
    },
    /// Check an export offline: the checkpoint's signature, every event's
    /// signature and place, the tree's root, and consistency with an older
    /// checkpoint. Names the first bad index.
    Verify {
        /// The export (`audit export` output).
        file: PathBuf,
        /// An older checkpoint (signed note) the log must have grown from.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The log's verifier key as you know it (`<name>+<id>+<key>`).
        /// Without it, the export's own key is used, and said so.
        #[arg(long, env = "SIGIL_LOG_KEY")]
        log_key: Option<String>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a new signing key for the event log and print its verifier
    /// key: the one key every replica sharing a database is given
    /// (`log_key_file`). An existing file is never overwritten.
    NewKey {
        /// Where to write the private key (a JWK, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// The trust domain whose log it signs; it names the key.
        #[arg(long)]
        trust_domain: String,
        /// Print `{"log_key": ..., "file": ...}` instead of the bare key.
        #[arg(long)]
        json: bool,
    },
    /// Print the log's verifier key, as the issuer serves it.
    Key {
        #[command(flatten)]
        url: LogUrlArg,
        /// Print `{"log_key": ...}` instead of the bare key.
        #[arg(long)]
        json: bool,
    },
    /// What was issued to whom, under which owner, and who used it: the
    /// events about a SPIFFE ID, or under an owner (with every later event
    /// about a SPIFFE ID issued under it), from a verified export.
    Show {
        /// Events whose subject is this SPIFFE ID.
        #[arg(long, conflicts_with = "owner", required_unless_present = "owner")]
        spiffe_id: Option<String>,
        /// Events under this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Read this export instead of asking the issuer.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        url: LogUrlArg,
        /// The log's verifier key as you know it; without it, the export's
        /// own key is used, and said so.
        #[arg(long, env = "SIGIL_LOG_KEY")]
        log_key: Option<String>,
        /// Print JSON lines (`{"index", "event"}`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow the log: print each new event as a JSON line once its
    /// checkpoint verified and the log was shown to have only grown.
    Tail {
        /// Start at this index (default: the log's end when tail starts).
        #[arg(long)]
        from: Option<u64>,
        /// How often to look for new events.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[command(flatten)]
        url: LogUrlArg,
        /// The log's verifier key as you know it; without it, the first
        /// export's own key is used, and said so.
        #[arg(long, env = "SIGIL_LOG_KEY")]
        log_key: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(super) struct LogUrlArg {
    /// The issuer's HTTP endpoint.
    #[arg(
        long,
        env = "SIGIL_ISSUER_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    url: String,
}

pub(super) async fn run(command: AuditCommand) -> Result<(), String> {
    match command {
        AuditCommand::Show {
            spiffe_id,
            owner,
            file,
            url,
            log_key,
            json,
        } => {
            let export = match file {
                Some(path) => {
                    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => get(&format!("{}/log/export", base(&url.url)?)).await?,
            };
            let mut selection = Selection::new(spiffe_id, owner);
            let mut found = Vec::new();
            let report =
                verify_export_with(export.as_slice(), log_key.as_deref(), None, &mut |leaf| {
                    if selection.wants(&leaf) {
                        found.push(leaf);
                    }
                })
                .map_err(|e| {
                    format!("the export does not verify, so nothing in it is shown: {e}")
                })?;
            if !report.key_pinned {
                eprintln!(
                    "note: checked with the export's own key {}; pin it with --log-key",
                    report.log_key
                );
            }
            for leaf in &found {
                if json {
                    workload_api::outln!("{}", leaf_json(leaf));
                } else {
                    workload_api::outln!("{}", describe(leaf));
                }
            }
            if !json {
                workload_api::outln!(
                    "{} of {} events (checkpoint size {})",
                    found.len(),
                    report.kinds.values().sum::<u64>(),
                    report.checkpoint.size
                );
            }
            Ok(())
        }
        AuditCommand::Tail {
            from,
            interval,
            url,
            log_key,
        } => tail(&base(&url.url)?, from, interval, log_key).await,
        AuditCommand::Export { from, url } => {
            get_to_stdout(&format!("{}/log/export?from={from}", base(&url.url)?)).await
        }
        AuditCommand::NewKey {
            out,
            trust_domain,
            json,
        } => {
            let trust_domain = workload_api::id::TrustDomain::new(&trust_domain)
                .map_err(|e| format!("--trust-domain {trust_domain:?}: {e}"))?;
            if out.exists() {
                return Err(format!(
                    "{} exists; a log key is made once and never replaced",
                    out.display()
                ));
            }
            let key = crate::eventlog::key::LogKey::load_or_create(
                &out,
                &crate::eventlog::origin(&trust_domain),
            )
            .map_err(|e| e.to_string())?;
            if json {
                workload_api::outln!(
                    "{}",
                    serde_json::json!({ "log_key": key.verifier_key(), "file": out })
                );
            } else {
                workload_api::outln!("{}", key.verifier_key());
            }
            Ok(())
        }
        AuditCommand::Key { url, json } => {
            let url = format!("{}/log/key", base(&url.url)?);
            if !json {
                return get_to_stdout(&url).await;
            }
            let key = String::from_utf8_lossy(&get(&url).await?)
                .trim()
                .to_string();
            workload_api::outln!("{}", serde_json::json!({ "log_key": key }));
            Ok(())
        }
        AuditCommand::Verify {
            file,
            checkpoint,
            log_key,
            json,
        } => {
            let input =
                std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let older = checkpoint.map(|path| read_note(&path)).transpose()?;
            let report = verify_export(
                std::io::BufReader::new(input),
                log_key.as_deref(),
                older.as_deref(),
            )
            .map_err(|e: VerifyError| format!("audit verify failed: {e}"))?;
            if json {
                print_report_json(&report);
            } else {
                print_report(&report);
            }
            Ok(())
        }
    }
}

fn print_report(report: &Report) {
    use base64::Engine as _;
    let events: u64 = report.kinds.values().sum();
    workload_api::outln!(
        "ok: {events} events (indexes {}..{}) of log {}",
        report.from,
        report.checkpoint.size,
        report.origin
    );
    workload_api::outln!(
        "checkpoint: size {} root {}",
        report.checkpoint.size,
        base64::engine::general_purpose::STANDARD.encode(report.checkpoint.root.0)
    );
    if report.key_pinned {
        workload_api::outln!("log key (pinned): {}", report.log_key);
    } else {
        workload_api::outln!(
            "log key (taken from the export; pin it with --log-key): {}",
            report.log_key
        );
    }
    if report.agent_events > 0 {
        workload_api::outln!(
            "agent signatures: {} checked against keys the log issued the agents",
            report.agent_events
        );
    }
    if report.agent_keys_before_export > 0 {
        workload_api::outln!(
            "agent signatures: {} made with keys issued before index {} (export from 0 to check those keys)",
            report.agent_keys_before_export,
            report.from
        );
    }
    if let Some(old) = &report.consistent_with {
        workload_api::outln!("consistent with the older checkpoint of size {}", old.size);
    }
    for (kind, count) in &report.kinds {
        workload_api::outln!("  {:<20} {count}", kind.name());
    }
}

fn print_report_json(report: &Report) {
    use base64::Engine as _;
    let kinds: serde_json::Map<String, serde_json::Value> = report
        .kinds
        .iter()
        .map(|(kind, count)| (kind.name(), (*count).into()))
        .collect();
    let document = serde_json::json!({
        "ok": true,
        "origin": report.origin,
        "log_key": report.log_key,
        "key_pinned": report.key_pinned,
        "from": report.from,
        "size": report.checkpoint.size,
        "root": base64::engine::general_purpose::STANDARD.encode(report.checkpoint.root.0),
        "consistent_with_size": report.consistent_with.as_ref().map(|c| c.size),
        "agent_events": report.agent_events,
        "agent_keys_before_export": report.agent_keys_before_export,
        "kinds": kinds,
    });
    workload_api::outln!("{document}");
}

/// What `audit show` lists: events about a SPIFFE ID (as subject, or as
/// the claimed sender of a refused request), or events under an owner and,
/// since a credential is issued before it is used, every later event about
/// a SPIFFE ID issued under that owner.
#[derive(Debug)]
struct Selection {
    spiffe_id: Option<String>,
    owner: Option<String>,
    owned_subjects: std::collections::HashSet<String>,
}

impl Selection {
    fn new(spiffe_id: Option<String>, owner: Option<String>) -> Self {
        Selection {
            spiffe_id,
            owner,
            owned_subjects: Default::default(),
        }
    }

    fn wants(&mut self, leaf: &Leaf) -> bool {
        let event = &leaf.event;
        let claimed = event.details.get("claimed_sender").and_then(|s| s.as_str());
        if let Some(id) = &self.spiffe_id {
            return event.subject.as_deref() == Some(id.as_str()) || claimed == Some(id.as_str());
        }
        let Some(owner) = &self.owner else {
            return false;
        };
        if event.owner.as_deref() == Some(owner.as_str()) {
            if let Some(subject) = &event.subject {
                self.owned_subjects.insert(subject.clone());
            }
            return true;
        }
        let about = |id: Option<&str>| id.is_some_and(|id| self.owned_subjects.contains(id));
        about(event.subject.as_deref()) || about(claimed)
    }
}

/// The most a checkpoint file may hold: a note with a few signatures.
const MAX_NOTE_BYTES: u64 = 64 * 1024;

/// A signed note from a file, refused unread when it is too large.
fn read_note(path: &std::path::Path) -> Result<String, String> {
    let shown = || path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", shown()))?
        .len();
    if size > MAX_NOTE_BYTES {
        return Err(format!(
            "{}: {size} bytes; a checkpoint is at most {MAX_NOTE_BYTES}",
            shown()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", shown()))
}

/// A leaf as `audit show --json` and `audit tail` print it.
fn leaf_json(leaf: &Leaf) -> String {
    serde_json::json!({ "index": leaf.index, "event": leaf.event }).to_string()
}

/// One line of `audit show`: when, what, by whom, and the handles.
fn describe(leaf: &Leaf) -> String {
    let e = &leaf.event;
    let mut line = format!(
        "{} #{} {} by {}",
        e.time,
        leaf.index,
        e.kind.name(),
        e.actor
    );
    for (name, value) in [
        ("subject", &e.subject),
        ("owner", &e.owner),
        ("serial", &e.serial),
        ("jti", &e.jti),
        ("jkt", &e.jkt),
        ("entry", &e.entry_id),
    ] {
        if let Some(value) = value {
            line.push_str(&format!(" {name}={value}"));
        }
    }
    if !e.details.is_empty() {
        line.push(' ');
        line.push_str(&serde_json::to_string(&e.details).unwrap_or_default());
    }
    line
}

/// Follows the log: each round fetches the export from where the last one
/// ended, checked against the last checkpoint, so a rewritten history stops
/// the tail with an error instead of printing.
async fn tail(
    base: &str,
    from: Option<u64>,
    interval: std::time::Duration,
    log_key: Option<String>,
) -> Result<(), String> {
    let mut at = match from {
        Some(from) => from,
        None => {
            let note = String::from_utf8_lossy(&get(&format!("{base}/log/checkpoint")).await?)
                .into_owned();
            note.lines()
                .nth(1)
                .and_then(|size| size.parse().ok())
                .ok_or_else(|| "the issuer's checkpoint has no size line".to_string())?
        }
    };
    let mut older: Option<String> = None;
    let mut key = log_key;
    loop {
        let export = get(&format!("{base}/log/export?from={at}")).await?;
        let report = verify_export_with(
            export.as_slice(),
            key.as_deref(),
            older.as_deref(),
            &mut |leaf| {
                workload_api::outln!("{}", leaf_json(&leaf));
            },
        )
        .map_err(|e| format!("audit tail stopped: {e}"))?;
        if key.is_none() {
            eprintln!(
                "note: following with the log's own key {}; pin it with --log-key",
                report.log_key
            );
            key = Some(report.log_key.clone());
        }
        at = report.checkpoint.size;
        older = Some(report.checkpoint_note);
        let _ = std::io::stdout().flush();
        tokio::time::sleep(interval).await;
    }
}

/// The endpoint URL without a trailing slash; plain http only, since what
/// it serves is checked by signature, not by transport.
fn base(url: &str) -> Result<String, String> {
    if !url.starts_with("http://") {
        return Err(format!("--url {url:?}: only http:// URLs are supported"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The whole body of a GET; a non-200 answer is an error carrying the
/// endpoint's own message.
async fn get(url: &str) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::new();
    fetch(url, &mut buffer).await?;
    Ok(buffer)
}

/// Streams the body of a GET to stdout; a non-200 answer is an error
/// carrying the endpoint's own message.
async fn get_to_stdout(url: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match fetch(url, &mut out).await {
        Err(Fetch::Write(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(workload_api::stdout::BROKEN_PIPE_STATUS)
        }
        Err(error) => Err(error.to_string()),
        Ok(()) => out.flush().map_err(|e| format!("writing to stdout: {e}")),
    }
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    #[error("{0}")]
    Http(String),
    #[error("writing the answer: {0}")]
    Write(std::io::Error),
}

impl From<Fetch> for String {
    fn from(error: Fetch) -> String {
        error.to_string()
    }
}

/// GETs `url`, writing its body to `out` as it arrives.
async fn fetch(url: &str, out: &mut dyn Write) -> Result<(), Fetch> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| Fetch::Http(format!("{url}: {e}")))?;
    let response = client
        .get(uri)
        .await
        .map_err(|e| Fetch::Http(format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Fetch::Http(format!("{url}: {status}: {}", text.trim())));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Fetch::Http(format!("{url}: the answer broke off: {e}")))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data).map_err(Fetch::Write)?;
        }
    }
    Ok(())
}
