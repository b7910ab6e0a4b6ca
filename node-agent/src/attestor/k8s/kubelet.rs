//! The kubelet's read-only pod list over its authenticated port (10250):
//! HTTPS, the agent's service account token as the bearer token (the
//! kubelet checks it with a TokenReview and asks for `get` on
//! `nodes/proxy`), the answer bounded in size and time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use zeroize::Zeroizing;

use super::pods::PodList;
use super::token::{read_token, TokenError};

/// The largest pod list read: a node's pods with their full specs, with room
/// for the largest nodes.
pub const MAX_POD_LIST_BYTES: usize = 32 << 20;

/// Why the pod list could not be had. No variant holds the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{url}: no answer within {after:?}")]
    TimedOut { url: String, after: Duration },
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: the kubelet did not accept the service account token (HTTP 401)")]
    Unauthorized { url: String },
    #[error("{url}: the service account may not read the kubelet's pods (HTTP 403; it needs get on nodes/proxy)")]
    Forbidden { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the pod list is over {MAX_POD_LIST_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: the pod list could not be read: {reason}")]
    Body { url: String, reason: String },
    #[error("{url}: the answer is not a pod list: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// How the kubelet's serving certificate is checked.
#[derive(Clone)]
pub enum KubeletTrust {
    /// Verified against these CA certificates (DER), read from `path`.
    CaCertificates { path: PathBuf, ders: Vec<Vec<u8>> },
    /// Not verified: anyone on the path to the kubelet can answer as it and
    /// choose every pod's selectors.
    DangerousSkipVerification,
}

impl std::fmt::Debug for KubeletTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletTrust::CaCertificates { path, ders } => f
                .debug_struct("CaCertificates")
                .field("path", path)
                .field("certificates", &ders.len())
                .finish(),
            KubeletTrust::DangerousSkipVerification => f.write_str("DangerousSkipVerification"),
        }
    }
}

/// The CA certificates in PEM `text`, each one a trust anchor rustls accepts.
pub fn ca_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let ders = workload_api::pem::blocks(text, "CERTIFICATE");
    if ders.is_empty() {
        return Err("no PEM CERTIFICATE in the file".into());
    }
    let mut roots = RootCertStore::empty();
    for (index, der) in ders.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("certificate {}: {e}", index + 1))?;
    }
    Ok(ders)
}

/// A kubelet client: one connection pool, the token re-read for each request.
pub struct KubeletClient {
    pods_uri: hyper::Uri,
    token_path: PathBuf,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("pods_uri", &self.pods_uri)
            .field("token_path", &self.token_path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// A client for `GET <base>/pods`; `base` is `https://host:port`.
    pub fn new(
        base: &hyper::Uri,
        trust: &KubeletTrust,
        token_path: PathBuf,
        timeout: Duration,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let tls = match trust {
            KubeletTrust::CaCertificates { ders, .. } => {
                let mut roots = RootCertStore::empty();
                // Checked when the configuration was validated.
                roots.add_parsable_certificates(
                    ders.iter().map(|d| CertificateDer::from(d.as_slice())),
                );
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            KubeletTrust::DangerousSkipVerification => builder
                .dangerous()
                // Handshake signatures are still checked: the peer holds
                // the key of the certificate it showed, whoever that is.
                .with_custom_certificate_verifier(crate::issuer_client::any_certificate(provider))
                .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let pods_uri = format!("{}/pods", base.to_string().trim_end_matches('/'))
            .parse()
            .expect("a validated base URL with /pods is a URL");
        KubeletClient {
            pods_uri,
            token_path,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `GET /pods`, parsed.
    pub async fn pods(&self) -> Result<PodList, KubeletError> {
        let url = self.pods_uri.to_string();
        let token = read_token(&self.token_path).await?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.as_str()));
        let mut authorization =
            HeaderValue::from_str(&bearer).map_err(|_| TokenError::Invalid {
                path: self.token_path.clone(),
            })?;
        authorization.set_sensitive(true);
        let request = hyper::Request::get(self.pods_uri.clone())
            .header(AUTHORIZATION, authorization)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .expect("a GET with valid headers is a request");
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| KubeletError::Request {
                        url: url.clone(),
                        reason: crate::error_chain(&e),
                    })?;
            match response.status().as_u16() {
                200 => {}
                401 => return Err(KubeletError::Unauthorized { url: url.clone() }),
                403 => return Err(KubeletError::Forbidden { url: url.clone() }),
                status => {
                    return Err(KubeletError::Status {
                        url: url.clone(),
                        status,
                    })
                }
            }
            let declared = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_POD_LIST_BYTES as u64) {
                return Err(KubeletError::TooLarge { url: url.clone() });
            }
            Limited::new(response.into_body(), MAX_POD_LIST_BYTES)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        KubeletError::TooLarge { url: url.clone() }
                    } else {
                        KubeletError::Body {
                            url: url.clone(),
                            reason: crate::error_chain(e.as_ref()),
                        }
                    }
                })
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| KubeletError::TimedOut {
                url: url.clone(),
                after: self.timeout,
            })??;
        serde_json::from_slice(&body).map_err(|source| KubeletError::Json { url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_token_is_refused_without_being_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        // A token that cannot be a header value is refused without being shown.
        std::fs::write(&path, "s3cr3t\u{7f}x").unwrap();
        let client = KubeletClient::new(
            &"https://127.0.0.1:1".parse().unwrap(),
            &KubeletTrust::DangerousSkipVerification,
            path.clone(),
            Duration::from_secs(1),
        );
        let err = client.pods().await.unwrap_err();
        assert!(
            matches!(err, KubeletError::Token(TokenError::Invalid { .. })),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        assert!(ca_certificates("").is_err());
        let not_a_cert = workload_api::pem::encode("CERTIFICATE", b"nonsense");
        let err = ca_certificates(&not_a_cert).unwrap_err();
        assert!(err.starts_with("certificate 1:"), "{err}");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(ca_certificates(&ca.pem()).unwrap(), [ca.der().to_vec()]);
    }
}
