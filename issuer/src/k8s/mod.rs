//! Kubernetes: agents attest by their pods' projected service account
//! tokens ([`psat`]), identity rules give pods entries without an operator
//! ([`registrar`], [`rules`]), and the trust bundle is kept in a ConfigMap
//! for agents to bootstrap from ([`bundle_map`]). The configuration of all
//! this is [`crate::config::k8s`].

pub mod bundle_map;
pub mod client;
pub mod psat;
pub mod registrar;
pub mod rules;

pub use client::Clusters;

/// A background job of this module, run until the issuer stops.
pub type Task = crate::singleton::Job;
