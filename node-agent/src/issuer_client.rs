//! The agent's connection to the issuer's agent API.
//!
//! The issuer is authenticated as the X509-SVID `spiffe://<td>/sigil/issuer`
//! chaining to the trust bundle, not by DNS name. Once attested, the agent
//! presents its own X509-SVID as the TLS client certificate.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use proto::issuer::agent_api_client::AgentApiClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use workload_api::id::SpiffeId;
use workload_api::{x509svid, Bundle};

use crate::failover::address::{AddressError, IssuerAddresses};
use crate::failover::{IssuerPool, Watched};

/// Why the issuer could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("issuer address: {0}")]
    Address(#[from] AddressError),
    #[error("connecting to the issuer at {address}: {source}")]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

/// The identity the agent presents: its SVID chain and PKCS#8 key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<Vec<u8>>,
    pub pkcs8: Arc<Vec<u8>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .field("pkcs8", &"[redacted]")
            .finish()
    }
}

/// The issuer's SPIFFE ID in a trust domain.
pub fn issuer_id(bundle: &Bundle) -> SpiffeId {
    SpiffeId::from_segments(bundle.trust_domain().clone(), &["sigil", "issuer"])
        .expect("static path is valid")
}

/// Accepts the issuer's certificate only if it is an X509-SVID for the
/// expected ID that chains to the bundle; with no bundle (insecure bootstrap),
/// accepts any certificate. Handshake signatures are always checked.
#[derive(Debug)]
struct IssuerVerifier {
    expect: Option<(Bundle, SpiffeId)>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IssuerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((bundle, expected)) = &self.expect else {
            return Ok(ServerCertVerified::assertion());
        };
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let leaf = x509svid::verify_chain(
            &chain,
            |td| (td == bundle.trust_domain()).then_some(bundle),
            now,
        )
        .map_err(|e| rejected(format!("issuer certificate: {e}")))?;
        if leaf.spiffe_id != *expected {
            return Err(rejected(format!(
                "issuer presented {}, expected {expected}",
                leaf.spiffe_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A verifier that takes any server certificate but still checks the
/// handshake signatures, so the peer holds the key of the certificate it
/// showed: the issuer's insecure bootstrap, the kubelet's dangerous skip.
pub(crate) fn any_certificate(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(IssuerVerifier {
        expect: None,
        provider,
    })
}

/// Why the issuer's certificate was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CertificateRejected(String);

fn rejected(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(CertificateRejected(reason)),
    )))
}

/// Why the issuer's certificate failed verification, when that is what
/// `error` (or anything that caused it) says. This is the one connection
/// failure that re-bootstrapping mends; refused or timed-out connections
/// are outages to wait out.
pub fn certificate_rejected(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        let tls = error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                    Some(other.0.to_string())
                }
                rustls::Error::InvalidCertificate(other) => Some(format!("{other:?}")),
                _ => None,
            };
        }
        current = error.source();
    }
    None
}

/// How the agent decides to trust the issuer's certificate.
#[derive(Debug, Clone, Copy)]
pub enum ServerTrust<'a> {
    /// The issuer's SVID must chain to this bundle.
    Bundle(&'a Bundle),
    /// Accept any certificate. Only for the first attestation, when the
    /// operator chose `insecure_bootstrap`; the bundle the issuer returns is
    /// trusted from then on.
    InsecureBootstrap,
}

/// Builds the TLS client configuration for talking to the issuer.
pub fn client_config(
    trust: ServerTrust<'_>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(IssuerVerifier {
        expect: match trust {
            ServerTrust::Bundle(bundle) => Some((bundle.clone(), issuer_id(bundle))),
            ServerTrust::InsecureBootstrap => None,
        },
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                identity
                    .chain
                    .iter()
                    .cloned()
                    .map(CertificateDer::from)
                    .collect(),
                PrivateKeyDer::Pkcs8(identity.pkcs8.as_slice().to_vec().into()),
            )
            .map_err(|e| ConnectError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A gRPC channel to the issuer's agent API at one of `pool`'s replicas,
/// trusting it by `bundle`. It connects on first use and reconnects by
/// itself, to another replica when the one in use fails, so an agent with a
/// stored SVID starts while the issuer is down.
pub fn connect_lazy(
    pool: &Arc<IssuerPool>,
    bundle: &Bundle,
    identity: Option<&ClientIdentity>,
) -> Result<AgentApiClient<Channel>, ConnectError> {
    let (endpoint, connector) = endpoint(pool.clone(), ServerTrust::Bundle(bundle), identity)?;
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(AgentApiClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

/// Opens a gRPC channel to the issuer's agent API at `address` (`host:port`),
/// trusting it by `bundle`.
pub async fn connect(
    address: impl std::fmt::Display,
    bundle: &Bundle,
    identity: Option<&ClientIdentity>,
) -> Result<AgentApiClient<Channel>, ConnectError> {
    connect_with(address, ServerTrust::Bundle(bundle), identity).await
}

/// Opens a gRPC channel to the issuer's agent API with an explicit trust
/// mode; `address` is one `host:port` or several, comma-separated.
pub async fn connect_with(
    address: impl std::fmt::Display,
    trust: ServerTrust<'_>,
    identity: Option<&ClientIdentity>,
) -> Result<AgentApiClient<Channel>, ConnectError> {
    let addresses: IssuerAddresses = address.to_string().parse()?;
    connect_through(&IssuerPool::new(addresses), trust, identity).await
}

/// Opens a gRPC channel to one of `pool`'s replicas now, waiting first if
/// the pool is backing off.
pub async fn connect_through(
    pool: &Arc<IssuerPool>,
    trust: ServerTrust<'_>,
    identity: Option<&ClientIdentity>,
) -> Result<AgentApiClient<Channel>, ConnectError> {
    let (endpoint, connector) = endpoint(pool.clone(), trust, identity)?;
    pool.ready().await;
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Transport {
            address: pool.addresses().to_string(),
            source,
        })?;
    Ok(AgentApiClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

/// The largest message the agent accepts from the issuer (entry snapshots
/// come in chunks well below it).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Dials the issuer: TCP, then TLS checked by the issuer verifier, to a
/// replica the pool picks.
#[derive(Clone)]
struct IssuerConnector {
    tls: tokio_rustls::TlsConnector,
    pool: Arc<IssuerPool>,
}

type Dialed = TokioIo<Watched<tokio_rustls::client::TlsStream<TcpStream>>>;

impl tower::Service<tonic::codegen::http::Uri> for IssuerConnector {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Dialed>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let pool = self.pool.clone();
        Box::pin(async move {
            let stream = pool
                .dial(|address| {
                    let tls = tls.clone();
                    async move {
                        let tcp = TcpStream::connect(address).await?;
                        tcp.set_nodelay(true)?;
                        // The name is not checked: the verifier checks the
                        // SPIFFE ID, so connecting by IP address is fine.
                        let name =
                            ServerName::try_from("sigil-issuer").expect("static name is valid");
                        tls.connect(name, tcp).await
                    }
                })
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The endpoint and the TLS connector for the issuer at `pool`'s replicas.
fn endpoint(
    pool: Arc<IssuerPool>,
    trust: ServerTrust<'_>,
    identity: Option<&ClientIdentity>,
) -> Result<(Endpoint, IssuerConnector), ConnectError> {
    let connector = IssuerConnector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(client_config(trust, identity)?)),
        pool,
    };
    let endpoint = Endpoint::from_shared("http://sigil-issuer".to_owned())
        .expect("static URI is valid")
        .connect_timeout(Duration::from_secs(10));
    Ok((endpoint, connector))
}
