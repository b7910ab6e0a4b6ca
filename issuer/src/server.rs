//! Starting and running the issuer: opens the store and the CA, binds the agent
//! API and admin API, and runs key rotation until shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::admin::admin_server::AdminServer;
use proto::issuer::agent_api_server::AgentApiServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

use crate::ca::{Ca, CaConfig};
use crate::clock::Clock;
use crate::config::Config;
use crate::endpoints::admin::AdminService;
use crate::endpoints::agent::AgentService;
use crate::endpoints::tls::ServerTls;
use crate::state::IssuerState;
use crate::store::Store;

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("agent API address {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {source}")]
    AdminSocket {
        path: String,
        source: std::io::Error,
    },
    #[error("server TLS: {0}")]
    Tls(String),
}

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running issuer.
#[derive(Debug)]
pub struct RunningIssuer {
    pub state: IssuerState,
    pub agent_api_address: SocketAddr,
    pub admin_socket_path: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningIssuer {
    /// The issuer's shared state, for embedding (`sigil-agent up`).
    pub fn running_state(&self) -> IssuerState {
        self.state.clone()
    }

    /// Stops every endpoint and background task. Open connections get a few
    /// seconds to finish before they are cut.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let _ = std::fs::remove_file(&self.admin_socket_path);
    }
}

/// Opens the issuer's state from its configuration.
pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<IssuerState, StartError> {
    create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let store = Store::open_sqlite(&config.data_dir.join("sigil.db")).await?;
    let ca = Ca::open(
        CaConfig {
            trust_domain: config.trust_domain.clone(),
            dir: config.data_dir.join("ca"),
            ca_ttl: config.ca_ttl,
            x509_key_type: config.ca_key_type,
            jwt_key_type: config.jwt_key_type,
            wit_key_type: config.wit_key_type,
            wit_issuer: config.wit_issuer.clone(),
            upstream: config.upstream_ca.clone(),
            refresh_hint: config.bundle_refresh_hint,
        },
        clock.now(),
    )?;
    Ok(IssuerState {
        config: Arc::new(config),
        store,
        ca: Arc::new(ca),
        clock,
    })
}

/// Starts the issuer: binds both APIs and spawns the rotation loop.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningIssuer, StartError> {
    let state = open(config, clock).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let listener = TcpListener::bind(state.config.agent_api_address)
        .await
        .map_err(|source| StartError::Bind {
            address: state.config.agent_api_address.to_string(),
            source,
        })?;
    let agent_api_address = listener.local_addr().map_err(|source| StartError::Bind {
        address: state.config.agent_api_address.to_string(),
        source,
    })?;
    let tls = Arc::new(ServerTls::new(state.clone()).map_err(StartError::Tls)?);
    tasks.push(tokio::spawn(serve_agent_api(
        listener,
        tls,
        AgentService::new(state.clone()),
        shutdown_rx.clone(),
    )));

    let admin_socket_path = state.config.admin_socket_path.clone();
    let admin_listener =
        bind_admin_socket(&admin_socket_path).map_err(|source| StartError::AdminSocket {
            path: admin_socket_path.display().to_string(),
            source,
        })?;
    tasks.push(tokio::spawn(serve_admin_api(
        admin_listener,
        AdminService::new(state.clone()),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(rotation_loop(state.clone(), shutdown_rx)));

    tracing::info!(
        trust_domain = %state.config.trust_domain,
        agent_api = %agent_api_address,
        admin_socket = %admin_socket_path.display(),
        "issuer started"
    );
    Ok(RunningIssuer {
        state,
        agent_api_address,
        admin_socket_path,
        shutdown,
        tasks,
    })
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn serve_agent_api(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    service: AgentService,
    shutdown: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel(64);
    let accept_shutdown = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "agent API accept failed");
                        continue;
                    }
                },
                _ = wait_for(accept_shutdown.clone()) => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let result = tonic::transport::Server::builder()
        .add_service(AgentApiServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), wait_for(shutdown))
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "agent API stopped");
    }
    accept.abort();
}

/// Binds the admin socket inside a directory only the issuer's user can enter.
fn bind_admin_socket(path: &std::path::Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Creates `dir` (and parents) and sets it to 0700.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

async fn serve_admin_api(
    listener: UnixListener,
    service: AdminService,
    shutdown: watch::Receiver<bool>,
) {
    let result = tonic::transport::Server::builder()
        .add_service(AdminServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), wait_for(shutdown))
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin API stopped");
    }
}

/// Runs CA rotation: checks at least every ten seconds, and sooner when the
/// next step is due.
async fn rotation_loop(state: IssuerState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = state.clock.now();
        if let Err(error) = state.ca.rotate(now) {
            tracing::error!(%error, "CA rotation failed; retrying");
        }
        let wait = state
            .ca
            .next_rotation_at()
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
