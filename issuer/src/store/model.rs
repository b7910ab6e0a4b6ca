//! Registration entries, selectors, agents, join tokens, owners and the
//! owner-bound SVIDs as the issuer stores them.

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
    /// The owner the entry is bound to; `None` for an unbound entry.
    pub owner: Option<EntryOwner>,
    /// `k8s/<cluster>/<rule>/<pod uid>` for an entry an identity rule keeps;
    /// empty for an entry an operator made.
    pub managed_by: String,
}

/// The owner an entry is bound to, and the consent that binds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryOwner {
    /// The owner's id (a URI).
    pub owner_id: String,
    /// RFC 7638 thumbprint (base64url) of the owner's key when the entry was bound.
    pub key_thumbprint: String,
    /// The consent JWS exactly as the owner signed it.
    pub consent: String,
    /// For an entry a workload registered under its own (delegated
    /// registration): the id of the parent entry; empty otherwise.
    pub delegated_from: String,
    /// The delegation chain's SPIFFE IDs, outermost first; empty unless delegated.
    pub actors: Vec<String>,
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
    /// What node attestation found (k8s_psat); none for join tokens.
    pub selectors: Vec<Selector>,
}

/// A join token as stored: its id and expiry, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A registered owner: a person or service entries can be bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// A URI: mailto:, https: or spiffe:.
    pub id: String,
    /// The owner's public key as a JWK (JSON).
    pub public_key: String,
    /// RFC 7638 SHA-256 thumbprint of `public_key`, base64url.
    pub thumbprint: String,
    pub created_at: i64,
    /// Unix seconds; 0 while the owner is in good standing.
    pub revoked_at: i64,
}

/// How far an owner-bound entry's serial counters are reserved, and since
/// when it is revoked (0: not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialReservation {
    pub entry_id: String,
    pub owner_id: String,
    pub reserved: u64,
    pub revoked_at: i64,
}

/// A federation relationship with a foreign trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    /// The foreign trust domain's name.
    pub trust_domain: String,
    pub bundle_endpoint_url: String,
    /// `https_web` or `https_spiffe`.
    pub profile: String,
    /// For `https_spiffe`: the SPIFFE ID the endpoint must present.
    pub endpoint_spiffe_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// How the last polls of a relationship's bundle endpoint went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationPoll {
    /// When the last poll ended (Unix seconds).
    pub polled_at: i64,
    /// Polls that failed since the last good one.
    pub failures: i64,
    /// Why the last poll failed, or why its bundle was refused; empty
    /// after a good one.
    pub last_error: String,
    /// The replica that polled.
    pub replica: String,
}

/// The latest bundle of a foreign trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignBundle {
    pub trust_domain: String,
    /// The SPIFFE bundle, JWK Set JSON.
    pub bundle: String,
    /// Its `spiffe_sequence`; 0 when it has none.
    pub sequence: i64,
    pub origin: BundleOrigin,
    pub updated_at: i64,
}

/// Where a foreign bundle came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleOrigin {
    /// Fetched from the trust domain's bundle endpoint.
    Endpoint,
    /// Set by an operator (`bundle set`).
    Operator,
    /// The bootstrap bundle of an https_spiffe relationship.
    Bootstrap,
}

impl BundleOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            BundleOrigin::Endpoint => "endpoint",
            BundleOrigin::Operator => "operator",
            BundleOrigin::Bootstrap => "bootstrap",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "endpoint" => Some(BundleOrigin::Endpoint),
            "operator" => Some(BundleOrigin::Operator),
            "bootstrap" => Some(BundleOrigin::Bootstrap),
            _ => None,
        }
    }
}
