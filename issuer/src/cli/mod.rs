//! The `sigil-issuer` command line: `run` starts the issuer; every other
//! command is a client of the admin API on its local socket.

mod audit;
mod federation;
mod output;
mod owner;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use proto::admin as pb;
use proto::issuer::Selector as SelectorMessage;

use crate::config::{Config, FileConfig, DEFAULT_ADMIN_SOCKET};
use crate::store::Selector;
use workload_api::config_file::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "sigil-issuer",
    version,
    about = "Sigil's central issuer and its admin commands"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the issuer.
    Run(RunArgs),
    /// Manage registration entries.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage attested agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Manage owners, who answer for workloads, and sign their consent.
    #[command(subcommand)]
    Owner(owner::OwnerCommand),
    /// Show this trust domain's bundle; manage those of foreign trust domains.
    #[command(subcommand)]
    Bundle(federation::BundleCommand),
    /// Manage federation relationships with foreign trust domains.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Export and verify the signed event log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check that the issuer answers on its admin socket.
    Healthcheck {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "SIGIL_ISSUER_CONFIG")]
    config: Option<PathBuf>,
    /// The trust domain this issuer signs for, e.g. example.org.
    #[arg(long, env = "SIGIL_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Where the CA keys, journal and database live.
    #[arg(long, env = "SIGIL_ISSUER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store: a SQLite file path (default: sigil.db in the data
    /// directory) or a postgres:// URL shared by several replicas.
    #[arg(long, env = "SIGIL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<crate::config::database::DatabaseUrlText>,
    /// The event log's signing key file (default: log/log.jwk in the data
    /// directory); replicas sharing a database are given the same one.
    #[arg(long, env = "SIGIL_LOG_KEY_FILE")]
    log_key_file: Option<PathBuf>,
    /// host:port the agent API (mTLS) listens on.
    #[arg(long, env = "SIGIL_ISSUER_AGENT_API_ADDRESS")]
    agent_api_address: Option<String>,
    /// host:port of the HTTP endpoint serving CRLs and the revocation list, or "off".
    #[arg(long, env = "SIGIL_ISSUER_HTTP_ADDRESS")]
    http_address: Option<String>,
    /// Path of the admin socket; its directory must be private to this user.
    #[arg(long, env = "SIGIL_ADMIN_SOCKET")]
    admin_socket_path: Option<PathBuf>,
    /// off, error, warn, info (default), debug, trace, or target=level directives.
    #[arg(long, env = "SIGIL_LOG_LEVEL")]
    log_level: Option<String>,
    /// text (default) or json.
    #[arg(long, env = "SIGIL_LOG_FORMAT")]
    log_format: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct SocketArg {
    /// Path of the issuer's admin socket.
    #[arg(long, env = "SIGIL_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket_path: PathBuf,
}

/// An entry's fields as flags. `entry create` needs `--spiffe-id`,
/// `--parent-id` and a `--selector`; `entry update` changes only the fields
/// it is given (a repeated flag replaces the whole list).
#[derive(Debug, Args)]
struct EntryFieldArgs {
    /// The SPIFFE ID the entry issues.
    #[arg(long, value_parser = spiffe_id_arg)]
    spiffe_id: Option<String>,
    /// The SPIFFE ID of the agent (or node alias) that may mint it.
    #[arg(long, value_parser = spiffe_id_arg)]
    parent_id: Option<String>,
    /// TYPE:VALUE; repeat for several. All must match.
    #[arg(long = "selector", value_parser = selector_arg)]
    selectors: Vec<Selector>,
    /// X509-SVID lifetime (e.g. 1h or seconds); 0: the issuer's default.
    #[arg(long, value_parser = ttl_arg)]
    x509_svid_ttl: Option<i64>,
    /// JWT-SVID lifetime (e.g. 5m or seconds); 0: the issuer's default.
    #[arg(long, value_parser = ttl_arg)]
    jwt_svid_ttl: Option<i64>,
    /// DNS SAN for the X509-SVID; repeat for several.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Guidance for workloads holding several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// Trust domain whose bundle the workload receives; repeat for several.
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// Unix time after which the entry no longer applies; 0: never.
    #[arg(long)]
    expires_at: Option<i64>,
    /// The owner who answers for the workload (needs --consent).
    #[arg(long = "owner", requires = "consent", value_parser = owner::owner_id_arg)]
    owner_id: Option<String>,
    /// The owner's consent JWS for this entry (`owner consent` writes one).
    #[arg(long, requires = "owner_id")]
    consent: Option<PathBuf>,
}

impl EntryFieldArgs {
    /// The fields of a new entry.
    fn to_new(&self) -> Result<pb::EntryFields, String> {
        let required = |value: &Option<String>, flag: &str| {
            value.clone().ok_or_else(|| format!("{flag} is required"))
        };
        let spiffe_id = required(&self.spiffe_id, "--spiffe-id")?;
        let parent_id = required(&self.parent_id, "--parent-id")?;
        if self.selectors.is_empty() {
            return Err("--selector is required (TYPE:VALUE, repeat for several)".into());
        }
        self.apply(pb::EntryFields {
            spiffe_id,
            parent_id,
            ..pb::EntryFields::default()
        })
    }

