//! The bounds the issuer puts on what its clients send: sizes and counts of
//! registration entry fields and admin API arguments, TTLs, and how long a
//! connection on the agent port may take to start speaking HTTP/2. They are
//! listed for users, with the error each refusal gives, in `docs/limits.md`;
//! keep the two in step.
//!
//! Sizes are in bytes of UTF-8. Refusals of fields are `INVALID_ARGUMENT`
//! (see [`crate::registration`]); the gRPC layer itself refuses any message
//! over tonic's default 4 MiB with `RESOURCE_EXHAUSTED`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Longest SPIFFE ID in any field: `spiffe_id`, `parent_id`, `spiffe_id`
/// selector values, list filters and agent IDs. SPIFFE-ID.md section 2.3
/// requires accepting IDs up to this length and no more is needed.
pub use workload_api::id::MAX_SPIFFE_ID_BYTES;

/// Longest trust domain name in `federates_with` (SPIFFE-ID.md section 2.1),
/// not counting a `spiffe://` prefix.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Most selectors an entry may require. SPIRE sets no limit; real entries
/// use a handful.
pub const MAX_SELECTORS_PER_ENTRY: usize = 64;

/// Longest selector value (the part after the selector kind, e.g.
/// `path:/usr/bin/web`), except `spiffe_id` selectors, whose value is a
/// SPIFFE ID and may take [`MAX_SPIFFE_ID_BYTES`].
pub const MAX_SELECTOR_VALUE_BYTES: usize = 1024;

/// Most DNS names (X.509 DNS SANs) per entry.
pub const MAX_DNS_NAMES_PER_ENTRY: usize = 64;

/// Longest DNS name (RFC 1035 section 2.3.4, in text form without the
/// trailing dot).
pub const MAX_DNS_NAME_BYTES: usize = 253;

/// Longest label of a DNS name (RFC 1035 section 2.3.4).
pub const MAX_DNS_LABEL_BYTES: usize = 63;

/// Most trust domains in an entry's `federates_with`.
pub const MAX_FEDERATES_WITH_PER_ENTRY: usize = 64;

/// Longest hint (SPIFFE Workload API: hints are short, operator-chosen names).
pub const MAX_HINT_BYTES: usize = 1024;

/// Longest `x509_svid_ttl` and `jwt_svid_ttl`: one year, in seconds. The CA
/// further caps every SVID at its own expiry (`ca_ttl`), so this only refuses
/// values that cannot mean anything.
pub const MAX_SVID_TTL_SECS: i64 = 365 * 24 * 3600;

/// Longest join token TTL: one year, in seconds.
pub const MAX_JOIN_TOKEN_TTL_SECS: i64 = 365 * 24 * 3600;

/// Latest `expires_at` of an entry: 9999-12-31T23:59:59Z in unix seconds,
/// the last instant X.509 (RFC 5280 GeneralizedTime) and most clients can
/// represent.
pub const MAX_EXPIRES_AT: i64 = 253_402_300_799;

/// Longest entry ID an RPC may name. Sigil's IDs are 36-byte UUIDs; this is
/// SPIRE's limit on custom entry IDs, so IDs copied from SPIRE fit.
pub const MAX_ENTRY_ID_BYTES: usize = 255;

/// How long a client on the agent port has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client on the agent port has, after TLS, to send the HTTP/2
/// connection preface. hyper and h2 set no such limit.
pub const HTTP2_PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the agent API pings an HTTP/2 connection, idle or not.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a ping may go unanswered before the connection is closed, so a
/// peer that vanished or stopped reading does not hold it open.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const HTTP2_PREFACE_LEN: usize = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();

/// A server-side stream whose reads fail with `TimedOut` once `timeout` has
/// passed without the first [`HTTP2_PREFACE_LEN`] bytes arriving. h2 waits
/// for the preface with no timer, and hyper's keep-alive pings only start
/// once it has arrived, so without this a client that completes TLS and then
/// sends nothing (or part of the preface) holds its connection forever.
/// Whether the bytes are a valid preface is left to h2.
pub struct PrefaceDeadline<S> {
    inner: S,
    received: usize,
    /// `None` once the preface is in.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> std::fmt::Debug for PrefaceDeadline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefaceDeadline")
            .field("received", &self.received)
            .field("waiting", &self.deadline.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> PrefaceDeadline<S> {
    /// Starts the clock now. Needs a tokio runtime.
    pub fn new(inner: S, timeout: Duration) -> Self {
        PrefaceDeadline {
            inner,
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return result;
        };
        match result {
            Poll::Ready(Ok(())) => {
                this.received += buf.filled().len() - before;
                if this.received >= HTTP2_PREFACE_LEN {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            // Polling the timer registers the waker, so a silent client is
            // woken up and cut at the deadline.
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 connection preface in time",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Keeps the inner stream's connection info (the TLS peer certificates the
/// agent API authenticates agents by).
impl<S: Connected> Connected for PrefaceDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn silence_and_partial_prefaces_time_out() {
        for sent in [&PREFACE[..0], &PREFACE[..10], &PREFACE[..PREFACE.len() - 1]] {
            let (mut client, server) = tokio::io::duplex(1024);
            let started = tokio::time::Instant::now();
            let mut server = PrefaceDeadline::new(server, SHORT);
            client.write_all(sent).await.unwrap();
            let mut buf = vec![0u8; 64];
            let mut got = 0;
            let error = loop {
                match server.read(&mut buf).await {
                    Ok(n) => got += n,
                    Err(e) => break e,
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert_eq!(got, sent.len());
            assert!(started.elapsed() >= SHORT);
        }
    }

    #[tokio::test]
    async fn a_timely_preface_lifts_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = PrefaceDeadline::new(server, SHORT);
        client.write_all(PREFACE).await.unwrap();
        let mut buf = vec![0u8; PREFACE.len()];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, PREFACE);
        // After the deadline, an idle connection still reads and writes.
        tokio::time::sleep(SHORT * 2).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
        server.write_all(b"y").await.unwrap();
        client.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"y");
    }
}
