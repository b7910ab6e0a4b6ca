//! Workload API connections: a unix stream with its peer credentials, a
//! process-unique id, the moment it was accepted, and a slot where the
//! identity source keeps what it learned about the caller for as long as the
//! connection lives; and the HTTP/2 settings they are served with.

use std::any::Any;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

/// What the server knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Unique within this process.
    pub id: u64,
    pub peer: Option<tokio::net::unix::UCred>,
    pub accepted_at: Instant,
    pub cache: Arc<ConnectionCache>,
}

/// One value of any type, kept for a connection and dropped with it (the
/// attestor keeps its last answer here, with an open handle on the caller's
/// process).
#[derive(Default)]
pub struct ConnectionCache(Mutex<Option<Box<dyn Any + Send>>>);

impl ConnectionCache {
    /// The value kept, if it is a `T`.
    pub fn get<T: Any + Send + Clone>(&self) -> Option<T> {
        let slot = self.0.lock().expect("connection cache");
        slot.as_ref()?.downcast_ref::<T>().cloned()
    }

    /// Keeps `value`, replacing what was kept before.
    pub fn set<T: Any + Send>(&self, value: T) {
        *self.0.lock().expect("connection cache") = Some(Box::new(value));
    }
}

impl std::fmt::Debug for ConnectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionCache { .. }")
    }
}

/// An accepted Workload API connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    info: ConnectionInfo,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        let info = ConnectionInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer: stream.peer_cred().ok(),
            accepted_at: Instant::now(),
            cache: Arc::default(),
        };
        Connection { stream, info }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The HTTP/2 flow-control window granted to each stream and to each
/// connection: the protocol's initial value (RFC 9113 section 6.9.2) rather
/// than hyper's 1 MiB. Workload API requests are a few hundred bytes; the
/// window bounds what one caller can have h2 hold for it before the service
/// reads it, and a larger request only waits for a WINDOW_UPDATE.
const WINDOW: u32 = 65_535;

/// The transport of every Workload API server: the agent's, and the
/// benchmark's floor, so that the two are compared on equal terms.
///
/// Memory, as `benches/workload_api.rs` measures it (agent RSS, glibc
/// malloc): about 5 KiB per entry (X.509 and WIT minted), 5 KiB per idle
/// connection and 10 KiB per X.509 stream on it. What a connection and a
/// stream cost is set below tonic's builder: h2's buffers, which Sigil's h2
/// (vendor/h2/SIGIL-PATCH.md) starts small and grows on demand, and tonic's
/// encoding buffer, which `proto::codec::LeanCodec` allocates on first use.
/// Windows are credit, not memory: 16 KiB and 1 MiB windows measure the
/// same, and so do 1 to 4 malloc arenas.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
}

/// The connections accepted on `listener`, as a stream for tonic's
/// `serve_with_incoming`.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Connection>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|accepted| accepted.map(Connection::new))
}

use tokio_stream::StreamExt as _;