    /// `current` with the fields given on the command line replaced; the
    /// consent file is read here.
    fn apply(&self, current: pb::EntryFields) -> Result<pb::EntryFields, String> {
        let list = |given: &[String], current: Vec<String>| {
            if given.is_empty() {
                current
            } else {
                given.to_vec()
            }
        };
        let consent = match &self.consent {
            Some(path) => owner::read_text("--consent", path)?.trim().to_owned(),
            None => current.consent,
        };
        Ok(pb::EntryFields {
            spiffe_id: self.spiffe_id.clone().unwrap_or(current.spiffe_id),
            parent_id: self.parent_id.clone().unwrap_or(current.parent_id),
            selectors: if self.selectors.is_empty() {
                current.selectors
            } else {
                self.selectors
                    .iter()
                    .map(|s| SelectorMessage {
                        r#type: s.kind.clone(),
                        value: s.value.clone(),
                    })
                    .collect()
            },
            x509_svid_ttl: self.x509_svid_ttl.unwrap_or(current.x509_svid_ttl),
            jwt_svid_ttl: self.jwt_svid_ttl.unwrap_or(current.jwt_svid_ttl),
            dns_names: list(&self.dns_names, current.dns_names),
            hint: self.hint.clone().unwrap_or(current.hint),
            federates_with: list(&self.federates_with, current.federates_with),
            expires_at: self.expires_at.unwrap_or(current.expires_at),
            owner_id: self.owner_id.clone().unwrap_or(current.owner_id),
            consent,
            ..current
        })
    }
}

