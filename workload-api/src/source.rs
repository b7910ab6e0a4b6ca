//! What a Workload API server serves from: the identities a node holds, as
//! snapshots that change when SVIDs rotate or entries and bundles change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::bundle::Bundle;
use crate::id::TrustDomain;
use crate::selector::{Selector, Selectors};

/// An X509-SVID and its private key. `Debug` never shows the key.
pub struct X509Material {
    /// Unique in this process: tells streams an SVID changed without
    /// comparing bytes.
    pub serial: u64,
    /// The leaf certificate's serial number, lower-case hex: how the event
    /// log names it.
    pub cert_serial: String,
    /// DER chain, leaf first, concatenated.
    pub chain: Vec<u8>,
    /// PKCS#8 DER private key.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// Unix seconds.
    pub not_after: i64,
}

impl X509Material {
    pub fn new(chain: Vec<u8>, key_pkcs8: Zeroizing<Vec<u8>>, not_after: i64) -> Self {
        X509Material {
            serial: next_serial(),
            cert_serial: leaf_serial_hex(&chain),
            chain,
            key_pkcs8,
            not_after,
        }
    }

    /// Whether the SVID is still valid at `now`: strictly before its
    /// notAfter, so that no certificate is handed out in its last instant.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < unix_time(self.not_after)
    }

    /// The notAfter as a time.
    pub fn expires_at(&self) -> SystemTime {
        unix_time(self.not_after)
    }
}

impl std::fmt::Debug for X509Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Material")
            .field("chain_bytes", &self.chain.len())
            .field("key_pkcs8", &"[redacted]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A WIT-SVID and the private key of its `cnf.jwk`. `Debug` never shows the
/// key.
pub struct WitMaterial {
    /// Unique in this process, like [`X509Material::serial`].
    pub serial: u64,
    /// The WIT's `jti`: how the event log names it.
    pub jti: String,
    /// The WIT, compact JWS.
    pub token: String,
    /// The private key as a JWK (what FetchWITSVID hands over).
    pub key_jwk: Zeroizing<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl WitMaterial {
    pub fn new(token: String, key_jwk: Zeroizing<String>, expires_at: i64) -> Self {
        WitMaterial {
            serial: next_serial(),
            jti: token_jti(&token),
            token,
            key_jwk,
            expires_at,
        }
    }

    /// Whether the WIT is still valid at `now` (before its `exp`, RFC 7519
    /// section 4.1.4).
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < unix_time(self.expires_at)
    }

    /// The `exp` as a time.
    pub fn expires_at(&self) -> SystemTime {
        unix_time(self.expires_at)
    }
}

impl std::fmt::Debug for WitMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitMaterial")
            .field("token_bytes", &self.token.len())
            .field("key_jwk", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Unix seconds as a time; negative values are the epoch (long expired).
pub fn unix_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One identity a workload may be entitled to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub entry_id: String,
    pub spiffe_id: String,
    pub hint: String,
    /// Every one of these must be among the caller's selectors.
    pub selectors: Vec<Selector>,
    /// Trust domains whose bundles the workload receives as federated.
    pub federates_with: Vec<TrustDomain>,
    /// The current X509-SVID; `None` until first minted.
    pub x509: Option<Arc<X509Material>>,
    /// The current WIT-SVID; `None` until first minted.
    pub wit: Option<Arc<WitMaterial>>,
}

/// Everything the node can serve at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The local trust domain's bundle.
    pub bundle: Arc<Bundle>,
    /// Bundles of federated trust domains.
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// In registration order: the first one a caller matches is its default.
    pub identities: Vec<Identity>,
    /// True until the node has received its registration entries once: an
    /// empty view then says nothing about what a caller is entitled to.
    pub awaiting_entries: bool,
    /// Why this node may serve nothing (its issuer banned or evicted it),
    /// which every call and open stream is told with PERMISSION_DENIED.
    pub refused: Option<Arc<str>>,
    /// The issuer's CRLs and revocation list.
    pub revocations: Arc<crate::revocation::Revocations>,
}

impl Snapshot {
    pub fn empty(bundle: Bundle) -> Self {
        Snapshot {
            bundle: Arc::new(bundle),
            federated: BTreeMap::new(),
            identities: Vec::new(),
            awaiting_entries: false,
            refused: None,
            revocations: Arc::default(),
        }
    }

    /// The snapshot of a node that has not received its entries yet.
    pub fn awaiting_entries(bundle: Bundle) -> Self {
        Snapshot {
            awaiting_entries: true,
            ..Snapshot::empty(bundle)
        }
    }

    /// The identities whose selectors the caller has, in order.
    pub fn entitled<'a>(
        &'a self,
        caller: &'a [Selector],
    ) -> impl Iterator<Item = &'a Identity> + 'a {
        self.identities
            .iter()
            .filter(move |i| crate::selector::all_present(&i.selectors, caller))
    }

    /// The bundle of `trust_domain`, local or federated.
    pub fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        if trust_domain == self.bundle.trust_domain() {
            return Some(&self.bundle);
        }
        self.federated.get(trust_domain).map(|b| b.as_ref())
    }
}

