//! WIMSE credentials (draft-ietf-wimse-workload-creds, draft-ietf-wimse-wpt)
//! and their SPIFFE profile (WIT-SVID.md).
//!
//! - [`wit`]: Workload Identity Tokens: signing (the issuer) and validation
//!   against the bundle of the subject's trust domain.
//! - [`wpt`]: Workload Proof Tokens: minting (the sending workload) and the
//!   draft's checks of one request's proof.
//! - [`replay`]: a per-sender window of used `jti`s with bounded memory.
//! - [`http`]: the two wire forms of the WPT (`Authorization: WPT`, wpt-02;
//!   `Workload-Proof-Token`, wpt-01) and the client helpers.
//! - [`verifier`]: the receiving side put together: configured audiences,
//!   clock skew, a cache of validated WITs, the replay window.
//! - [`layer`]: a tower layer in front of HTTP services, which may also
//!   restrict a route to the owners it accepts.
//! - [`revocations`]: follows the issuer's revocation list over HTTP, so
//!   that the verifier refuses WITs whose owner is revoked.
//!
//! A WIT may name who answers for the workload in its `owner` claim; the
//! binding's format lives in [`crate::owner`], and [`Verified::owner`]
//! returns it.

pub mod error;
pub mod http;
pub mod httpsig;
pub mod layer;
pub mod replay;
pub mod revocations;
pub mod usage;
pub mod verifier;
pub mod wit;
pub mod wpt;

pub use error::{Token, WimseError};
pub use http::{AcceptedForms, WptForm};
pub use verifier::{Presented, Proof, SignedRequest, Verified, Verifier, VerifierConfig};

/// The HTTP header carrying the WIT.
pub const WIT_HEADER: &str = "workload-identity-token";
/// The HTTP header carrying the WPT in the header form
/// (draft-ietf-wimse-wpt-01); draft-ietf-wimse-wpt-02 moved it into
/// `Authorization: WPT <jwt>` (see [`http::WptForm`]).
pub const WPT_HEADER: &str = "workload-proof-token";
/// The header carrying a transaction token (bound by `tth`).
pub const TXN_TOKEN_HEADER: &str = "txn-token";

/// Which rules a WIT is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// SPIFFE WIT-SVID: `sub` a SPIFFE ID, `kid` required, RS/ES/PS only.
    #[default]
    Spiffe,
    /// Generic WIMSE: `sub` any workload identifier URI; EdDSA allowed.
    Wimse,
}

impl Profile {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "spiffe" => Some(Profile::Spiffe),
            "wimse" => Some(Profile::Wimse),
            _ => None,
        }
    }

    /// Whether `alg` may sign a WIT or a WPT under this profile.
    pub fn allows(self, alg: crate::jwk::Algorithm) -> bool {
        match self {
            Profile::Spiffe => alg.is_spiffe(),
            Profile::Wimse => true,
        }
    }
}
