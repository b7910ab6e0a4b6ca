//! Generated protobuf and gRPC code. Everything here is wire format: convert to
//! domain types at the edge rather than passing these around.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// The SPIFFE Workload API. Its proto has no package, hence the `_` module.
pub mod workload {
    tonic::include_proto!("_");
}

/// Agent <-> issuer API.
pub mod issuer {
    tonic::include_proto!("sigil.issuer.v1");
}

/// Issuer admin API.
pub mod admin {
    tonic::include_proto!("sigil.admin.v1");
}