/// The node's issuer is failing: since when (the first failed call after
/// the last success) and with what error. Lets the Workload API tell a
/// workload whose credentials all expired why no new ones came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerOutage {
    pub since: SystemTime,
    pub last_error: String,
}

impl IssuerOutage {
    /// How long the outage has lasted at `now` (zero if the clock went back).
    pub fn lasted(&self, now: SystemTime) -> Duration {
        now.duration_since(self.since).unwrap_or_default()
    }
}

/// A JWT-SVID as a source hands it over: the compact token, its `exp` and
/// its `jti`, so the server need not parse the token again to keep expired
/// ones back or to say which it delivered.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    pub token: String,
    pub expires_at: SystemTime,
    pub jti: Arc<str>,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a bearer credential.
        f.debug_struct("JwtSvid")
            .field(
                "token",
                &format_args!("[{} bytes redacted]", self.token.len()),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Who is calling, from the socket's peer credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// Kept for the connection the call came on.
    pub cache: Arc<crate::connection::ConnectionCache>,
}

/// The serial of the first certificate in a DER chain, lower-case hex
/// (empty if it does not parse; the chain was checked when it arrived).
/// Read in place, without decoding the certificate: this runs for every
/// SVID minted, and a full parse's many small allocations fragment the
/// heap that holds the SVIDs.
fn leaf_serial_hex(chain: &[u8]) -> String {
    use der::{Decode, Reader, SliceReader, Tag, TagNumber};
    let serial = || -> der::Result<String> {
        let mut reader = SliceReader::new(chain)?;
        let certificate = der::Header::decode(&mut reader)?;
        certificate.tag.assert_eq(Tag::Sequence)?;
        let tbs = der::Header::decode(&mut reader)?;
        tbs.tag.assert_eq(Tag::Sequence)?;
        // [0] EXPLICIT version, when present, comes before the serial.
        let version = Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        };
        if reader.peek_tag()? == version {
            let header = der::Header::decode(&mut reader)?;
            reader.read_slice(header.length)?;
        }
        // The INTEGER's content octets as written, as serial_hex elsewhere.
        let number = der::asn1::AnyRef::decode(&mut reader)?;
        der::Tagged::tag(&number).assert_eq(Tag::Integer)?;
        Ok(number.value().iter().map(|b| format!("{b:02x}")).collect())
    };
    serial().unwrap_or_default()
}

/// A token's `jti` claim (empty when it has none).
pub fn token_jti(token: &str) -> String {
    crate::jws::parse(token)
        .ok()
        .and_then(|jws| jws.str_claim("jti").map(str::to_string))
        .unwrap_or_default()
}

/// A kind of credential handed to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    X509Svid,
    JwtSvid,
    WitSvid,
}

impl CredentialKind {
    /// The name events carry.
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::X509Svid => "x509_svid",
            CredentialKind::JwtSvid => "jwt_svid",
            CredentialKind::WitSvid => "wit",
        }
    }
}

/// One credential handed over, as the event log names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivered {
    pub kind: CredentialKind,
    pub entry_id: String,
    pub spiffe_id: String,
    /// The X509-SVID's serial (hex), or the token's `jti`.
    pub handle: String,
}

/// What a caller was just sent.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub pid: Option<i32>,
    pub uid: u32,
    pub selectors: &'a [Selector],
    pub credentials: Vec<Delivered>,
}

/// The node-side provider behind a Workload API server.
#[tonic::async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// The snapshots to serve from; each change is pushed to open streams.
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// The selectors of a caller (workload attestation).
    async fn attest(&self, caller: Caller) -> Result<Selectors, tonic::Status>;

    /// A JWT-SVID for `identity` and `audience`, from cache or freshly
    /// signed, with its expiry (the server serves it only before that).
    async fn fetch_jwt_svid(
        &self,
        identity: &Identity,
        audience: &[String],
        now: SystemTime,
    ) -> Result<JwtSvid, tonic::Status>;

    /// Whether the issuer behind this source is failing, and since when.
    fn issuer_outage(&self) -> Option<IssuerOutage>;

    /// Told what a caller was just sent, for the event log. Called on the
    /// serving path: it must not block.
    fn delivered(&self, _delivery: Delivery<'_>) {}
}

#[cfg(test)]
mod serial_tests {
    use super::leaf_serial_hex;

    #[test]
    fn the_leaf_serial_is_read_in_place_as_x509_parser_reads_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x80, 1, 2, 3]));
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let expected: String = parsed
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(leaf_serial_hex(&der), expected);
        assert_eq!(leaf_serial_hex(b"\x30\x03"), "");
    }
}
