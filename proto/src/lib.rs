//! Generated protobuf and gRPC code. Everything here is wire format: convert to
//! domain types at the edge rather than passing these around.

pub mod codec;

/// The SPIFFE Workload API. Its proto has no package, hence the `_` file.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod workload {
    tonic::include_proto!("_");
}

/// Sigil's own packages, nested as their proto package names are so that
/// cross-package references resolve.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod sigil {
    pub mod issuer {
        pub mod v1 {
            tonic::include_proto!("sigil.issuer.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("sigil.admin.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("sigil.agent.v1");
        }
    }
}

/// The agent's health and delegation services, on the Workload API socket.
pub use sigil::agent::v1 as agent;

/// Issuer admin API.
pub use sigil::admin::v1 as admin;
/// Agent <-> issuer API.
pub use sigil::issuer::v1 as issuer;

/// Metadata key on a PERMISSION_DENIED from the agent API that says why the
/// agent lost its standing: `banned` or `evicted`. The message says it to
/// people; this says it to the agent.
pub const AGENT_STANDING_KEY: &str = "sigil-agent-standing";

/// The encoded file descriptor set of the Workload API (with its imports), for
/// gRPC reflection.
pub const WORKLOAD_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/workload_descriptor.bin"));
