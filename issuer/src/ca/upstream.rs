//! Loading an upstream CA from PEM files, so Sigil's CA is an intermediate
//! under an existing PKI (X509-SVID.md section 3.2: a signing certificate may
//! be signed by another).

use std::path::Path;
use std::time::SystemTime;

use workload_api::pem;
use zeroize::Zeroizing;

use super::config::UpstreamCa;
use super::error::CaError;
use super::keys::SigningKey;
use super::x509;

/// A loaded upstream CA.
pub(super) struct Upstream {
    pub(super) issuer: rcgen::Issuer<'static, super::owner_extension::OidSwappingKey>,
    /// Caps the lifetime of every CA certificate it signs.
    pub(super) not_after: SystemTime,
    /// Upstream certificates to serve after Sigil's CA (intermediates only).
    pub(super) chain: Vec<Vec<u8>>,
    /// What the bundle publishes instead of Sigil's own CA certificates.
    pub(super) roots: Vec<Vec<u8>>,
}

/// Reads the upstream certificate, key and roots named in `upstream`.
pub(super) fn load(upstream: &UpstreamCa) -> Result<Upstream, CaError> {
    let certs = pem::blocks(&read(&upstream.cert_file)?, "CERTIFICATE");
    let signing_cert = certs
        .first()
        .ok_or_else(|| CaError::UpstreamNoCertificate {
            path: upstream.cert_file.clone(),
        })?
        .clone();
    let keys = pem::blocks(&read(&upstream.key_file)?, "PRIVATE KEY");
    let key_der = keys.first().ok_or_else(|| CaError::UpstreamNoKey {
        path: upstream.key_file.clone(),
    })?;
    let key = SigningKey::from_pkcs8_any(Zeroizing::new(key_der.clone())).map_err(|source| {
        CaError::UpstreamKey {
            path: upstream.key_file.clone(),
            source,
        }
    })?;
    let issuer = x509::issuer_for(&signing_cert, &key)?;
    let not_after = x509::not_after(&signing_cert)?;
    let roots = match &upstream.bundle_file {
        Some(path) => pem::blocks(&read(path)?, "CERTIFICATE"),
        None => default_roots(&certs),
    };
    let chain = certs
        .iter()
        .filter(|c| !roots.contains(c))
        .cloned()
        .collect();
    Ok(Upstream {
        issuer,
        not_after,
        chain,
        roots,
    })
}

/// Without a bundle file, the roots are the self-signed certificates of the
/// chain, or else its last certificate.
fn default_roots(certs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let roots: Vec<Vec<u8>> = certs
        .iter()
        .filter(|c| x509::is_self_signed(c).unwrap_or(false))
        .cloned()
        .collect();
    if roots.is_empty() {
        vec![certs.last().expect("non-empty").clone()]
    } else {
        roots
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::UpstreamRead {
        path: path.to_path_buf(),
        source,
    })
}
