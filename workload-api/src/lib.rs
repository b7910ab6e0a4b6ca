//! SPIFFE and WIMSE building blocks shared by Sigil's issuer, its agent and the
//! services that verify Sigil credentials.
//!
//! - [`id`]: strict SPIFFE ID and trust domain parsing (SPIFFE-ID.md).
//! - [`jwk`]: public keys as JWKs (RFC 7517/7518) and their use for verification.
//! - [`bundle`]: SPIFFE trust bundles as JWK Sets (SPIFFE_Trust_Domain_and_Bundle.md).
//! - [`x509svid`]: X509-SVID validation (X509-SVID.md).
//! - [`jwtsvid`]: JWT-SVID validation (JWT-SVID.md).
//! - [`selector`]: the properties entries require of workloads and nodes.
//! - [`source`], [`server`], [`client`]: the SPIFFE Workload API.
//! - [`keypair`], [`jws`], [`wimse`]: signing keys, JWS, WIMSE tokens and proofs.
//! - [`owner`], [`consent`]: who answers for a workload, and the consent
//!   that binds it into its credentials; [`revocation`]: the signed list of
//!   revoked owners.
//! - [`events`]: the records of the signed event log, in canonical JSON.
//! - [`files`], [`pem`]: private files and directories, PEM text.
//! - [`config_file`], [`logging`], [`metrics`], [`stdout`] (feature
//!   `daemon`): what Sigil's binaries share.

pub mod bundle;
pub mod client;
#[cfg(feature = "daemon")]
pub mod config_file;
pub mod connection;
pub mod consent;
pub mod display;
pub mod events;
pub mod files;
pub mod id;
pub mod jwk;
pub mod jws;
pub mod jwtsvid;
pub mod keypair;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metrics;
pub mod owner;
pub mod pem;
pub mod revocation;
pub mod selector;
pub mod server;
pub mod source;
#[cfg(feature = "daemon")]
pub mod stdout;
pub mod wimse;
pub mod x509svid;

pub use bundle::{Bundle, BundleError, JwtAuthority};
pub use id::{IdError, SpiffeId, TrustDomain};
