//! TLS for the agent API. The server presents its own X509-SVID
//! (`spiffe://<td>/sigil/issuer`) and asks for, but does not require, a client
//! certificate: attestation happens before an agent has one, and every other
//! RPC checks for it. The SVID ([`IssuerSvid`], also presented by the bundle
//! endpoint) is signed anew whenever the bundle changes or it passes half its
//! life; the configuration is rebuilt whenever the bundle changes, and each
//! new connection takes the latest of both. Client certificates get RFC 5280 path validation against the
//! local bundle (X509-SVID.md section 5.1); the agent API checks the leaf
//! (section 5.2).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use workload_api::id::SpiffeId;
use workload_api::Bundle;

use crate::ca::keys::{KeyError, KeyType, SigningKey};
use crate::ca::CaError;
use crate::csr::SubjectKey;
use crate::state::IssuerState;

pub use crate::crypto_provider::provider;

/// Why the agent API's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("server key: {0}")]
    Key(#[from] KeyError),
    #[error("server SVID {spiffe_id}: {source}")]
    Svid {
        spiffe_id: SpiffeId,
        source: CaError,
    },
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The SPIFFE ID the issuer presents to agents.
pub fn issuer_spiffe_id(state: &IssuerState) -> SpiffeId {
    SpiffeId::from_segments(state.config.trust_domain.clone(), &["sigil", "issuer"])
        .expect("static path is valid")
}

/// Builds a root store from a bundle's X.509 authorities.
pub fn root_store(bundle: &Bundle) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for der in bundle.x509_authorities() {
        // A malformed root cannot anchor anything; skip it rather than fail.
        let _ = roots.add(CertificateDer::from(der.clone()));
    }
    roots
}

struct CurrentSvid {
    key: Arc<CertifiedKey>,
    refresh_at: SystemTime,
    bundle_sequence: u64,
}

/// The issuer's own X509-SVID (`spiffe://<td>/sigil/issuer`) for the servers
/// that present it, kept fresh: signed anew when the bundle changes or it
/// passes half its life. A failed refresh keeps the previous SVID.
pub struct IssuerSvid {
    state: IssuerState,
    current: RwLock<CurrentSvid>,
}

impl std::fmt::Debug for IssuerSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSvid").finish_non_exhaustive()
    }
}

impl IssuerSvid {
    pub fn new(state: IssuerState) -> Result<Self, TlsError> {
        let current = sign_svid(&state)?;
        Ok(IssuerSvid {
            state,
            current: RwLock::new(current),
        })
    }

    /// The SVID and key for a new connection, signed anew first if stale.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = self.state.clock.now();
        let sequence = self.state.ca.bundle().sequence();
        {
            let current = self.current.read().expect("svid lock");
            if now < current.refresh_at && sequence == current.bundle_sequence {
                return current.key.clone();
            }
        }
        match sign_svid(&self.state) {
            Ok(fresh) => {
                let key = fresh.key.clone();
                *self.current.write().expect("svid lock") = fresh;
                key
            }
            Err(error) => {
                tracing::error!(%error, "server SVID refresh failed; keeping the previous certificate");
                self.current.read().expect("svid lock").key.clone()
            }
        }
    }
}

/// Presents the current SVID whatever the client asks for.
impl ResolvesServerCert for IssuerSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

struct Current {
    config: Arc<ServerConfig>,
    bundle_sequence: u64,
}

/// The agent API's TLS server configuration, kept fresh.
pub struct ServerTls {
    state: IssuerState,
    svid: Arc<IssuerSvid>,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(state: IssuerState) -> Result<Self, TlsError> {
        let svid = Arc::new(IssuerSvid::new(state.clone())?);
        let current = build(&state, &svid)?;
        Ok(ServerTls {
            state,
            svid,
            current: RwLock::new(current),
        })
    }

    /// The SVID this configuration presents, for other servers to share.
    pub fn svid(&self) -> Arc<IssuerSvid> {
        self.svid.clone()
    }

    /// The configuration for a new connection, rebuilt first if the bundle
    /// that client certificates are checked against has changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let sequence = self.state.ca.bundle().sequence();
        {
            let current = self.current.read().expect("tls lock");
            if sequence == current.bundle_sequence {
                return current.config.clone();
            }
        }
        match build(&self.state, &self.svid) {
            Ok(fresh) => {
                let config = fresh.config.clone();
                *self.current.write().expect("tls lock") = fresh;
                config
            }
            Err(error) => {
                tracing::error!(%error, "server TLS refresh failed; keeping the previous configuration");
                self.current.read().expect("tls lock").config.clone()
            }
        }
    }
}

/// Lets rustls check client certificates against the issuer's clock.
#[derive(Debug)]
struct ClockTime(Arc<dyn crate::clock::Clock>);

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let since = self.0.now().duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(since))
    }
}

fn sign_svid(state: &IssuerState) -> Result<CurrentSvid, TlsError> {
    let now = state.clock.now();
    let bundle_sequence = state.ca.bundle().sequence();
    let key = SigningKey::generate(KeyType::EcP256)?;
    let ttl = state.config.default_x509_svid_ttl;
    let spiffe_id = issuer_spiffe_id(state);
    let signed = state
        .ca
        .sign_x509_svid(
            crate::ca::SvidSubject {
                key: &SubjectKey::new(key.public_key()),
                spiffe_id: &spiffe_id,
                dns_names: &[],
                owner: None,
                counter: None,
            },
            ttl,
            now,
        )
        .map_err(|source| TlsError::Svid { spiffe_id, source })?;
    let chain = signed
        .chain
        .into_iter()
        .map(CertificateDer::from)
        .collect::<Vec<_>>();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signer = provider().key_provider.load_private_key(private)?;
    let lifetime = signed
        .not_after
        .duration_since(now)
        .unwrap_or(Duration::ZERO);
    Ok(CurrentSvid {
        key: Arc::new(CertifiedKey::new(chain, signer)),
        refresh_at: now + lifetime / 2,
        bundle_sequence,
    })
}

fn build(state: &IssuerState, svid: &Arc<IssuerSvid>) -> Result<Current, TlsError> {
    let bundle = state.ca.bundle();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(&bundle)), provider())
            .allow_unauthenticated()
            .build()?;
    let time = Arc::new(ClockTime(state.clock.clone()));
    let mut config = ServerConfig::builder_with_details(provider(), time)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(svid.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Current {
        config: Arc::new(config),
        bundle_sequence: bundle.sequence(),
    })
}
