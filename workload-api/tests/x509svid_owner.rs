//! Owner-bound X509-SVIDs made by openssl (see tests/data/README.md): the
//! binding's OID has a 128-bit arc, so these also show such certificates
//! parse at all.

use std::time::SystemTime;

use workload_api::owner::{BindingError, OwnerBinding};
use workload_api::x509svid::{check_leaf, check_signing_certificate, verify_chain, X509SvidError};
use workload_api::{Bundle, TrustDomain};

const PLAIN: &str = include_str!("data/owner-bound-svid.pem");
const DELEGATED: &str = include_str!("data/owner-bound-delegated-svid.pem");
const CORRUPT: &str = include_str!("data/owner-bound-corrupt-svid.pem");

/// The certificates of a fixture, in file order.
fn certificates(pem: &str) -> Vec<Vec<u8>> {
    workload_api::pem::blocks(pem, "CERTIFICATE")
}

fn leaf(pem: &str) -> Vec<u8> {
    certificates(pem).remove(0)
}

/// The CA that signed every fixture: the second block of the plain one.
fn ca() -> Vec<u8> {
    certificates(PLAIN).remove(1)
}

fn digest(hex: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The binding the fixtures were made with.
fn expected_owner(actors: &[&str]) -> OwnerBinding {
    OwnerBinding {
        owner_id: "mailto:alice@example.org".into(),
        key_thumbprint: digest("19bb43fcfad83f2feddbff8425ec5325bc0ae3dbe5334cdc11e544ccf31858b2"),
        consent_sha256: digest("6c6b04c6789fb22ec92b78d65707aeb1067e609c1398e9f0944fca27325de6d9"),
        actors: actors.iter().map(|a| a.to_string()).collect(),
    }
}

fn bundle() -> Bundle {
    let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
    bundle.add_x509_authority(ca());
    bundle
}

#[test]
fn check_leaf_returns_the_owner_the_leaf_carries() {
    let info = check_leaf(&leaf(PLAIN)).unwrap();
    assert_eq!(
        info.spiffe_id.to_string(),
        "spiffe://example.org/agents/alice/bot"
    );
    assert_eq!(info.serial_hex, "0a01");
    assert_eq!(info.owner, Some(expected_owner(&[])));
}

#[test]
fn check_leaf_returns_the_delegation_chain() {
    let info = check_leaf(&leaf(DELEGATED)).unwrap();
    let owner = info.owner.expect("the delegated leaf carries a binding");
    assert_eq!(
        owner,
        expected_owner(&[
            "spiffe://example.org/agents/alice",
            "spiffe://example.org/agents/alice/bot",
        ])
    );
    assert_eq!(owner.actors.len(), 2);
}

#[test]
fn an_owner_bound_chain_verifies_against_its_ca_and_returns_the_owner() {
    let bundle = bundle();
    check_signing_certificate(1, &ca()).unwrap();
    for (pem, actors) in [
        (PLAIN, vec![]),
        (
            DELEGATED,
            vec![
                "spiffe://example.org/agents/alice",
                "spiffe://example.org/agents/alice/bot",
            ],
        ),
    ] {
        let info = verify_chain(&[leaf(pem)], |_| Some(&bundle), SystemTime::now()).unwrap();
        assert_eq!(info.owner, Some(expected_owner(&actors)));
    }
}

#[test]
fn a_corrupted_owner_binding_is_refused() {
    let err = check_leaf(&leaf(CORRUPT)).unwrap_err();
    assert!(
        matches!(err, X509SvidError::OwnerBinding(BindingError::Der(_))),
        "{err}"
    );
    assert!(err.to_string().starts_with("leaf owner binding: "), "{err}");
    let bundle = bundle();
    let err = verify_chain(&[leaf(CORRUPT)], |_| Some(&bundle), SystemTime::now()).unwrap_err();
    assert!(matches!(err, X509SvidError::OwnerBinding(_)), "{err}");
}

#[test]
fn a_duplicated_owner_binding_is_malformed() {
    // Append a second copy of the extension to the leaf's extension list by
    // re-encoding: find the extension (OID, then OCTET STRING) and repeat it
    // inside the enclosing SEQUENCE OF, fixing the lengths on the way out.
    let der = leaf(PLAIN);
    let doubled = with_owner_extension_twice(&der);
    let err = check_leaf(&doubled).unwrap_err();
    match err {
        X509SvidError::Malformed { index: 0, reason } => {
            assert!(
                reason.contains("owner binding extension appears twice"),
                "{reason}"
            )
        }
        other => panic!("expected Malformed, got {other}"),
    }
}

#[test]
fn trailing_bytes_after_the_certificate_are_malformed() {
    let mut der = leaf(PLAIN);
    der.push(0);
    assert!(matches!(
        check_leaf(&der),
        Err(X509SvidError::Malformed { index: 0, .. })
    ));
}

/// A DER element: (tag, header length, content length) at `at`.
fn element(der: &[u8], at: usize) -> (u8, usize, usize) {
    let first = der[at + 1];
    if first < 0x80 {
        return (der[at], 2, first as usize);
    }
    let n = (first & 0x7f) as usize;
    let len = der[at + 2..at + 2 + n]
        .iter()
        .fold(0usize, |acc, b| acc << 8 | *b as usize);
    (der[at], 2 + n, len)
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The children of the constructed element at `at`.
fn children(der: &[u8], at: usize) -> Vec<Vec<u8>> {
    let (_, header, len) = element(der, at);
    let mut out = Vec::new();
    let mut i = at + header;
    while i < at + header + len {
        let (_, h, l) = element(der, i);
        out.push(der[i..i + h + l].to_vec());
        i += h + l;
    }
    out
}

/// `der` with the owner binding extension listed twice. Certificate ::=
/// SEQUENCE { tbs, alg, sig }; the extensions are tbs's last child, `[3]`
/// wrapping a SEQUENCE OF Extension. The signature no longer matches, which
/// check_leaf does not look at.
fn with_owner_extension_twice(der: &[u8]) -> Vec<u8> {
    let cert = children(der, 0);
    let mut tbs = children(&cert[0], 0);
    let wrapper = tbs.pop().unwrap();
    assert_eq!(wrapper[0], 0xa3, "extensions are tbs's last member");
    let extensions = children(&wrapper, 0).remove(0);
    let mut list = children(&extensions, 0);
    let oid = workload_api::owner::OWNER_BINDING_OID_DER;
    let owner = list
        .iter()
        .find(|ext| ext.windows(oid.len()).any(|w| w == oid))
        .unwrap()
        .clone();
    list.push(owner);
    tbs.push(encode(0xa3, &encode(0x30, &list.concat())));
    let mut out = vec![encode(0x30, &tbs.concat())];
    out.extend(cert[1..].iter().cloned());
    encode(0x30, &out.concat())
}
