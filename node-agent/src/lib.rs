//! Sigil's per-node agent.
//!
//! - [`issuer_client`]: the mTLS connection to the issuer's agent API, which
//!   authenticates the issuer by its X509-SVID against the trust bundle.

pub mod issuer_client;
