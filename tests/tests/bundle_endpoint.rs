//! The SPIFFE Federation bundle endpoint (SPIFFE_Federation.md section 5):
//! real issuers serving over real TLS, fetched with Sigil's client (both
//! profiles, redirects, bounds) and, for `https_web`, with curl.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use sigil_issuer::clock::SystemClock;
use sigil_issuer::config::federation::{BundleEndpoint, BundleEndpointProfile};
use sigil_issuer::federation::fetch::{
    fetch, EndpointParams, FetchError, FetchTrust, Fetched, Profile, MAX_REDIRECTS,
};
use sigil_issuer::federation::svid_verifier::{SvidRefused, SvidVerifier};
use sigil_tests::{TestIssuer, TRUST_DOMAIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workload_api::id::{SpiffeId, TrustDomain};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

fn issuer_id() -> SpiffeId {
    SpiffeId::from_segments(trust_domain(), &["sigil", "issuer"]).unwrap()
}

fn endpoint_url(issuer: &TestIssuer, host: &str, path: &str) -> String {
    let port = issuer.running.bundle_endpoint_address.unwrap().port();
    format!("https://{host}:{port}{path}")
}

async fn start_issuer(path: &str, profile: BundleEndpointProfile) -> TestIssuer {
    let path = path.to_owned();
    TestIssuer::start_with(Arc::new(SystemClock), move |config| {
        config.bundle_endpoint = Some(BundleEndpoint {
            address: "127.0.0.1:0".parse().unwrap(),
            path,
            profile,
        });
    })
    .await
}

fn spiffe_params(url: String, endpoint_id: SpiffeId) -> EndpointParams {
    EndpointParams {
        trust_domain: trust_domain(),
        url,
        profile: Profile::HttpsSpiffe { endpoint_id },
    }
}

fn web_params(url: String) -> EndpointParams {
    EndpointParams {
        trust_domain: trust_domain(),
        url,
        profile: Profile::HttpsWeb,
    }
}

fn assert_is_issuers(fetched: &Fetched, issuer: &TestIssuer) {
    let bundle = issuer.bundle();
    assert_eq!(fetched.bundle, bundle);
    assert!(!bundle.x509_authorities().is_empty());
    assert_eq!(fetched.sequence, Some(bundle.sequence()));
    assert_eq!(fetched.refresh_hint, Some(Duration::from_secs(300)));
    let json: serde_json::Value = serde_json::from_str(&fetched.json).unwrap();
    assert_eq!(json["spiffe_sequence"], bundle.sequence());
}

/// A test Web PKI CA: issues serving certificates with chosen serials.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

/// A serving certificate and its key, PEM, and the leaf's DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { params, key, cert }
    }

    /// A certificate for localhost and 127.0.0.1.
    fn issue(&self, serial: u8) -> Issued {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
        let cert = params.signed_by(&key, &issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .unwrap();
        roots
    }
}

/// Writes a certificate and key the way a renewal would: each file
/// replaced whole by a rename.
fn install(issued: &Issued, cert_file: &Path, key_file: &Path) {
    for (path, text) in [(key_file, &issued.key_pem), (cert_file, &issued.cert_pem)] {
        let temporary = path.with_extension("new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, path).unwrap();
    }
}

/// Records whether the server asked for a client certificate.
#[derive(Debug, Default)]
struct AskedForClientCert(AtomicBool);

impl ResolvesClientCert for AskedForClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn spiffe_client(bundle: workload_api::Bundle, asked: Arc<AskedForClientCert>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SvidVerifier::new(
            issuer_id(),
            bundle,
            provider(),
        )))
        .with_client_cert_resolver(asked)
}

