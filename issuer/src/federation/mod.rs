//! SPIFFE Federation (SPIFFE_Federation.md), the client side: fetching other
//! trust domains' bundles from their bundle endpoints (sections 4 and 5.2)
//! and keeping them fresh. This trust domain's own bundle endpoint, and the
//! admin calls that manage relationships, are endpoints
//! ([`crate::endpoints::bundle_endpoint`], [`crate::endpoints::federation`]).
//!
//! - [`fetch`]: the bundle endpoint client, both profiles.
//! - [`svid_verifier`]: authenticates an `https_spiffe` endpoint by its X509-SVID.
//! - [`poller`]: keeps every relationship's bundle fresh.

pub mod fetch;
pub mod poller;
pub mod svid_verifier;
