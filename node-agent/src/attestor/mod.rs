//! Workload attestors: what the agent learns about a caller of its socket.

pub mod unix;

pub use unix::{AttestError, UnixAttestor};
