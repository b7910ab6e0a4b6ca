//! The `sigil-agent` command line: `run` (the agent), `up` (issuer and agent in
//! one process for a single machine), the `api` client commands, `delegate`
//! (child workloads), `healthcheck`.

mod api;
mod delegate;
#[cfg(feature = "embedded-issuer")]
mod up;
mod wpt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{AgentConfig, FileConfig};

#[derive(Debug, Parser)]
#[command(
    name = "sigil-agent",
    version,
    about = "Sigil's node agent and Workload API client"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent against an issuer.
    Run(RunArgs),
    /// Run an issuer and an agent in this process: identities for this machine at once.
    #[cfg(feature = "embedded-issuer")]
    Up(up::UpArgs),
    /// Talk to a Workload API as a workload would.
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// Mint or verify WIMSE Workload Proof Tokens.
    #[command(subcommand)]
    Wpt(wpt::WptCommand),
    /// Register, list or delete child workloads under this workload's identity.
    #[command(subcommand)]
    Delegate(delegate::DelegateCommand),
    /// Report the agent's health: healthy, degraded (issuer unreachable,
    /// valid SVIDs still served; exit 0) or failed (exit 1).
    Healthcheck(api::ClientArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "SIGIL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The trust domain the agent belongs to, e.g. example.org.
    #[arg(long, env = "SIGIL_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// host:port of the issuer's agent API; repeat it (or separate with
    /// commas) for replicas to fail over between.
    #[arg(long, env = "SIGIL_ISSUER_ADDRESS", value_delimiter = ',')]
    issuer_address: Vec<String>,
    /// Where the agent keeps its SVID, key and trust bundle.
    #[arg(long, env = "SIGIL_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to serve the Workload API.
    #[arg(long, env = "SIGIL_AGENT_SOCKET")]
    socket_path: Option<PathBuf>,
    /// A join token from `sigil-issuer token generate` (visible in the
    /// process list: prefer SIGIL_JOIN_TOKEN or --join-token-file).
    #[arg(long, env = "SIGIL_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token.
    #[arg(long, env = "SIGIL_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// The issuer's trust bundle: PEM CA certificates or a SPIFFE bundle.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// An https URL serving the issuer's trust bundle (checked with the system's roots).
    #[arg(long)]
    trust_bundle_url: Option<String>,
    /// Trust the issuer's certificate unverified on first contact.
    #[arg(long)]
    insecure_bootstrap: bool,
    /// The algorithm of workload WIT keys: ES256 (default), ES384, RS256 or PS256.
    #[arg(long, env = "SIGIL_WIT_KEY_ALGORITHM")]
    wit_key_algorithm: Option<String>,
    /// off, error, warn, info (default), debug, trace, or target=level directives.
    #[arg(long, env = "SIGIL_LOG_LEVEL")]
    log_level: Option<String>,
    /// text (default) or json.
    #[arg(long, env = "SIGIL_LOG_FORMAT")]
    log_format: Option<String>,
    /// host:port serving /live, /ready and /metrics over HTTP (off by default).
    #[arg(long, env = "SIGIL_AGENT_HEALTH_ADDRESS")]
    health_address: Option<String>,
    /// https://host:port of the kubelet (on Kubernetes, the node's IP).
    #[arg(long, env = "SIGIL_KUBELET_ADDRESS")]
    kubelet_address: Option<String>,
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

async fn execute(command: Command) -> Result<(), String> {
    match command {
        Command::Run(args) => run(args).await,
        #[cfg(feature = "embedded-issuer")]
        Command::Up(args) => up::up(args).await.map_err(|e| e.to_string()),
        Command::Api(command) => api::execute(command).await,
        Command::Wpt(command) => wpt::execute(command).await,
        Command::Delegate(command) => delegate::execute(command).await,
        Command::Healthcheck(args) => api::healthcheck(&args).await,
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let flags = FileConfig {
        trust_domain: args.trust_domain,
        issuer_address: (!args.issuer_address.is_empty()).then(|| args.issuer_address.join(",")),
        data_dir: args.data_dir,
        socket_path: args.socket_path,
        join_token: args.join_token,
        join_token_file: args.join_token_file,
        trust_bundle_path: args.trust_bundle,
        trust_bundle_url: args.trust_bundle_url,
        insecure_bootstrap: args.insecure_bootstrap.then_some(true),
        wit_key_algorithm: args.wit_key_algorithm,
        log_level: args.log_level,
        log_format: args.log_format,
        health_address: args.health_address,
        kubelet_address: args.kubelet_address,
        ..FileConfig::default()
    };
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let config = AgentConfig::from_file(flags.or(file)).map_err(|e| e.to_string())?;
    workload_api::logging::init(&config.log_level, config.log_format);
    workload_api::files::create_private_dir(&config.data_dir)
        .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
    // One agent per data directory: a second would rotate the same SVID.
    let _lock =
        workload_api::files::DirLock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
    let agent = crate::agent::start(config)
        .await
        .map_err(|e| e.to_string())?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
