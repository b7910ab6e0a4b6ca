//! Fetching the bootstrap trust bundle from an HTTPS URL, authenticated by the
//! system's Web PKI roots (which honour `SSL_CERT_FILE`). The body is a SPIFFE
//! bundle (JWK Set) or PEM CA certificates, as a bundle file would be.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The largest bundle accepted.
const MAX_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why the bundle could not be fetched; every variant names the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{url:?} is not a URL: {source}")]
    NotUrl {
        url: String,
        source: hyper::http::uri::InvalidUri,
    },
    #[error("{url:?} must be an https URL")]
    NotHttps { url: String },
    #[error("no system root certificates: {0}")]
    NoRoots(#[source] std::io::Error),
    #[error("{url}: timed out after {}s", TIMEOUT.as_secs())]
    TimedOut { url: String },
    #[error("{url}: {}", crate::error_chain(.source))]
    Request {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
    #[error("{url}: the body could not be read (at most {MAX_BYTES} bytes): {source}")]
    Body {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Fetches `url` (https only) and returns its body.
pub async fn fetch(url: &str) -> Result<Vec<u8>, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(|source| FetchError::NotUrl {
        url: url.to_owned(),
        source,
    })?;
    if uri.scheme_str() != Some("https") {
        return Err(FetchError::NotHttps {
            url: url.to_owned(),
        });
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(FetchError::NoRoots)?
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let timed_out = || FetchError::TimedOut {
        url: url.to_owned(),
    };
    let response = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| FetchError::Request {
            url: url.to_owned(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    let body = tokio::time::timeout(
        TIMEOUT,
        Limited::new(response.into_body(), MAX_BYTES).collect(),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|source| FetchError::Body {
        url: url.to_owned(),
        source,
    })?;
    Ok(body.to_bytes().to_vec())
}
