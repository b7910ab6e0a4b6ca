//! The issuer's network endpoints: the agent API (gRPC over mTLS on TCP), the
//! admin API (gRPC on a local unix socket), the public HTTP endpoint (CRLs
//! and the revocation list) and the SPIFFE bundle endpoint. All but the last
//! are Sigil's own protocols (`proto/`); the SPIFFE Workload API is the
//! agent's.

pub mod admin;
pub mod agent;
mod agent_events;
pub mod bundle_endpoint;
pub mod convert;
mod delegation;
pub mod entry_stream;
pub mod federation;
mod health_http;
pub mod http;
mod log_http;
pub mod serving_cert;
mod signing;
mod standing;
pub mod tls;
mod web;

use tonic::Status;

use crate::store::StoreError;

/// The gRPC status for a store failure. Internal details stay in the log.
pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::EntryNotFound(_)
        | StoreError::AgentNotFound(_)
        | StoreError::FederationNotFound(_)
        | StoreError::BundleNotFound(_) => Status::not_found(error.to_string()),
        StoreError::FederationExists(_) => Status::already_exists(error.to_string()),
        StoreError::EntryExists(_) => Status::already_exists(error.to_string()),
        StoreError::RevisionMismatch { .. } => Status::aborted(error.to_string()),
        StoreError::TokenUnknown | StoreError::TokenExpired { .. } => {
            Status::unauthenticated(error.to_string())
        }
        StoreError::TokenUsed => Status::permission_denied(error.to_string()),
        StoreError::OwnerNotFound(_) => Status::not_found(error.to_string()),
        StoreError::OwnerExists(_) | StoreError::OwnerKeyInUse { .. } => {
            Status::already_exists(error.to_string())
        }
        StoreError::OwnerRevoked { .. } | StoreError::ParentEntryGone(_) => {
            Status::failed_precondition(error.to_string())
        }
        StoreError::TooManyChildren { .. } | StoreError::AgentBanned(_) => {
            Status::permission_denied(error.to_string())
        }
        StoreError::EventGap { .. } => Status::failed_precondition(error.to_string()),
        other if other.is_unavailable() => {
            tracing::warn!(error = %other, "store unreachable");
            Status::unavailable("the registration store is unreachable; see the issuer log")
        }
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal("the registration store failed; see the issuer log")
        }
    }
}
