//! Workload API connections: a unix stream with its peer credentials, a
//! process-unique id and the moment it was accepted, so attestation can be
//! cached per connection and recycled pids recognised.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The connections accepted on `listener`, as a stream for tonic's
/// `serve_with_incoming`.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Connection>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|accepted| accepted.map(Connection::new))
}

use tokio_stream::StreamExt as _;
