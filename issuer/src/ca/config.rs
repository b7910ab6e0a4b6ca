//! The CA's runtime settings, as the issuer's validated configuration
//! builds them.

use std::path::PathBuf;
use std::time::Duration;

use workload_api::id::TrustDomain;

use super::keys::KeyType;

/// A CA certificate and key from disk that signs Sigil's CA as an intermediate.
#[derive(Debug, Clone)]
pub struct UpstreamCa {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Roots to publish; defaults to the self-signed certificates of `cert_file`,
    /// or its last certificate.
    pub bundle_file: Option<PathBuf>,
}

/// CA settings.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub dir: PathBuf,
    pub ca_ttl: Duration,
    pub x509_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub wit_key_type: KeyType,
    /// The `iss` claim of WIT-SVIDs.
    pub wit_issuer: Option<String>,
    /// The `iss` claim of JWT-SVIDs (the OIDC issuer URL).
    pub jwt_issuer: Option<String>,
    pub upstream: Option<UpstreamCa>,
    pub refresh_hint: Duration,
}
