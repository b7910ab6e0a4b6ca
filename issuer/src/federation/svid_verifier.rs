//! Authenticates an `https_spiffe` bundle endpoint (SPIFFE_Federation.md
//! section 5.2.2.4): the server certificate must be a valid X509-SVID
//! (X509-SVID.md section 5) chaining to an X.509 authority of the bundle of
//! the endpoint SPIFFE ID's trust domain, and its SPIFFE ID must be exactly
//! the configured one. The SPIFFE ID is the server's identity, so the URL's
//! host name is not checked against the certificate.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use workload_api::id::SpiffeId;
use workload_api::x509svid::{self, X509SvidError};
use workload_api::Bundle;

/// Why the server's certificate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidRefused {
    #[error("the server presented SPIFFE ID {presented}; the endpoint SPIFFE ID is {expected}")]
    WrongId {
        presented: SpiffeId,
        expected: SpiffeId,
    },
    #[error("the server certificate is not a valid X509-SVID of {expected}: {source}")]
    Invalid {
        expected: SpiffeId,
        source: X509SvidError,
    },
}

/// Checks the server's X509-SVID against one bundle and one SPIFFE ID.
#[derive(Debug)]
pub struct SvidVerifier {
    endpoint_id: SpiffeId,
    bundle: Bundle,
    provider: Arc<CryptoProvider>,
}

impl SvidVerifier {
    /// `bundle` must be that of `endpoint_id`'s trust domain; any other
    /// authenticates nothing (its trust domain is never a leaf's).
    pub fn new(endpoint_id: SpiffeId, bundle: Bundle, provider: Arc<CryptoProvider>) -> Self {
        SvidVerifier {
            endpoint_id,
            bundle,
            provider,
        }
    }

    /// Accepts the chain if its leaf is a valid X509-SVID of the endpoint ID.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), SvidRefused> {
        let invalid = |source| SvidRefused::Invalid {
            expected: self.endpoint_id.clone(),
            source,
        };
        // The ID first: a wrong one is the clearest thing to report.
        let leaf = x509svid::check_leaf(end_entity).map_err(invalid)?;
        if leaf.spiffe_id != self.endpoint_id {
            return Err(SvidRefused::WrongId {
                presented: leaf.spiffe_id,
                expected: self.endpoint_id.clone(),
            });
        }
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|der| der.to_vec())
            .collect();
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        x509svid::verify_chain(
            &chain,
            |trust_domain| (trust_domain == self.bundle.trust_domain()).then_some(&self.bundle),
            now,
        )
        .map_err(invalid)?;
        Ok(())
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|refused| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    refused,
                ))))
            })
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

/// The refusal inside a TLS error, if the refusal was this verifier's.
pub fn refusal(error: &std::io::Error) -> Option<SvidRefused> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<SvidRefused>().cloned()
        }
        _ => None,
    }
}