fn web_client(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One HTTP/1.1 request over TLS: the status code, the headers (lower
/// case) and the body. Also returns the server's leaf certificate.
async fn raw_request(
    address: SocketAddr,
    config: ClientConfig,
    method: &str,
    path: &str,
) -> (u16, String, String, Vec<u8>) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    // A server that closes without close_notify still sent its answer.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_lowercase(), body.to_owned(), leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_spiffe_serves_the_bundle_under_the_issuer_svid() {
    let issuer = start_issuer("/bundle.json", BundleEndpointProfile::HttpsSpiffe).await;
    let url = endpoint_url(&issuer, "127.0.0.1", "/bundle.json");

    let fetched = fetch(
        &spiffe_params(url.clone(), issuer_id()),
        &FetchTrust::spiffe(issuer.bundle()),
    )
    .await
    .unwrap();
    assert_is_issuers(&fetched, &issuer);

    // The SPIFFE ID is the identity: no host name is checked, so another
    // name for the same server is as good.
    let by_name = endpoint_url(&issuer, "localhost", "/bundle.json");
    fetch(
        &spiffe_params(by_name, issuer_id()),
        &FetchTrust::spiffe(issuer.bundle()),
    )
    .await
    .unwrap();

    // A client expecting another SPIFFE ID refuses the server, naming both.
    let expected = SpiffeId::from_segments(trust_domain(), &["bundle-server"]).unwrap();
    let error = fetch(
        &spiffe_params(url.clone(), expected.clone()),
        &FetchTrust::spiffe(issuer.bundle()),
    )
    .await
    .unwrap_err();
    let FetchError::Refused { source, .. } = &error else {
        panic!("{error}")
    };
    match source.as_ref() {
        SvidRefused::WrongId { presented, .. } => assert_eq!(presented, &issuer_id()),
        other => panic!("{other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("spiffe://example.org/sigil/issuer")
            && text.contains("spiffe://example.org/bundle-server")
            && text.contains(&url),
        "{text}"
    );

    // A bundle of another CA of the same name authenticates nothing here.
    let stranger = TestIssuer::start().await;
    let error = fetch(
        &spiffe_params(url.clone(), issuer_id()),
        &FetchTrust::spiffe(stranger.bundle()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, FetchError::Refused { source, .. }
            if matches!(**source, SvidRefused::Invalid { .. })),
        "{error}"
    );
    assert!(
        error.to_string().contains("not a valid X509-SVID"),
        "{error}"
    );
    stranger.running.shutdown().await;

    // Nothing but GET on the path; no client certificate is asked for.
    let address = issuer.running.bundle_endpoint_address.unwrap();
    let asked = Arc::new(AskedForClientCert::default());
    let client = || spiffe_client(issuer.bundle(), asked.clone());
    let (status, head, body, _) = raw_request(address, client(), "GET", "/bundle.json").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(
        workload_api::Bundle::from_jwks_json(trust_domain(), body.as_bytes()).unwrap(),
        issuer.bundle()
    );
    let (status, _, _, _) = raw_request(address, client(), "GET", "/other.json").await;
    assert_eq!(status, 404);
    let (status, head, _, _) = raw_request(address, client(), "POST", "/bundle.json").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    assert!(!asked.0.load(Ordering::SeqCst));

    // Sigil's client names the status of a wrong path.
    let error = fetch(
        &spiffe_params(
            endpoint_url(&issuer, "127.0.0.1", "/other.json"),
            issuer_id(),
        ),
        &FetchTrust::spiffe(issuer.bundle()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, FetchError::Status { .. }) && error.to_string().contains("404"),
        "{error}"
    );
    issuer.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_web_serves_its_files_and_picks_up_new_ones() {
    let ca = TestCa::new("Test Web PKI CA");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let first = ca.issue(1);
    install(&first, &cert_file, &key_file);
    let issuer = start_issuer(
        "/",
        BundleEndpointProfile::HttpsWeb {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        },
    )
    .await;
    let address = issuer.running.bundle_endpoint_address.unwrap();

    for host in ["127.0.0.1", "localhost"] {
        let fetched = fetch(
            &web_params(endpoint_url(&issuer, host, "/")),
            &FetchTrust::web(ca.roots()),
        )
        .await
        .unwrap();
        assert_is_issuers(&fetched, &issuer);
    }

    // Other roots do not authenticate the server.
    let error = fetch(
        &web_params(endpoint_url(&issuer, "localhost", "/")),
        &FetchTrust::web(TestCa::new("Another CA").roots()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, FetchError::Tls { .. }) && error.to_string().contains("UnknownIssuer"),
        "{error}"
    );

    // An independent client: curl, checking the name against the CA.
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let url = endpoint_url(&issuer, "localhost", "/");
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        sigil_tests::run(
            std::process::Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
                .arg(&ca_file)
                .args(["--write-out", "\n%{http_code} %{content_type}", &url]),
        )
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let (body, trailer) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(trailer, "200 application/json");
    assert_eq!(
        workload_api::Bundle::from_jwks_json(trust_domain(), body.as_bytes()).unwrap(),
        issuer.bundle()
    );

    // A renewed certificate is served without a restart.
    let (_, _, _, leaf) = raw_request(address, web_client(ca.roots()), "GET", "/").await;
    assert_eq!(leaf, first.der);
    let second = ca.issue(2);
    install(&second, &cert_file, &key_file);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _, leaf) = raw_request(address, web_client(ca.roots()), "GET", "/").await;
        assert_eq!(status, 200);
        if leaf == second.der {
            break;
        }
        assert_eq!(leaf, first.der);
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken replacement keeps the current certificate in service.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _, _, leaf) = raw_request(address, web_client(ca.roots()), "GET", "/").await;
    assert_eq!(leaf, second.der);
    issuer.running.shutdown().await;
}

/// What the fake endpoint answers to a request path: raw HTTP/1.1 bytes.
type Responder = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A TLS server presenting `identity` that answers each request by
/// `respond` and closes. Returns its address and a count of requests.
async fn fake_endpoint(
    identity: &Issued,
    respond: Arc<Responder>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let chain = vec![CertificateDer::from(identity.der.clone())];
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, respond, counter) = (acceptor.clone(), respond.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let _ = tls.write_all(&respond(&path)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (address, hits)
}

fn redirect(status: &str, location: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_within_the_rules() {
    use sigil_issuer::federation::fetch::MAX_BUNDLE_BYTES;
    let ca = TestCa::new("Test Web PKI CA");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    install(&ca.issue(1), &cert_file, &key_file);
    let issuer = start_issuer(
        "/td/bundle.json",
        BundleEndpointProfile::HttpsWeb {
            cert_file,
            key_file,
        },
    )
    .await;
    let real = endpoint_url(&issuer, "localhost", "/td/bundle.json");
    let respond: Arc<Responder> = Arc::new(move |path: &str| {
        match path {
        "/moved" => redirect("302 Found", &real),
        "/relative" => redirect("307 Temporary Redirect", "hop/next"),
        "/hop/next" => redirect("301 Moved Permanently", "/moved"),
        "/plain" => redirect("302 Found", "http://127.0.0.1:1/bundle.json"),
        "/userinfo" => redirect("302 Found", "https://user:secret@localhost/x"),
        "/loop" => redirect("302 Found", "/loop"),
        "/big" => {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                2 * MAX_BUNDLE_BYTES
            )
            .into_bytes();
            answer.resize(answer.len() + 2 * MAX_BUNDLE_BYTES, b' ');
            answer
        }
        "/big-unsized" => {
            // No length: the body runs until the connection closes.
            let mut answer =
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                    .to_vec();
            answer.resize(answer.len() + MAX_BUNDLE_BYTES + 1, b' ');
            answer
        }
        _ => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\nConnection: close\r\n\r\ntry later\r\n"
            .to_vec(),
    }
    });
    let (fake, hits) = fake_endpoint(&ca.issue(3), respond).await;
    let at = |path: &str| web_params(format!("https://localhost:{}{path}", fake.port()));
    let trust = FetchTrust::web(ca.roots());

    // Absolute and relative Locations lead to the real endpoint.
    let fetched = fetch(&at("/moved"), &trust).await.unwrap();
    assert_is_issuers(&fetched, &issuer);
    let fetched = fetch(&at("/relative"), &trust).await.unwrap();
    assert_is_issuers(&fetched, &issuer);

    // Targets that are not bundle endpoint URLs are refused.
    let error = fetch(&at("/plain"), &trust).await.unwrap_err();
    assert!(matches!(error, FetchError::BadRedirect { .. }), "{error}");
    assert!(error.to_string().contains("is not an https URL"), "{error}");
    let error = fetch(&at("/userinfo"), &trust).await.unwrap_err();
    assert!(
        error.to_string().contains("userinfo") && !error.to_string().contains("secret"),
        "{error}"
    );

    // A loop stops at the limit.
    let before = hits.load(Ordering::SeqCst);
    let error = fetch(&at("/loop"), &trust).await.unwrap_err();
    assert!(
        matches!(error, FetchError::TooManyRedirects { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("more than 5 redirects") && error.to_string().contains("/loop"),
        "{error}"
    );
    assert_eq!(hits.load(Ordering::SeqCst) - before, MAX_REDIRECTS + 1);

    // Bounds: size, declared or not, and status.
    for path in ["/big", "/big-unsized"] {
        let error = fetch(&at(path), &trust).await.unwrap_err();
        assert!(
            matches!(error, FetchError::TooLarge { .. }),
            "{path}: {error}"
        );
        assert!(error.to_string().contains("1048576 bytes"), "{error}");
    }
    let error = fetch(&at("/gone"), &trust).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "https://localhost:{}/gone: HTTP 503 Service Unavailable: \"try later\\r\\n\"",
            fake.port()
        )
    );
    issuer.running.shutdown().await;
}
