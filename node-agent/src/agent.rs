//! Starting and running the agent: bootstrap, entry sync, the SVID cache,
//! renewal, and the Workload API on its unix socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::agent::agent_health_server::AgentHealthServer;
use proto::agent::delegation_server::DelegationServer;
use proto::agent::usage_server::UsageServer;
use proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use workload_api::files::BoundSocket;
use workload_api::server::WorkloadApi;
use workload_api::source::Snapshot;

use crate::config::AgentConfig;
use crate::events::AgentEvents;
use crate::issuer_health::IssuerHealth;
use crate::node::{Node, NodeError};
use crate::source::{AgentSource, Served};
use crate::svid::Status;

/// How long shutdown waits for open streams before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Events(#[from] crate::events::queue::QueueError),
    #[error("health address {address}: {source}")]
    HealthAddress {
        address: String,
        source: std::io::Error,
    },
    #[error("workload API socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    pub node: Arc<Node>,
    pub socket_path: PathBuf,
    pub status: watch::Receiver<Status>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub served: Arc<Served>,
    /// Whether the issuer is answering minting and signing calls.
    pub health: Arc<IssuerHealth>,
    /// Events waiting for the issuer's log.
    pub events: Arc<AgentEvents>,
    /// Where /live, /ready and /metrics are served, when they are.
    pub health_address: Option<std::net::SocketAddr>,
    socket: BoundSocket,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops the agent and waits for its tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.socket.remove();
    }
}

/// Starts the agent.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
    let config = Arc::new(config);
    raise_open_file_limit();
    let node = Node::bootstrap(config.clone()).await?;
    let events = Arc::new(AgentEvents::open(
        &config.data_dir,
        &node.svid().spiffe_id.to_string(),
    )?);
    let (stop, stop_rx) = watch::channel(false);
    let (entries_tx, entries_rx) = watch::channel(Arc::new(Vec::new()));
    let delegation_entries = entries_rx.clone();
    // Revocations kept on disk apply from the first call, before any sync.
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot {
        revocations: node.revocations(),
        ..Snapshot::awaiting_entries((*node.bundle()).clone())
    }));
    let (status_tx, status_rx) = watch::channel(Status::default());
    let health = Arc::new(IssuerHealth::default());

    let socket_error = |source| AgentError::Socket {
        path: config.socket_path.display().to_string(),
        source,
    };
    // Any local process may connect; callers are told apart by their peer
    // credentials. A socket another live agent serves is never taken over.
    let (listener, socket) = BoundSocket::bind(&config.socket_path, 0o777).map_err(socket_error)?;
    let listener = UnixListener::from_std(listener).map_err(socket_error)?;
    let mut tasks = vec![
        tokio::spawn(node.clone().run_renewal(stop_rx.clone())),
        tokio::spawn(crate::events::sender::run(
            events.clone(),
            node.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(crate::sync::run(
            node.clone(),
            entries_tx,
            health.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(crate::svid::run(
            node.clone(),
            entries_rx,
            snapshot_tx,
            status_tx,
            health.clone(),
            stop_rx.clone(),
        )),
    ];
    let source = Arc::new(AgentSource::new(
        node.clone(),
        snapshot_rx.clone(),
        health.clone(),
        events.clone(),
    ));
    let served = source.served.clone();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::WORKLOAD_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let delegation =
        crate::delegation::DelegationService::new(source.clone(), node.clone(), delegation_entries);
    let usage = crate::usage::UsageService::new(source.clone(), node.clone(), events.clone());
    let probe = crate::probe::Probe {
        node: node.clone(),
        health: health.clone(),
        snapshots: snapshot_rx.clone(),
    };
    let mut shutdown = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let result = workload_api::connection::server_builder()
            .layer(crate::metrics::CallMetricsLayer)
            .add_service(SpiffeWorkloadApiServer::new(WorkloadApi::new(source)))
            .add_service(reflection)
            .add_service(AgentHealthServer::new(probe))
            .add_service(DelegationServer::new(delegation))
            .add_service(UsageServer::new(usage))
            .serve_with_incoming_shutdown(
                workload_api::connection::incoming(listener),
                async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "workload API stopped");
        }
    }));
    let health_address = match config.health_address {
        Some(address) => {
            let failed = |source| AgentError::HealthAddress {
                address: address.to_string(),
                source,
            };
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(failed)?;
            let bound = listener.local_addr().map_err(failed)?;
            crate::metrics::handle();
            let app = crate::health_http::router(crate::health_http::HealthState {
                snapshots: snapshot_rx.clone(),
                health: health.clone(),
                events: events.clone(),
            });
            let mut shutdown = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                };
                if let Err(error) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(%error, "health endpoint stopped");
                }
            }));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(
        agent_id = %node.svid().spiffe_id,
        socket = %config.socket_path.display(),
        health = ?health_address,
        "agent started"
    );
    Ok(RunningAgent {
        node,
        socket_path: config.socket_path.clone(),
        status: status_rx,
        snapshots: snapshot_rx,
        served,
        health,
        events,
        health_address,
        socket,
        stop,
        tasks,
    })
}

/// Each Workload API connection holds two descriptors (its socket and a
/// handle on the caller's /proc directory), so the soft limit on open files,
/// often 1024, is raised to the hard limit.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "could not raise the open-file limit");
        }
    }
}
