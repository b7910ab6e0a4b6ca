//! The one rustls crypto provider every TLS configuration of the issuer
//! uses: ring, as the workspace builds rustls.

use std::sync::Arc;

/// A handle on the ring crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
