//! Registration entries, selectors, agents and join tokens as the issuer
//! stores them.

pub use workload_api::selector::Selector;

/// The fields an operator sets on an entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryFields {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the issuer default.
    pub x509_svid_ttl: i64,
    pub jwt_svid_ttl: i64,
    pub dns_names: Vec<String>,
    pub hint: String,
    pub federates_with: Vec<String>,
    pub admin: bool,
    pub downstream: bool,
    /// Unix seconds; 0 means never.
    pub expires_at: i64,
}

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: EntryFields,
    pub revision: i64,
    /// Registration order, increasing.
    pub sequence: i64,
    pub created_at: i64,
}

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub spiffe_id: String,
    pub attestation_type: String,
    pub serial: String,
    pub new_serial: String,
    pub expires_at: i64,
    pub banned: bool,
    pub attested_at: i64,
}

/// A join token as stored: its id and expiry, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}
