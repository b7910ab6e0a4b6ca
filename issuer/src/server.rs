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
use workload_api::files::{BoundSocket, DirLock, LockError};

use crate::ca::{Ca, CaConfig};
use crate::clock::Clock;
use crate::config::Config;
use crate::endpoints::admin::AdminService;
use crate::endpoints::agent::AgentService;
use crate::endpoints::bundle_endpoint::BundleEndpointServer;
use crate::endpoints::tls::ServerTls;
use crate::eventlog::key::LogKey;
use crate::eventlog::EventLog;
use crate::federation::poller::Poller;
use crate::k8s::Clusters;
use crate::published::Revocations;
use crate::revocations;
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
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The URL is shown with its password replaced.
    #[error("database {database}: {source}")]
    OpenStore {
        database: String,
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("HTTP address {address}: {source}")]
    BindHttp {
        address: String,
        source: std::io::Error,
    },
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
    #[error("admin socket directory: {0}")]
    AdminSocketDir(#[from] workload_api::files::NotPrivate),
    #[error("server TLS: {0}")]
    Tls(#[source] crate::endpoints::tls::TlsError),
    #[error("publishing revocations: {0}")]
    Revocations(#[from] revocations::PublishError),
    #[error(transparent)]
    LogKey(#[from] crate::eventlog::key::LogKeyError),
    #[error("event log: {0}")]
    EventLog(#[from] crate::eventlog::AppendError),
    #[error("event log: {0}")]
    Sequencing(#[from] crate::eventlog::sequencer::StepError),
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::client::ClientSetupError),
    #[error(transparent)]
    BundleEndpoint(#[from] crate::endpoints::bundle_endpoint::EndpointError),
    #[error("trust bundle: {0}")]
    TrustBundle(#[from] crate::trust_bundle::SyncError),
}

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running issuer.
#[derive(Debug)]
pub struct RunningIssuer {
    pub state: IssuerState,
    pub agent_api_address: SocketAddr,
    /// Where the public HTTP endpoint listens, when it is on.
    pub http_address: Option<SocketAddr>,
    /// Where the SPIFFE Federation bundle endpoint listens, when it is on.
    pub bundle_endpoint_address: Option<SocketAddr>,
    pub admin_socket_path: PathBuf,
    admin_socket: BoundSocket,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _lock: DirLock,
}

impl RunningIssuer {
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
        self.admin_socket.remove();
    }
}

/// Opens the issuer's state from its configuration, in a data directory
/// that exists and that this process holds the lock on.
async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<IssuerState, StartError> {
    let store =
        Store::open(&config.database_url)
            .await
            .map_err(|source| StartError::OpenStore {
                database: config.database_url.to_string(),
                source,
            })?;
    tracing::info!(database = %config.database_url, "store open");
    let ca = Ca::open(
        CaConfig {
            trust_domain: config.trust_domain.clone(),
            dir: config.data_dir.join("ca"),
            ca_ttl: config.ca_ttl,
            x509_key_type: config.ca_key_type,
            jwt_key_type: config.jwt_key_type,
            wit_key_type: config.wit_key_type,
            wit_issuer: config.wit_issuer.clone(),
            jwt_issuer: config.oidc_issuer.clone(),
            upstream: config.upstream_ca.clone(),
            refresh_hint: config.bundle_refresh_hint,
        },
        clock.now(),
    )?;
    let log_key = LogKey::load_or_create(
        &config.log_key_file,
        &crate::eventlog::origin(&config.trust_domain),
    )?;
    let events = EventLog::open(
        store.clone(),
        log_key,
        crate::ids::issuer_id(&config.trust_domain),
    )
    .await?;
    let replica = crate::trust_bundle::replica_id(&config.data_dir)?;
    let registrations =
        crate::registrations::Registrations::load(store.clone(), config.trust_domain.clone())
            .await?;
    Ok(IssuerState {
        config: Arc::new(config),
        store,
        ca: Arc::new(ca),
        clock,
        revocations: Arc::new(Revocations::new()),
        serial_counters: Arc::default(),
        events,
        replica: replica.into(),
        registrations,
    })
}

/// Starts the issuer: locks its data directory, binds both APIs and spawns
/// the rotation loop.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningIssuer, StartError> {
    workload_api::files::create_private_dir(&config.data_dir).map_err(|source| {
        StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        }
    })?;
    let lock = DirLock::acquire(&config.data_dir)?;
    // Metrics recorded from here on reach GET /metrics.
    crate::metrics::handle();
    let k8s = Arc::new(Clusters::connect(&config.k8s_clusters).await?);
    let state = open(config, clock).await?;
    // From the first request on, the bundle holds every replica's keys.
    crate::trust_bundle::publish(&state).await?;
    // Agents and relying parties get a revocation list from the first
    // request: the stored one, or, if none is valid, one signed now.
    revocations::refresh(&state, false).await?;
    // The log has a checkpoint from the first request, and records queued
    // before a crash are sequenced now.
    crate::eventlog::sequencer::catch_up(&state.events).await?;
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
    let issuer_svid = tls.svid();
    tasks.push(tokio::spawn(serve_agent_api(
        listener,
        tls,
        AgentService::new(state.clone(), k8s.clone()),
        shutdown_rx.clone(),
    )));

    let http_address = match state.config.http_address {
        Some(address) => {
            let failed = |source| StartError::BindHttp {
                address: address.to_string(),
                source,
            };
            let listener = TcpListener::bind(address).await.map_err(failed)?;
            let bound = listener.local_addr().map_err(failed)?;
            tasks.push(tokio::spawn(serve_http(
                listener,
                state.clone(),
                shutdown_rx.clone(),
            )));
            Some(bound)
        }
        None => None,
    };

    let bundle_endpoint_address = match &state.config.bundle_endpoint {
        Some(endpoint) => {
            let server =
                BundleEndpointServer::bind(endpoint, state.clone(), issuer_svid.clone()).await?;
            let bound = server.local_addr();
            tasks.push(tokio::spawn(server.serve(shutdown_rx.clone())));
            Some(bound)
        }
        None => None,
    };

    let admin_socket_path = state.config.admin_socket_path.clone();
    let (admin_listener, admin_socket) = bind_admin_socket(&admin_socket_path)?;
    let poller = Poller::new(state.clone());
    tasks.push(tokio::spawn(serve_admin_api(
        admin_listener,
        AdminService::new(state.clone(), poller.clone()),
        shutdown_rx.clone(),
    )));
    let revocations_lease = crate::singleton::hold(
        state.store.clone(),
        revocations::LEASE,
        state.replica.to_string(),
        shutdown_rx.clone(),
    );
    tasks.push(tokio::spawn(revocations::publish_loop(
        state.clone(),
        revocations_lease,
        shutdown_rx.clone(),
    )));
    let sequencer = {
        let (events, replica) = (state.events.clone(), state.replica.clone());
        let shutdown = shutdown_rx.clone();
        async move { crate::eventlog::sequencer::run(events, &replica, shutdown).await }
    };
    tasks.push(tokio::spawn(sequencer));
    let removed = crate::k8s::registrar::remove_unconfigured(&state, &k8s).await?;
    if removed > 0 {
        tracing::info!(
            removed,
            "entries of Kubernetes clusters no longer configured deleted"
        );
    }
    // One replica polls the peers' bundle endpoints; every replica serves
    // what it stored, and how its polls went.
    tasks.push(tokio::spawn(crate::singleton::run_while_held(
        state.store.clone(),
        "federation",
        state.replica.to_string(),
        {
            let poller = poller.clone();
            move || vec![Box::pin(poller.clone().run()) as crate::singleton::Job]
        },
        shutdown_rx.clone(),
    )));
    // Replicas would otherwise reconcile the same pods and write the same
    // ConfigMaps at once: one of them does it.
    let kubernetes_jobs = {
        let (state, k8s) = (state.clone(), k8s.clone());
        move || {
            let mut jobs = crate::k8s::registrar::tasks(&state, &k8s);
            jobs.extend(crate::k8s::bundle_map::tasks(&state, &k8s));
            jobs
        }
    };
    if k8s.iter().next().is_some() {
        tasks.push(tokio::spawn(crate::singleton::run_while_held(
            state.store.clone(),
            "kubernetes",
            state.replica.to_string(),
            kubernetes_jobs,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::trust_bundle::run(
        state.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(
        state.registrations.clone().run(shutdown_rx.clone()),
    ));
    tasks.push(tokio::spawn(rotation_loop(state.clone(), shutdown_rx)));

    tracing::info!(
        trust_domain = %state.config.trust_domain,
        agent_api = %agent_api_address,
        http = ?http_address,
        bundle_endpoint = ?bundle_endpoint_address,
        admin_socket = %admin_socket_path.display(),
        event_log_key = %state.events.key().verifier_key(),
        "issuer started"
    );
    Ok(RunningIssuer {
        state,
        agent_api_address,
        http_address,
        bundle_endpoint_address,
        admin_socket_path,
        admin_socket,
        shutdown,
        tasks,
        _lock: lock,
    })
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves the agent API on `listener`. A connection must complete TLS and
/// then send the HTTP/2 preface, each within its timeout in
/// [`crate::limits`]; after that, keep-alive pings it must answer stop a
/// vanished or stalled peer from holding it open.
async fn serve_agent_api(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    service: AgentService,
    shutdown: watch::Receiver<bool>,
) {
    use crate::limits::{
        PrefaceDeadline, HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, HTTP2_PREFACE_TIMEOUT,
        TLS_HANDSHAKE_TIMEOUT,
    };
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
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        // h2 waits for the preface with no timer of its own.
                        let stream = PrefaceDeadline::new(stream, HTTP2_PREFACE_TIMEOUT);
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(AgentApiServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), wait_for(shutdown))
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "agent API stopped");
    }
    accept.abort();
}

/// Serves the public HTTP endpoint (CRLs, revocation list).
async fn serve_http(listener: TcpListener, state: IssuerState, shutdown: watch::Receiver<bool>) {
    let app = crate::endpoints::http::router(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(wait_for(shutdown))
        .await
    {
        tracing::error!(%error, "HTTP endpoint stopped");
    }
}

/// Binds the admin socket inside a directory only the issuer's user can
/// enter: one it creates, or an existing one that is already private. A
/// shared directory is refused rather than changed.
fn bind_admin_socket(path: &std::path::Path) -> Result<(UnixListener, BoundSocket), StartError> {
    let failed = |source| StartError::AdminSocket {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    workload_api::files::create_private_dir(dir).map_err(failed)?;
    let uid = workload_api::files::current_uid().map_err(failed)?;
    workload_api::files::check_private_dir(dir, uid)?;
    let (listener, bound) = BoundSocket::bind(path, 0o600).map_err(failed)?;
    Ok((UnixListener::from_std(listener).map_err(failed)?, bound))
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
    // Keys made at start are logged on the first pass.
    let mut unlogged = true;
    loop {
        let now = state.clock.now();
        match state.ca.rotate(now) {
            Ok(changed) => {
                if changed {
                    metrics::counter!(crate::metrics::KEY_ROTATIONS).increment(1);
                }
                unlogged |= changed;
            }
            Err(error) => tracing::error!(%error, "CA rotation failed; retrying"),
        }
        if unlogged {
            let keys = state.ca.key_states();
            let logged =
                crate::eventlog::witnessed::key_lifecycle(&state.events, &keys, state.clock.now());
            match logged.await {
                Ok(()) => unlogged = false,
                Err(error) => tracing::error!(%error, "logging key rotation failed; retrying"),
            }
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
