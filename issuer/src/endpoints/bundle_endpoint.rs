//! The SPIFFE bundle endpoint server (SPIFFE_Federation.md sections 5.2.1.3
//! and 5.2.2.3): `GET <path>` answers this trust domain's current bundle,
//! a SPIFFE JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`, as
//! UTF-8 `application/json`. Other paths are 404 and other methods 405.
//!
//! Served over HTTPS (TLS 1.2 and 1.3, HTTP/1.1) with one of two profiles:
//! `https_web` presents a certificate from PEM files
//! ([`super::serving_cert`]); `https_spiffe` presents the issuer's own
//! X509-SVID, the one the agent API presents. A client certificate is never
//! requested: the bundle is public and clients must not need one.
//!
//! Connections are bounded: the TLS handshake and each request's headers
//! must arrive within their timeouts, and at most [`MAX_CONNECTIONS`] are
//! open at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::serving_cert::{CertificateError, ServingCertificate};
use super::tls::{provider, IssuerSvid};
use crate::config::federation::{BundleEndpoint, BundleEndpointProfile};
use crate::limits::TLS_HANDSHAKE_TIMEOUT;
use crate::state::IssuerState;

/// How long a client has to send a request's headers, on a new connection
/// or between requests on a kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections open at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 1024;

/// Why the bundle endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("bundle endpoint address {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("bundle endpoint certificate {0}")]
    Certificate(#[from] CertificateError),
    #[error("bundle endpoint TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound bundle endpoint, ready to serve.
#[derive(Debug)]
pub struct BundleEndpointServer {
    listener: TcpListener,
    address: SocketAddr,
    tls: Arc<ServerConfig>,
    path: Arc<str>,
    state: IssuerState,
}

/// The TLS configuration: no client authentication, the profile's certificate.
fn server_config(
    profile: &BundleEndpointProfile,
    svid: Arc<IssuerSvid>,
) -> Result<ServerConfig, EndpointError> {
    let certificate: Arc<dyn ResolvesServerCert> = match profile {
        BundleEndpointProfile::HttpsWeb {
            cert_file,
            key_file,
        } => Arc::new(ServingCertificate::load(cert_file, key_file)?),
        BundleEndpointProfile::HttpsSpiffe => svid,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl BundleEndpointServer {
    /// Loads the certificate and binds the address. `svid` is presented
    /// under `https_spiffe`.
    pub async fn bind(
        config: &BundleEndpoint,
        state: IssuerState,
        svid: Arc<IssuerSvid>,
    ) -> Result<Self, EndpointError> {
        let tls = server_config(&config.profile, svid)?;
        let failed = |source| EndpointError::Bind {
            address: config.address,
            source,
        };
        let listener = TcpListener::bind(config.address).await.map_err(failed)?;
        let address = listener.local_addr().map_err(failed)?;
        Ok(BundleEndpointServer {
            listener,
            address,
            tls: Arc::new(tls),
            path: config.path.as_str().into(),
            state,
        })
    }

    /// Where the endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` turns true, then lets open connections finish
    /// the request in hand.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let mut connections = JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "bundle endpoint accept failed");
                        // Out of file descriptors, most likely: let some close.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            while connections.try_join_next().is_some() {}
            if connections.len() >= MAX_CONNECTIONS {
                tracing::warn!(%peer, "bundle endpoint connection refused: {MAX_CONNECTIONS} open");
                continue;
            }
            let _ = tcp.set_nodelay(true);
            connections.spawn(connection(
                tcp,
                peer,
                self.tls.clone(),
                self.path.clone(),
                self.state.clone(),
                shutdown.clone(),
            ));
        }
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one connection: TLS, then HTTP/1.1 requests until the client
/// leaves, stalls or the endpoint shuts down.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerConfig>,
    path: Arc<str>,
    state: IssuerState,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bundle endpoint TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "bundle endpoint TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request| {
        let answer = answer(&state, &path, &request);
        async move { Ok::<_, Infallible>(answer) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "bundle endpoint connection ended");
    }
}

/// Returns once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to one request. The body is never read: a GET has none worth
/// reading, and anything else is refused.
fn answer(state: &IssuerState, path: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != path {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the bundle is served on the configured path only\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // The most up-to-date bundle (sections 5.2.1.3, 5.2.2.3); serde_json
    // writes UTF-8.
    let mut response = Response::new(Full::new(Bytes::from(
        state.ca.current_bundle_jwks().to_vec(),
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Keys rotate: caches must ask again rather than serve a stale bundle.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
