//! The bundle endpoint client (SPIFFE_Federation.md sections 5.1, 5.2.1.4
//! and 5.2.2.4): fetches another trust domain's bundle from its endpoint
//! URL, authenticating the server by the endpoint's profile.
//!
//! - `https_web`: the server certificate must chain to a Web PKI root the
//!   client trusts and name the URL's host (RFC 6125, checked by rustls).
//! - `https_spiffe`: the server certificate must be an X509-SVID of the
//!   configured endpoint SPIFFE ID ([`super::svid_verifier`]).
//!
//! Redirects are followed (sections 5.2.1.4, 7.5), at most
//! [`MAX_REDIRECTS`], only to valid bundle endpoint URLs, with the same
//! checks; the target is never remembered. A whole fetch takes at most
//! [`FETCH_TIMEOUT`] and a bundle at most [`MAX_BUNDLE_BYTES`]. Errors name
//! the URL and quote at most a short prefix of what the server sent.

use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use tokio::net::TcpStream;
use url::{Host, Position, Url};
use workload_api::bundle::BundleError;
use workload_api::display::{error_chain, shown};
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::Bundle;

use super::svid_verifier::{refusal, SvidRefused, SvidVerifier};
use crate::crypto_provider::provider;

/// The largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// The longest a whole fetch, redirects included, may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most redirects followed in one fetch.
pub const MAX_REDIRECTS: usize = 5;
/// The longest endpoint URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// How much of an error response's body an error quotes, at most.
const ERROR_BODY_BYTES: usize = 256;

/// How the endpoint is authenticated (section 5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    HttpsWeb,
    HttpsSpiffe { endpoint_id: SpiffeId },
}

/// What a client must know about an endpoint before fetching (section 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointParams {
    /// The trust domain the fetched bundle is for.
    pub trust_domain: TrustDomain,
    pub url: String,
    pub profile: Profile,
}

#[derive(Debug, Clone)]
enum Trust {
    Web(Arc<RootCertStore>),
    Spiffe(Bundle),
}

/// What authenticates the endpoint: Web PKI roots for `https_web`; for
/// `https_spiffe` the bundle of the endpoint SPIFFE ID's trust domain.
#[derive(Debug, Clone)]
pub struct FetchTrust(Trust);

impl FetchTrust {
    /// `https_web` endpoints whose certificates chain to `roots`.
    pub fn web(roots: RootCertStore) -> Self {
        FetchTrust(Trust::Web(Arc::new(roots)))
    }

    /// `https_web` endpoints trusted by the system: its root store, or the
    /// file `SSL_CERT_FILE` (or directory `SSL_CERT_DIR`) names.
    pub fn system() -> Result<Self, FetchError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            return Err(FetchError::NoRoots {
                reason: if reasons.is_empty() {
                    "none found".into()
                } else {
                    reasons.join("; ")
                },
            });
        }
        Ok(FetchTrust::web(roots))
    }

    /// `https_spiffe` endpoints with SVIDs of `bundle`'s trust domain.
    pub fn spiffe(bundle: Bundle) -> Self {
        FetchTrust(Trust::Spiffe(bundle))
    }
}

/// A fetched bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bundle: Bundle,
    /// The body as received.
    pub json: String,
    /// `spiffe_sequence`, when the bundle has one.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, when the bundle has one.
    pub refresh_hint: Option<Duration>,
}

/// Why a URL is not a bundle endpoint URL (sections 5.2.1.1, 5.2.2.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    #[error("{url:?} is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("{url:?} is longer than {MAX_URL_BYTES} bytes")]
    TooLong { url: String },
    #[error("{url:?} is not an https URL")]
    NotHttps { url: String },
    #[error("{url:?} carries userinfo, which a bundle endpoint URL must not")]
    Userinfo { url: String },
    #[error("{url:?} has no host")]
    NoHost { url: String },
}

/// Why a bundle could not be fetched. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("bundle endpoint URL {0}")]
    Url(#[from] UrlError),
    #[error("{url}: profile {profile} needs {needs}")]
    TrustMismatch {
        url: String,
        profile: &'static str,
        needs: &'static str,
    },
    #[error(
        "{url}: the bundle given to authenticate {endpoint_id} is for trust domain {bundle_domain}"
    )]
    BundleDomain {
        url: String,
        endpoint_id: SpiffeId,
        bundle_domain: TrustDomain,
    },
    #[error("no Web PKI root certificates: {reason}")]
    NoRoots { reason: String },
    #[error("{url}: no bundle within {}s", FETCH_TIMEOUT.as_secs())]
    TimedOut { url: String },
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url}: {source}")]
    Refused {
        url: String,
        source: Box<SvidRefused>,
    },
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url}: HTTP: {reason}")]
    Http { url: String, reason: String },
    /// `body` is the start of the answer, already escaped.
    #[error("{url}: HTTP {status}: \"{body}\"")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url}: the bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: redirect refused: {reason}")]
    BadRedirect { url: String, reason: UrlError },
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    #[error("{url}: the bundle is not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: not a SPIFFE bundle: {source}")]
    Bundle { url: String, source: BundleError },
}

