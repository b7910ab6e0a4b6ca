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

/// Fetches `url` (https only) and returns its body.
pub async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must be an https URL"));
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no system root certificates: {e}"))?
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let response = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = tokio::time::timeout(
        TIMEOUT,
        Limited::new(response.into_body(), MAX_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("{url}: timed out"))?
    .map_err(|e| format!("{url}: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
