//! Sigil's central issuer.
//!
//! - [`ca`]: CA certificates and JWT keys, their rotation, SVID signing.
//! - [`store`]: registration entries, agents and join tokens (SQLite or PostgreSQL).
//! - [`trust_bundle`]: the one bundle of every replica's keys.
//! - [`attestation`]: node attestation (join tokens).
//! - [`k8s`]: Kubernetes: k8s_psat attestation, identity rules for pods, the bundle ConfigMap.
//! - [`endpoints`]: the agent API (gRPC over mTLS) and the admin API (local socket).
//! - [`federation`]: SPIFFE Federation: the bundle endpoint and its client.
//! - [`eventlog`]: the signed event log (RFC 6962 tree, C2SP checkpoints and tiles).
//! - [`config`]: the TOML configuration and its validation.
//! - [`server`]: wires the subsystems together and runs them.

pub mod admin_client;
pub mod attestation;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto_provider;
pub mod csr;
pub mod delegation;
pub mod endpoints;
pub mod eventlog;
pub mod federation;
pub mod ids;
pub mod k8s;
pub mod limits;
pub mod metrics;
pub mod owners;
pub mod published;
pub mod registration;
pub mod registrations;
pub mod revocations;
pub mod serials;
pub mod server;
pub mod singleton;
pub mod state;
pub mod store;
pub mod trust_bundle;
