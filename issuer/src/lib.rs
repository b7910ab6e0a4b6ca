//! Sigil's central issuer.
//!
//! - [`ca`]: CA certificates and JWT keys, their rotation, SVID signing.
//! - [`store`]: registration entries, agents and join tokens (SQLite).
//! - [`attestation`]: node attestation (join tokens).
//! - [`endpoints`]: the agent API (gRPC over mTLS) and the admin API (local socket).
//! - [`config`]: the TOML configuration and its validation.
//! - [`server`]: wires the subsystems together and runs them.

pub mod ca;
pub mod clock;
pub mod csr;
pub mod ids;
pub mod store;
