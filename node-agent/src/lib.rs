//! Sigil's per-node agent.
//!
//! - [`node`]: bootstrap, the agent SVID and its renewal, the issuer connection.
//! - [`failover`]: which issuer replica to connect to, and when to try again.
//! - [`sync`]: the entry stream from the issuer.
//! - [`svid`]: workload X509-SVIDs (minted and rotated here) and JWT-SVIDs.
//! - [`attestor`]: workload attestation from the socket's peer credentials.
//! - [`source`], [`agent`]: the Workload API served from all of the above.
//! - [`probe`]: the agent's health, for `sigil-agent healthcheck`.
//! - [`delegation`]: owner-bound workloads registering child workloads.
//! - [`cli`]: the `sigil-agent` command line, including `up`.

pub mod agent;
pub mod attestor;
pub mod cli;
pub mod config;
pub mod delegation;
pub mod events;
pub mod failover;
pub mod health_http;
pub mod issuer_client;
pub mod issuer_health;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod source;
pub mod svid;
pub mod sync;
pub mod usage;

/// One random byte, for rotation jitter.
pub(crate) fn jitter_byte() -> u8 {
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0]
}

/// `base` plus up to half of it again, so a fleet of agents retrying after an
/// issuer outage does not arrive in step.
pub(crate) fn with_jitter(base: std::time::Duration) -> std::time::Duration {
    base + base * u32::from(jitter_byte()) / 510
}

pub(crate) use workload_api::display::error_chain;