/// `url` with any userinfo masked, for error messages: it may hold a password.
fn masked(url: &str) -> String {
    let masked = match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    shown(&masked)
}

/// Checks a parsed URL against the bundle endpoint URL rules.
fn check_parsed(url: &Url, text: &str) -> Result<(), UrlError> {
    if url.scheme() != "https" {
        return Err(UrlError::NotHttps { url: masked(text) });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo { url: masked(text) });
    }
    if url.host().is_none() {
        return Err(UrlError::NoHost { url: masked(text) });
    }
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong { url: masked(text) });
    }
    Ok(())
}

fn parse_url(text: &str) -> Result<Url, UrlError> {
    if text.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong { url: masked(text) });
    }
    let url = Url::parse(text).map_err(|e| UrlError::NotUrl {
        url: masked(text),
        reason: e.to_string(),
    })?;
    check_parsed(&url, text)?;
    Ok(url)
}

/// Checks that `url` is a valid bundle endpoint URL: https, a host, no
/// userinfo (sections 5.2.1.1 and 5.2.2.1).
pub fn check_url(url: &str) -> Result<(), UrlError> {
    parse_url(url).map(|_| ())
}

/// Where a redirect from `from` to `location` leads, if it is a valid
/// bundle endpoint URL; a relative Location is resolved against `from`.
fn redirect_target(from: &Url, location: &str) -> Result<Url, UrlError> {
    let target = from.join(location).map_err(|e| UrlError::NotUrl {
        url: masked(location),
        reason: e.to_string(),
    })?;
    check_parsed(&target, target.as_str())?;
    Ok(target)
}

