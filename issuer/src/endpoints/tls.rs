//! TLS for the agent API. The server presents its own X509-SVID
//! (`spiffe://<td>/sigil/issuer`) and asks for, but does not require, a client
//! certificate: attestation happens before an agent has one, and every other
//! RPC checks for it. The configuration is rebuilt whenever the bundle changes
//! or the server SVID passes half its life, and each new connection takes the
//! latest one. Client certificates get RFC 5280 path validation against the
//! local bundle (X509-SVID.md section 5.1); the agent API checks the leaf
//! (section 5.2).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use workload_api::id::SpiffeId;
use workload_api::Bundle;

use crate::ca::keys::{KeyError, KeyType, SigningKey};
use crate::ca::CaError;
use crate::csr::SubjectKey;
use crate::state::IssuerState;

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

/// The ring-backed rustls provider used everywhere in Sigil.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

struct Current {
    config: Arc<ServerConfig>,
    refresh_at: SystemTime,
    bundle_sequence: u64,
}

/// The agent API's TLS server configuration, kept fresh.
pub struct ServerTls {
    state: IssuerState,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(state: IssuerState) -> Result<Self, TlsError> {
        let current = build(&state)?;
        Ok(ServerTls {
            state,
            current: RwLock::new(current),
        })
    }

    /// The configuration for a new connection, rebuilt first if stale.
    pub fn config(&self) -> Arc<ServerConfig> {
        let now = self.state.clock.now();
        let sequence = self.state.ca.bundle().sequence();
        {
            let current = self.current.read().expect("tls lock");
            if now < current.refresh_at && sequence == current.bundle_sequence {
                return current.config.clone();
            }
        }
        match build(&self.state) {
            Ok(fresh) => {
                let config = fresh.config.clone();
                *self.current.write().expect("tls lock") = fresh;
                config
            }
            Err(error) => {
                tracing::error!(%error, "server TLS refresh failed; keeping the previous certificate");
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

fn build(state: &IssuerState) -> Result<Current, TlsError> {
    let now = state.clock.now();
    let bundle = state.ca.bundle();
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
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(&bundle)), provider())
            .allow_unauthenticated()
            .build()?;
    let time = Arc::new(ClockTime(state.clock.clone()));
    let mut config = ServerConfig::builder_with_details(provider(), time)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let lifetime = signed
        .not_after
        .duration_since(now)
        .unwrap_or(Duration::ZERO);
    Ok(Current {
        config: Arc::new(config),
        refresh_at: now + lifetime / 2,
        bundle_sequence: bundle.sequence(),
    })
}
