//! A connection to one replica that tells the pool when the replica ended
//! it (end of stream, reset, write error), so the next connection attempt
//! waits a jittered delay and starts with another replica.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::IssuerPool;

/// A stream to the replica at `address`, made as the pool's connection
/// number `generation`.
pub struct Watched<S> {
    inner: S,
    pool: Arc<IssuerPool>,
    address: SocketAddr,
    generation: u64,
    /// Reported already, or closed by this side: nothing more to report.
    settled: bool,
}

impl<S> std::fmt::Debug for Watched<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("address", &self.address)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<S> Watched<S> {
    pub(super) fn new(
        inner: S,
        pool: Arc<IssuerPool>,
        address: SocketAddr,
        generation: u64,
    ) -> Self {
        Watched {
            inner,
            pool,
            address,
            generation,
            settled: false,
        }
    }

    /// The replica this stream is connected to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn ended(&mut self, error: Option<&io::Error>) {
        if !self.settled {
            self.settled = true;
            self.pool.ended(self.address, self.generation, error);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Err(error)) => self.ended(Some(error)),
            Poll::Ready(Ok(())) if wanted && buf.filled().len() == before => self.ended(None),
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Err(error)) = &polled {
            self.ended(Some(error));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if let Poll::Ready(Err(error)) = &polled {
            self.ended(Some(error));
        }
        polled
    }

    /// As the stream wrapped: h2 sizes its write buffer by this, and the
    /// connection must behave as it did unwrapped.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Err(error)) = &polled {
            self.ended(Some(error));
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // This side is closing: the replica did nothing wrong.
        self.settled = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