/// The TLS client configuration for the profile, if `trust` fits it.
fn client_config(params: &EndpointParams, trust: &FetchTrust) -> Result<ClientConfig, FetchError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls {
            url: params.url.clone(),
            reason: e.to_string(),
        })?;
    let mut config = match (&params.profile, &trust.0) {
        (Profile::HttpsWeb, Trust::Web(roots)) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        (Profile::HttpsSpiffe { endpoint_id }, Trust::Spiffe(bundle)) => {
            if bundle.trust_domain() != endpoint_id.trust_domain() {
                return Err(FetchError::BundleDomain {
                    url: params.url.clone(),
                    endpoint_id: endpoint_id.clone(),
                    bundle_domain: bundle.trust_domain().clone(),
                });
            }
            let verifier = SvidVerifier::new(endpoint_id.clone(), bundle.clone(), provider());
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        (Profile::HttpsWeb, Trust::Spiffe(_)) => {
            return Err(FetchError::TrustMismatch {
                url: params.url.clone(),
                profile: "https_web",
                needs: "Web PKI roots, not a SPIFFE bundle",
            })
        }
        (Profile::HttpsSpiffe { .. }, Trust::Web(_)) => {
            return Err(FetchError::TrustMismatch {
                url: params.url.clone(),
                profile: "https_spiffe",
                needs: "the bundle of the endpoint SPIFFE ID's trust domain, not Web PKI roots",
            })
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Fetches the bundle of `params.trust_domain` from its endpoint.
pub async fn fetch(params: &EndpointParams, trust: &FetchTrust) -> Result<Fetched, FetchError> {
    let url = parse_url(&params.url)?;
    let tls = Arc::new(client_config(params, trust)?);
    tokio::time::timeout(FETCH_TIMEOUT, follow(url, tls, &params.trust_domain))
        .await
        .map_err(|_| FetchError::TimedOut {
            url: params.url.clone(),
        })?
}

/// What one request brought.
enum Answer {
    Body(Vec<u8>),
    Redirect(String),
}

async fn follow(
    mut url: Url,
    tls: Arc<ClientConfig>,
    trust_domain: &TrustDomain,
) -> Result<Fetched, FetchError> {
    let first = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        match get(&url, tls.clone()).await? {
            Answer::Body(body) => return parse(url.as_str(), trust_domain, body),
            Answer::Redirect(location) => {
                url =
                    redirect_target(&url, &location).map_err(|reason| FetchError::BadRedirect {
                        url: url.to_string(),
                        reason,
                    })?;
            }
        }
    }
    Err(FetchError::TooManyRedirects { url: first })
}

/// One GET on a fresh connection.
async fn get(url: &Url, tls: Arc<ClientConfig>) -> Result<Answer, FetchError> {
    let shown_url = url.to_string();
    let host = url.host().ok_or_else(|| UrlError::NoHost {
        url: shown_url.clone(),
    })?;
    let port = url.port_or_known_default().unwrap_or(443);
    let connect_error = |reason: String| FetchError::Connect {
        url: shown_url.clone(),
        reason,
    };
    let (tcp, server_name) = match host {
        Host::Domain(name) => (
            TcpStream::connect((name, port)).await,
            ServerName::try_from(name.to_owned())
                .map_err(|e| connect_error(format!("host {name:?}: {e}")))?,
        ),
        Host::Ipv4(ip) => (
            TcpStream::connect((ip, port)).await,
            ServerName::IpAddress(IpAddr::V4(ip).into()),
        ),
        Host::Ipv6(ip) => (
            TcpStream::connect((ip, port)).await,
            ServerName::IpAddress(IpAddr::V6(ip).into()),
        ),
    };
    let tcp = tcp.map_err(|e| connect_error(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| match refusal(&e) {
            Some(source) => FetchError::Refused {
                url: shown_url.clone(),
                source: Box::new(source),
            },
            None => FetchError::Tls {
                url: shown_url.clone(),
                reason: error_chain(&e),
            },
        })?;
    let http_error = |e: hyper::Error| FetchError::Http {
        url: shown_url.clone(),
        reason: error_chain(&e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let authority = &url[Position::BeforeHost..Position::AfterPort];
    let request = Request::get(&url[Position::BeforePath..Position::AfterQuery])
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http {
            url: shown_url.clone(),
            reason: e.to_string(),
        })?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(http_error)?;
        read(&shown_url, response).await
    };
    let mut exchange = pin!(exchange);
    let mut conn = pin!(conn);
    tokio::select! {
        answer = &mut exchange => answer,
        closed = &mut conn => match closed {
            // A server that closes after answering: the answer is in hand.
            Ok(()) => exchange.await,
            Err(error) => Err(http_error(error)),
        },
    }
}

/// Reads a response: a redirect's Location, a 200's bounded body, or an
/// error quoting the start of any other answer.
async fn read(url: &str, response: Response<Incoming>) -> Result<Answer, FetchError> {
    let status = response.status();
    let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
    if redirect {
        if let Some(location) = response.headers().get(header::LOCATION) {
            let location = location.to_str().map_err(|_| FetchError::BadRedirect {
                url: url.to_owned(),
                reason: UrlError::NotUrl {
                    url: shown(&String::from_utf8_lossy(location.as_bytes())),
                    reason: "not visible ASCII".into(),
                },
            })?;
            return Ok(Answer::Redirect(location.to_owned()));
        }
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status,
            body: error_prefix(response.into_body()).await,
        });
    }
    if let Some(length) = response.headers().get(header::CONTENT_LENGTH) {
        if length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l > MAX_BUNDLE_BYTES as u64)
        {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
    }
    let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge {
                    url: url.to_owned(),
                }
            } else {
                FetchError::Http {
                    url: url.to_owned(),
                    reason: error_chain(&*error),
                }
            }
        })?;
    Ok(Answer::Body(body.to_bytes().to_vec()))
}

/// The start of an error response's body, quoted short; empty if it cannot
/// be read.
async fn error_prefix(mut body: Incoming) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < ERROR_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    prefix.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    prefix.truncate(ERROR_BODY_BYTES);
    shown(&String::from_utf8_lossy(&prefix))
}

/// The top-level fields `Bundle` reads without telling absent from zero.
#[derive(Deserialize)]
struct Sequence {
    spiffe_sequence: Option<u64>,
}

