//! Registration entries, selectors, agents and join tokens as the issuer
//! stores them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A workload or node property that an entry requires, `type:value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Selector {
    /// Parses `TYPE:VALUE`; the value may itself contain colons.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((kind, value)) if !kind.is_empty() && !value.is_empty() => Ok(Selector {
                kind: kind.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("selector {s:?} is not of the form TYPE:VALUE")),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

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