#[derive(Debug, Subcommand)]
enum EntryCommand {
    /// Create an entry.
    Create {
        #[command(flatten)]
        fields: EntryFieldArgs,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Change the fields given; the others keep their values.
    Update {
        /// The entry's id, as `entry list` shows it.
        #[arg(long)]
        entry_id: String,
        /// Refuse the update unless the entry is at this revision (default:
        /// the revision read just before, so a concurrent edit is not lost).
        #[arg(long)]
        revision: Option<i64>,
        #[command(flatten)]
        fields: EntryFieldArgs,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Delete an entry.
    Delete {
        /// The entry's id, as `entry list` shows it.
        #[arg(long)]
        entry_id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one entry.
    Show {
        /// The entry's id, as `entry list` shows it.
        #[arg(long)]
        entry_id: String,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List entries.
    List {
        /// Only entries issuing this SPIFFE ID.
        #[arg(long, value_parser = spiffe_id_arg)]
        spiffe_id: Option<String>,
        /// Only entries with this parent.
        #[arg(long, value_parser = spiffe_id_arg)]
        parent_id: Option<String>,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Generate a single-use join token.
    Generate {
        /// Also create a node alias entry with this SPIFFE ID for the agent.
        #[arg(long, value_parser = spiffe_id_arg)]
        spiffe_id: Option<String>,
        /// How long the token stays valid (e.g. 10m); default: the issuer's.
        #[arg(long, value_parser = ttl_arg)]
        ttl: Option<i64>,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// List attested agents.
    List {
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one agent.
    Show {
        #[command(flatten)]
        agent: AgentIdArgs,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget an agent; it must attest again.
    Evict(AgentIdArgs),
    /// Refuse an agent from now on.
    Ban(AgentIdArgs),
}

#[derive(Debug, Args)]
struct AgentIdArgs {
    /// The agent's SPIFFE ID, as `agent list` shows it.
    #[arg(long, value_parser = spiffe_id_arg)]
    spiffe_id: String,
    #[command(flatten)]
    socket: SocketArg,
}

fn spiffe_id_arg(value: &str) -> Result<String, String> {
    workload_api::id::parse_spiffe_id(value)
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

fn selector_arg(value: &str) -> Result<Selector, String> {
    Selector::parse(value).map_err(|e| e.to_string())
}

fn ttl_arg(value: &str) -> Result<i64, String> {
    let duration = parse_duration(value).map_err(|e| e.to_string())?;
    if duration.as_secs() == 0 {
        return Err(format!("{value:?} must be at least one second"));
    }
    i64::try_from(duration.as_secs()).map_err(|_| format!("{value:?} is too long"))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn admin(
    socket: &SocketArg,
) -> Result<proto::admin::admin_client::AdminClient<tonic::transport::Channel>, String> {
    crate::admin_client::connect(&socket.socket_path)
        .await
        .map_err(|e| format!("cannot reach the issuer's admin API: {e}"))
}

fn status(e: tonic::Status) -> String {
    format!("{} ({:?})", e.message(), e.code())
}

async fn execute(command: Command) -> Result<(), String> {
    match command {
        Command::Run(args) => run(args).await,
        Command::Entry(command) => entry(command).await,
        Command::Token(TokenCommand::Generate {
            spiffe_id,
            ttl,
            json,
            socket,
        }) => {
            let token = admin(&socket)
                .await?
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl: ttl.unwrap_or(0),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            output::join_token(&token, json);
            Ok(())
        }
        Command::Agent(command) => agent(command).await,
        Command::Owner(command) => owner::run(command).await,
        Command::Audit(command) => audit::run(command).await,
        Command::Bundle(command) => federation::run_bundle(command).await,
        Command::Federation(command) => federation::run_federation(command).await,
        Command::Healthcheck { json, socket } => {
            let health = admin(&socket)
                .await?
                .health(pb::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                output::health_json(&health);
                return Ok(());
            }
            workload_api::outln!(
                "Issuer is healthy ({}, trust domain {})",
                health.status,
                health.trust_domain
            );
            Ok(())
        }
    }
}

/// The fields of a stored entry, as an update request carries them.
fn fields_of(entry: proto::issuer::Entry) -> pb::EntryFields {
    pb::EntryFields {
        spiffe_id: entry.spiffe_id,
        parent_id: entry.parent_id,
        selectors: entry.selectors,
        x509_svid_ttl: entry.x509_svid_ttl,
        jwt_svid_ttl: entry.jwt_svid_ttl,
        dns_names: entry.dns_names,
        hint: entry.hint,
        federates_with: entry.federates_with,
        admin: entry.admin,
        downstream: entry.downstream,
        expires_at: entry.expires_at,
        owner_id: entry
            .owner
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default(),
        consent: entry.owner.map(|o| o.consent).unwrap_or_default(),
    }
}

async fn entry(command: EntryCommand) -> Result<(), String> {
    match command {
        EntryCommand::Create {
            fields,
            json,
            socket,
        } => {
            let fields = fields.to_new()?;
            let entry = admin(&socket)
                .await?
                .create_entry(pb::CreateEntryRequest {
                    entry: Some(fields),
                })
                .await
                .map_err(status)?
                .into_inner();
            output::entry(&entry, json);
        }
        EntryCommand::Update {
            entry_id,
            revision,
            fields,
            json,
            socket,
        } => {
            let mut admin = admin(&socket).await?;
            let current = admin
                .get_entry(pb::EntryId {
                    id: entry_id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let entry = admin
                .update_entry(pb::UpdateEntryRequest {
                    id: entry_id,
                    revision: revision.unwrap_or(current.revision),
                    entry: Some(fields.apply(fields_of(current))?),
                })
                .await
                .map_err(status)?
                .into_inner();
            output::entry(&entry, json);
        }
        EntryCommand::Delete { entry_id, socket } => {
            admin(&socket)
                .await?
                .delete_entry(pb::EntryId {
                    id: entry_id.clone(),
                })
                .await
                .map_err(status)?;
            workload_api::outln!("Deleted entry {entry_id}");
        }
        EntryCommand::Show {
            entry_id,
            json,
            socket,
        } => {
            let entry = admin(&socket)
                .await?
                .get_entry(pb::EntryId { id: entry_id })
                .await
                .map_err(status)?
                .into_inner();
            output::entry(&entry, json);
        }
        EntryCommand::List {
            spiffe_id,
            parent_id,
            json,
            socket,
        } => {
            let list = admin(&socket)
                .await?
                .list_entries(pb::ListEntriesRequest {
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    parent_id: parent_id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            output::entries(&list.entries, json);
        }
    }
    Ok(())
}

async fn agent(command: AgentCommand) -> Result<(), String> {
    match command {
        AgentCommand::List { json, socket } => {
            let list = admin(&socket)
                .await?
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            output::agents(&list.agents, json);
        }
        AgentCommand::Show { agent: args, json } => {
            let agent = admin(&args.socket)
                .await?
                .get_agent(pb::AgentId {
                    spiffe_id: args.spiffe_id,
                })
                .await
                .map_err(status)?
                .into_inner();
            output::agent(&agent, json);
        }
        AgentCommand::Evict(args) => {
            admin(&args.socket)
                .await?
                .evict_agent(pb::AgentId {
                    spiffe_id: args.spiffe_id.clone(),
                })
                .await
                .map_err(status)?;
            workload_api::outln!("Evicted agent {}", args.spiffe_id);
        }
        AgentCommand::Ban(args) => {
            admin(&args.socket)
                .await?
                .ban_agent(pb::AgentId {
                    spiffe_id: args.spiffe_id.clone(),
                })
                .await
                .map_err(status)?;
            workload_api::outln!("Banned agent {}", args.spiffe_id);
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), String> {
    let flags = FileConfig {
        trust_domain: args.trust_domain,
        data_dir: args.data_dir,
        database_url: args.database_url,
        log_key_file: args.log_key_file,
        agent_api_address: args.agent_api_address,
        http_address: args.http_address,
        admin_socket_path: args.admin_socket_path,
        log_level: args.log_level,
        log_format: args.log_format,
        ..FileConfig::default()
    };
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let config = Config::from_file(flags.or(file)).map_err(|e| e.to_string())?;
    workload_api::logging::init(&config.log_level, config.log_format);
    let issuer = crate::server::start(config, std::sync::Arc::new(crate::clock::SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    issuer.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