fn parse(url: &str, trust_domain: &TrustDomain, body: Vec<u8>) -> Result<Fetched, FetchError> {
    let json = String::from_utf8(body).map_err(|_| FetchError::NotUtf8 {
        url: url.to_owned(),
    })?;
    let bundle =
        Bundle::from_jwks_json(trust_domain.clone(), json.as_bytes()).map_err(|source| {
            FetchError::Bundle {
                url: url.to_owned(),
                source,
            }
        })?;
    let sequence = serde_json::from_str::<Sequence>(&json)
        .ok()
        .and_then(|s| s.spiffe_sequence);
    let refresh_hint = bundle.refresh_hint_secs().map(Duration::from_secs);
    Ok(Fetched {
        bundle,
        json,
        sequence,
        refresh_hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_endpoint_urls_are_https_without_userinfo() {
        check_url("https://example.org/bundle.json").unwrap();
        check_url("https://127.0.0.1:8443/").unwrap();
        check_url("https://[::1]:8443/td?x=1#f").unwrap();
        let refused = |url: &str| check_url(url).unwrap_err();
        assert!(matches!(
            refused("http://example.org/"),
            UrlError::NotHttps { .. }
        ));
        assert!(matches!(refused("example.org/b"), UrlError::NotUrl { .. }));
        assert!(matches!(refused("https://"), UrlError::NotUrl { .. }));
        let long = format!("https://example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(refused(&long), UrlError::TooLong { .. }));
        for url in [
            "https://user@example.org/",
            "https://user:hunter2@example.org/",
            "https://:hunter2@example.org/",
        ] {
            let error = refused(url);
            assert!(matches!(error, UrlError::Userinfo { .. }), "{url}");
            let text = error.to_string();
            assert!(
                !text.contains("hunter2") && !text.contains("user@") && !text.contains("user:"),
                "{text}"
            );
        }
    }

    #[test]
    fn redirects_resolve_relative_locations_and_keep_the_rules() {
        let from = Url::parse("https://a.example/x/bundle.json").unwrap();
        let target = |location: &str| redirect_target(&from, location).map(|u| u.to_string());
        assert_eq!(target("/b").unwrap(), "https://a.example/b");
        assert_eq!(
            target("other.json").unwrap(),
            "https://a.example/x/other.json"
        );
        assert_eq!(target("../up").unwrap(), "https://a.example/up");
        assert_eq!(target("//b.example/c").unwrap(), "https://b.example/c");
        assert_eq!(
            target("https://cdn.example/td").unwrap(),
            "https://cdn.example/td"
        );
        assert!(matches!(
            target("http://a.example/b"),
            Err(UrlError::NotHttps { .. })
        ));
        assert!(matches!(
            target("https://u:p@a.example/b"),
            Err(UrlError::Userinfo { .. })
        ));
    }

    #[test]
    fn absent_and_present_sequences_are_told_apart() {
        let td = TrustDomain::new("example.org").unwrap();
        let without = parse("u", &td, br#"{"keys": []}"#.to_vec()).unwrap();
        assert_eq!(without.sequence, None);
        assert_eq!(without.refresh_hint, None);
        let with = parse(
            "u",
            &td,
            br#"{"keys": [], "spiffe_sequence": 0, "spiffe_refresh_hint": 60}"#.to_vec(),
        )
        .unwrap();
        assert_eq!(with.sequence, Some(0));
        assert_eq!(with.refresh_hint, Some(Duration::from_secs(60)));
        let error = parse("https://e/b", &td, vec![0xff, 0xfe]).unwrap_err();
        assert!(matches!(error, FetchError::NotUtf8 { .. }));
        let error = parse("https://e/b", &td, b"{}".to_vec()).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("https://e/b: not a SPIFFE bundle"));
    }

    #[test]
    fn trust_must_fit_the_profile() {
        let td = TrustDomain::new("example.org").unwrap();
        let endpoint_id = SpiffeId::from_segments(td.clone(), &["sigil", "issuer"]).unwrap();
        let spiffe = EndpointParams {
            trust_domain: td.clone(),
            url: "https://e/".into(),
            profile: Profile::HttpsSpiffe { endpoint_id },
        };
        let web = EndpointParams {
            profile: Profile::HttpsWeb,
            ..spiffe.clone()
        };
        let roots = FetchTrust::web(RootCertStore::empty());
        let bundle = FetchTrust::spiffe(Bundle::new(td));
        let other = FetchTrust::spiffe(Bundle::new(TrustDomain::new("other.org").unwrap()));
        client_config(&spiffe, &bundle).unwrap();
        client_config(&web, &roots).unwrap();
        assert!(matches!(
            client_config(&spiffe, &roots),
            Err(FetchError::TrustMismatch { .. })
        ));
        assert!(matches!(
            client_config(&web, &bundle),
            Err(FetchError::TrustMismatch { .. })
        ));
        let error = client_config(&spiffe, &other).unwrap_err().to_string();
        assert!(
            error.contains("spiffe://example.org/sigil/issuer") && error.contains("other.org"),
            "{error}"
        );
    }
}
