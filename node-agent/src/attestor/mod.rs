//! Workload attestors: what the agent learns about a caller of its socket.
//! The unix attestor always runs; the Kubernetes one, when configured, adds
//! its selectors to the unix ones.

pub mod k8s;
pub mod unix;

pub use k8s::{K8sAttestor, K8sConfig, K8sError};
pub use unix::{AttestError, UnixAttestor};
