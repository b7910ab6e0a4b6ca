//! A Workload API client: endpoint addresses as `SPIFFE_ENDPOINT_SOCKET` gives
//! them (SPIFFE_Workload_Endpoint.md section 4) and a channel that adds the
//! security header to every call.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::server::SECURITY_HEADER;

/// The environment variable naming the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why an endpoint address was refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("endpoint {0:?}: only unix:///absolute/path and tcp://IP:PORT are valid")]
    BadAddress(String),
    #[error("no endpoint: set {ENDPOINT_ENV} or pass --socket-path")]
    NoEndpoint,
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// Why a unix socket could not be reached, in the words a person can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    #[error(
        "{path}: no such file; is the process that serves it running, and is this the socket it printed?"
    )]
    Missing { path: PathBuf },
    #[error(
        "{path}: permission denied; this user may not reach the socket or a directory above it"
    )]
    PermissionDenied { path: PathBuf },
    #[error("{path} is not a socket")]
    NotASocket { path: PathBuf },
    #[error("{path}: nothing is listening on this socket; the process that made it has stopped")]
    NotListening { path: PathBuf },
    #[error("{path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SocketError {
    /// Names the cause of a failed connect to `path`.
    pub fn classify(path: &Path, error: std::io::Error) -> Self {
        use std::io::ErrorKind;
        use std::os::unix::fs::FileTypeExt;
        let path = path.to_owned();
        match error.kind() {
            ErrorKind::NotFound => SocketError::Missing { path },
            ErrorKind::PermissionDenied => SocketError::PermissionDenied { path },
            ErrorKind::ConnectionRefused => match std::fs::metadata(&path) {
                Ok(meta) if !meta.file_type().is_socket() => SocketError::NotASocket { path },
                _ => SocketError::NotListening { path },
            },
            ErrorKind::NotADirectory => SocketError::NotASocket { path },
            _ => SocketError::Other {
                path,
                source: error,
            },
        }
    }
}

/// A gRPC channel over the unix socket at `path`. The socket is tried once
/// first, so a failure names its cause rather than a bare transport error.
pub async fn unix_channel(path: &Path) -> Result<Channel, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|e| SocketError::classify(path, e))?;
    let owned = path.to_owned();
    // The URI is required by the API but unused: the connector picks the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = owned.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| ClientError::Connect {
            address: path.display().to_string(),
            source,
        })
}

/// A parsed Workload API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAddress {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl EndpointAddress {
    /// Parses `unix:///path` (also `unix:/path`) or `tcp://IP:PORT`. The tcp
    /// form takes an IP address only, with no path, query or user info.
    pub fn parse(address: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadAddress(address.to_owned());
        if let Some(rest) = address.strip_prefix("unix://") {
            // unix://host/path is not allowed: the authority must be empty.
            if !rest.starts_with('/') || rest.contains(['?', '#']) {
                return Err(bad());
            }
            return Ok(EndpointAddress::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = address.strip_prefix("unix:") {
            if !rest.starts_with('/') || rest.starts_with("//") || rest.contains(['?', '#']) {
                return Err(bad());
            }
            return Ok(EndpointAddress::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = address.strip_prefix("tcp://") {
            return rest
                .parse::<std::net::SocketAddr>()
                .map(EndpointAddress::Tcp)
                .map_err(|_| bad());
        }
        Err(bad())
    }

    /// A plain filesystem path is taken as a unix socket.
    pub fn from_path_or_address(value: &str) -> Result<Self, ClientError> {
        if value.starts_with('/') {
            Ok(EndpointAddress::Unix(PathBuf::from(value)))
        } else {
            Self::parse(value)
        }
    }
}

/// Adds `workload.spiffe.io: true` to every request.
#[derive(Debug, Clone, Copy)]
pub struct SecurityHeader;

impl tonic::service::Interceptor for SecurityHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok(request)
    }
}

pub type WorkloadClient = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// Connects to a Workload API endpoint.
pub async fn connect(address: &EndpointAddress) -> Result<WorkloadClient, ClientError> {
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel(address).await?,
        SecurityHeader,
    ))
}

/// A plain gRPC channel to an endpoint, for the services beside the
/// Workload API on its socket.
pub async fn channel(address: &EndpointAddress) -> Result<Channel, ClientError> {
    Ok(match address {
        EndpointAddress::Unix(path) => unix_channel(path).await?,
        EndpointAddress::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
            .expect("socket address forms a URI")
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                address: addr.to_string(),
                source,
            })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        let ok = [
            (
                "unix:///run/agent.sock",
                EndpointAddress::Unix("/run/agent.sock".into()),
            ),
            (
                "unix:/run/agent.sock",
                EndpointAddress::Unix("/run/agent.sock".into()),
            ),
            (
                "tcp://127.0.0.1:8000",
                EndpointAddress::Tcp("127.0.0.1:8000".parse().unwrap()),
            ),
        ];
        for (input, expected) in ok {
            assert_eq!(EndpointAddress::parse(input).unwrap(), expected, "{input}");
        }
        for bad in [
            "unix://host/run/agent.sock",
            "unix:relative.sock",
            "unix:///a?x=1",
            "tcp://localhost:8000",
            "tcp://127.0.0.1:8000/path",
            "http://127.0.0.1:80",
            "/run/agent.sock",
            "",
        ] {
            assert!(EndpointAddress::parse(bad).is_err(), "{bad}");
        }
        assert!(EndpointAddress::from_path_or_address("/run/agent.sock").is_ok());
    }

    #[test]
    fn a_missing_socket_is_named_for_the_agent_and_the_issuer_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let error = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        let message = SocketError::classify(&path, error).to_string();
        assert_eq!(
            message,
            format!(
                "{}: no such file; is the process that serves it running, and is this the \
                 socket it printed?",
                path.display()
            )
        );
    }
}
