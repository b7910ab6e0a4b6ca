//! X509-SVID validation (X509-SVID.md sections 4 and 5).
//!
//! [`check_leaf`] enforces the leaf rules, [`check_signing_certificate`] the CA
//! rules, and [`verify_chain`] both plus path validation to the bundle of the
//! leaf's own trust domain (never another domain's). A leaf may carry an owner
//! binding extension (format in [`crate::owner`]); [`LeafInfo::owner`] holds it.
//!
//! Certificates are read with `x509-parser`: the owner binding's OID has a
//! 128-bit arc, which `x509-cert` refuses to parse.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, KeyUsage, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::time::ASN1Time;

use crate::bundle::Bundle;
use crate::id::{parse_spiffe_id, IdError, SpiffeId, TrustDomain};
use crate::owner::{BindingError, OwnerBinding, OWNER_BINDING_OID_DER};

/// Why a certificate or chain is not a valid X509-SVID.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum X509SvidError {
    #[error("certificate {index} does not parse: {reason}")]
    Malformed { index: usize, reason: String },
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("leaf has no URI SAN; an X509-SVID carries exactly one (X509-SVID 2)")]
    NoUriSan,
    #[error("leaf has {count} URI SANs; an X509-SVID carries exactly one (X509-SVID 2)")]
    MultipleUriSans { count: usize },
    #[error("leaf URI SAN is not a SPIFFE ID: {0}")]
    InvalidSpiffeId(IdError),
    #[error("leaf has cA=true; leaf SVIDs must not be CAs (X509-SVID 4.1)")]
    LeafIsCa,
    #[error("leaf has no keyUsage extension (X509-SVID 4.3)")]
    MissingKeyUsage,
    #[error("leaf keyUsage is not marked critical (X509-SVID 4.3)")]
    KeyUsageNotCritical,
    #[error("leaf keyUsage lacks digitalSignature (X509-SVID 4.3)")]
    MissingDigitalSignature,
    #[error("leaf keyUsage sets {usage}, which leaf SVIDs must not (X509-SVID 4.3)")]
    ForbiddenKeyUsage { usage: &'static str },
    #[error("leaf extendedKeyUsage lacks {purpose} (X509-SVID 4.4)")]
    MissingExtendedKeyUsage { purpose: &'static str },
    #[error("signing certificate {index} is not a CA (cA=false or no basicConstraints)")]
    SigningCertNotCa { index: usize },
    #[error("signing certificate {index} lacks keyCertSign (X509-SVID 4.3)")]
    SigningCertCannotSign { index: usize },
    #[error("signing certificate {index} has SPIFFE ID {id} with a path; CA IDs have none (X509-SVID 3)")]
    SigningCertIdHasPath { index: usize, id: String },
    #[error("no bundle for trust domain {0}")]
    NoBundle(String),
    #[error("chain does not verify against the {trust_domain} bundle: {reason}")]
    Untrusted {
        trust_domain: String,
        reason: String,
    },
    #[error("leaf owner binding: {0}")]
    OwnerBinding(BindingError),
}

/// What a valid leaf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub spiffe_id: SpiffeId,
    pub dns_names: Vec<String>,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Who answers for the workload, when the leaf carries a binding.
    pub owner: Option<OwnerBinding>,
}

/// The extensions the SVID rules look at.
#[derive(Default)]
struct Extensions<'a> {
    uris: Vec<String>,
    dns_names: Vec<String>,
    /// `cA` of basicConstraints, when present.
    basic_constraints: Option<bool>,
    key_usage: Option<(KeyUsage, bool)>,
    /// Whether extendedKeyUsage names serverAuth and clientAuth, when present.
    extended_key_usage: Option<(bool, bool)>,
    /// The owner binding extension's value, not yet decoded.
    owner: Option<&'a [u8]>,
}

/// The longest serial number `x509-cert` accepted (20 octets plus a sign
/// octet); kept so the parser change admits nothing new.
const MAX_SERIAL_BYTES: usize = 21;

fn malformed(index: usize, reason: impl ToString) -> X509SvidError {
    X509SvidError::Malformed {
        index,
        reason: reason.to_string(),
    }
}

/// One whole certificate: bytes after it are an error, not ignored.
fn parse(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, X509SvidError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| malformed(index, e))?;
    if !rest.is_empty() {
        return Err(malformed(
            index,
            format!("{} bytes follow the certificate", rest.len()),
        ));
    }
    let serial_len = cert.tbs_certificate.raw_serial().len();
    if serial_len > MAX_SERIAL_BYTES {
        return Err(malformed(
            index,
            format!("serial number is {serial_len} bytes; at most {MAX_SERIAL_BYTES}"),
        ));
    }
    Ok(cert)
}

/// The SVID extensions of `cert`, and its owner binding's raw value. A
/// second owner binding is malformed (RFC 5280 4.2: at most one instance).
fn extensions<'a>(
    index: usize,
    cert: &X509Certificate<'a>,
) -> Result<Extensions<'a>, X509SvidError> {
    let mut out = Extensions::default();
    for ext in cert.extensions() {
        if ext.oid.as_bytes() == OWNER_BINDING_OID_DER {
            if out.owner.replace(ext.value).is_some() {
                return Err(malformed(
                    index,
                    "the owner binding extension appears twice",
                ));
            }
            continue;
        }
        read_svid_extension(index, ext, &mut out)?;
    }
    Ok(out)
}

/// Records `ext` if it is one the SVID rules use. Only those must parse, as
/// before: an extension the rules never read cannot refuse a certificate.
fn read_svid_extension(
    index: usize,
    ext: &X509Extension<'_>,
    out: &mut Extensions<'_>,
) -> Result<(), X509SvidError> {
    let used = [
        &OID_X509_EXT_SUBJECT_ALT_NAME,
        &OID_X509_EXT_BASIC_CONSTRAINTS,
        &OID_X509_EXT_KEY_USAGE,
        &OID_X509_EXT_EXTENDED_KEY_USAGE,
    ];
    if !used.contains(&&ext.oid) {
        return Ok(());
    }
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => out.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => out.dns_names.push((*dns).to_owned()),
                    GeneralName::Invalid(tag, _) => {
                        return Err(malformed(
                            index,
                            format!("subjectAltName entry with tag {tag} is not valid"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        ParsedExtension::BasicConstraints(bc) => out.basic_constraints = Some(bc.ca),
        ParsedExtension::KeyUsage(usage) => out.key_usage = Some((*usage, ext.critical)),
        ParsedExtension::ExtendedKeyUsage(eku) => {
            out.extended_key_usage = Some((eku.server_auth, eku.client_auth))
        }
        ParsedExtension::ParseError { error } => {
            return Err(malformed(index, format!("extension {}: {error}", ext.oid)))
        }
        // The parser gives these OIDs their own variants; anything else is
        // refused rather than read as absent.
        other => {
            return Err(malformed(
                index,
                format!("extension {} parsed as {other:?}", ext.oid),
            ))
        }
    }
    Ok(())
}

/// A certificate time; times before 1970 clamp to the epoch.
fn system_time(t: ASN1Time) -> SystemTime {
    let secs = u64::try_from(t.timestamp()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The owner binding a leaf carries, if any; a malformed one is an error.
fn owner_binding(value: Option<&[u8]>) -> Result<Option<OwnerBinding>, X509SvidError> {
    value
        .map(OwnerBinding::from_der)
        .transpose()
        .map_err(X509SvidError::OwnerBinding)
}

/// Checks the leaf rules of X509-SVID.md and returns what the leaf says.
pub fn check_leaf(der: &[u8]) -> Result<LeafInfo, X509SvidError> {
    let cert = parse(0, der)?;
    let ext = extensions(0, &cert)?;
    let uri = match ext.uris.as_slice() {
        [] => return Err(X509SvidError::NoUriSan),
        [one] => one,
        many => return Err(X509SvidError::MultipleUriSans { count: many.len() }),
    };
    let spiffe_id = parse_spiffe_id(uri).map_err(X509SvidError::InvalidSpiffeId)?;
    if ext.basic_constraints == Some(true) {
        return Err(X509SvidError::LeafIsCa);
    }
    let (usage, critical) = ext.key_usage.ok_or(X509SvidError::MissingKeyUsage)?;
    if !critical {
        return Err(X509SvidError::KeyUsageNotCritical);
    }
    if !usage.digital_signature() {
        return Err(X509SvidError::MissingDigitalSignature);
    }
    if usage.key_cert_sign() {
        return Err(X509SvidError::ForbiddenKeyUsage {
            usage: "keyCertSign",
        });
    }
    if usage.crl_sign() {
        return Err(X509SvidError::ForbiddenKeyUsage { usage: "cRLSign" });
    }
    if let Some((server_auth, client_auth)) = ext.extended_key_usage {
        for (present, purpose) in [
            (server_auth, "id-kp-serverAuth"),
            (client_auth, "id-kp-clientAuth"),
        ] {
            if !present {
                return Err(X509SvidError::MissingExtendedKeyUsage { purpose });
            }
        }
    }
    let owner = owner_binding(ext.owner)?;
    let validity = cert.validity();
    Ok(LeafInfo {
        spiffe_id,
        dns_names: ext.dns_names,
        serial_hex: hex_lower(cert.tbs_certificate.raw_serial()),
        not_before: system_time(validity.not_before),
        not_after: system_time(validity.not_after),
        owner,
    })
}

/// Checks the signing-certificate rules for the certificate at `index` of a chain.
pub fn check_signing_certificate(index: usize, der: &[u8]) -> Result<(), X509SvidError> {
    let cert = parse(index, der)?;
    let ext = extensions(index, &cert)?;
    if ext.basic_constraints != Some(true) {
        return Err(X509SvidError::SigningCertNotCa { index });
    }
    if !ext
        .key_usage
        .is_some_and(|(usage, _)| usage.key_cert_sign())
    {
        return Err(X509SvidError::SigningCertCannotSign { index });
    }
    for uri in &ext.uris {
        if let Ok(id) = parse_spiffe_id(uri) {
            if !id.path().is_empty() {
                return Err(X509SvidError::SigningCertIdHasPath {
                    index,
                    id: id.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Validates an X509-SVID chain (leaf first) against the bundle of the leaf's
/// trust domain, as found by `bundle_for`, at time `now`.
pub fn verify_chain<'b>(
    chain: &[Vec<u8>],
    bundle_for: impl Fn(&TrustDomain) -> Option<&'b Bundle>,
    now: SystemTime,
) -> Result<LeafInfo, X509SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(X509SvidError::EmptyChain)?;
    let info = check_leaf(leaf)?;
    for (offset, der) in intermediates.iter().enumerate() {
        check_signing_certificate(offset + 1, der)?;
    }
    let trust_domain = info.spiffe_id.trust_domain();
    let bundle = bundle_for(trust_domain)
        .ok_or_else(|| X509SvidError::NoBundle(trust_domain.to_string()))?;
    let untrusted = |reason: String| X509SvidError::Untrusted {
        trust_domain: trust_domain.to_string(),
        reason,
    };
    let anchor_ders: Vec<CertificateDer<'_>> = bundle
        .x509_authorities()
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let anchors = anchor_ders
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).map_err(|e| untrusted(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| untrusted(e.to_string()))?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediate_ders,
            UnixTime::since_unix_epoch(since_epoch),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| untrusted(format!("{e:?}")))?;
    Ok(info)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints as RcBc, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        der: Vec<u8>,
    }

    fn ca(td: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(RcBc::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { key, params, der }
    }

    fn leaf_params(uris: &[&str]) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params
    }

    fn sign(params: CertificateParams, ca: &Ca) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    fn bundle_of(ca: &Ca, td: &str) -> Bundle {
        let mut bundle = Bundle::new(TrustDomain::new(td).unwrap());
        bundle.add_x509_authority(ca.der.clone());
        bundle
    }

    #[test]
    fn leaf_rules_table() {
        let authority = ca("example.org");
        let good = || leaf_params(&["spiffe://example.org/web"]);
        type Mutate = fn(&mut CertificateParams);
        let cases: Vec<(&str, Mutate, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "no uri san",
                |p| p.subject_alt_names.clear(),
                Some("no URI SAN"),
            ),
            (
                "two uri sans",
                |p| {
                    p.subject_alt_names
                        .push(SanType::URI("spiffe://example.org/b".try_into().unwrap()))
                },
                Some("2 URI SANs"),
            ),
            (
                "uri san not spiffe",
                |p| {
                    p.subject_alt_names =
                        vec![SanType::URI("https://example.org/a".try_into().unwrap())]
                },
                Some("not a SPIFFE ID"),
            ),
            (
                "dns san allowed",
                |p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("web.example.org".try_into().unwrap()))
                },
                None,
            ),
            (
                "leaf is ca",
                |p| p.is_ca = IsCa::Ca(RcBc::Unconstrained),
                Some("cA=true"),
            ),
            (
                "no key usage",
                |p| p.key_usages.clear(),
                Some("no keyUsage"),
            ),
            (
                "no digital signature",
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
                Some("lacks digitalSignature"),
            ),
            (
                "key agreement allowed",
                |p| p.key_usages.push(KeyUsagePurpose::KeyAgreement),
                None,
            ),
            (
                "key cert sign forbidden",
                |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
                Some("keyCertSign"),
            ),
            (
                "crl sign forbidden",
                |p| p.key_usages.push(KeyUsagePurpose::CrlSign),
                Some("cRLSign"),
            ),
            (
                "eku without client auth",
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
                Some("id-kp-clientAuth"),
            ),
            ("no eku is fine", |p| p.extended_key_usages.clear(), None),
        ];
        for (name, mutate, expected) in cases {
            let mut params = good();
            mutate(&mut params);
            let der = sign(params, &authority);
            let result = check_leaf(&der);
            match expected {
                None => assert!(result.is_ok(), "{name}: {result:?}"),
                Some(needle) => {
                    let err = result.expect_err(name).to_string();
                    assert!(err.contains(needle), "{name}: {err}");
                }
            }
        }
    }

    #[test]
    fn leaf_key_usage_must_be_critical() {
        // rcgen always marks keyUsage critical, so flip the DER flag by hand:
        // the extension encodes as OID 2.5.29.15, BOOLEAN TRUE, OCTET STRING.
        let authority = ca("example.org");
        let mut der = sign(leaf_params(&["spiffe://example.org/web"]), &authority);
        let pattern = [0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff];
        let at = der
            .windows(pattern.len())
            .position(|w| w == pattern)
            .unwrap();
        der[at + 7] = 0x00;
        assert_eq!(check_leaf(&der), Err(X509SvidError::KeyUsageNotCritical));
    }

    #[test]
    fn chain_verifies_only_against_own_trust_domain() {
        let ours = ca("example.org");
        let theirs = ca("other.org");
        let leaf = sign(leaf_params(&["spiffe://example.org/web"]), &ours);
        let ours_bundle = bundle_of(&ours, "example.org");
        let theirs_bundle = bundle_of(&theirs, "other.org");
        let now = SystemTime::now();
        let info = verify_chain(std::slice::from_ref(&leaf), |_| Some(&ours_bundle), now).unwrap();
        assert_eq!(info.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(
            info.owner, None,
            "a leaf without the extension has no owner"
        );

        let wrong =
            verify_chain(std::slice::from_ref(&leaf), |_| Some(&theirs_bundle), now).unwrap_err();
        assert!(matches!(wrong, X509SvidError::Untrusted { .. }), "{wrong}");
        let none = verify_chain(std::slice::from_ref(&leaf), |_| None, now).unwrap_err();
        assert_eq!(none, X509SvidError::NoBundle("example.org".into()));
        let later = now + Duration::from_secs(2 * 3600);
        assert!(verify_chain(&[leaf], |_| Some(&ours_bundle), later).is_err());
        assert_eq!(
            verify_chain(&[], |_| Some(&ours_bundle), now),
            Err(X509SvidError::EmptyChain)
        );
    }

    #[test]
    fn signing_certificate_rules() {
        let root = ca("example.org");
        assert!(check_signing_certificate(1, &root.der).is_ok());
        let leaf = sign(leaf_params(&["spiffe://example.org/web"]), &root);
        assert_eq!(
            check_signing_certificate(1, &leaf),
            Err(X509SvidError::SigningCertNotCa { index: 1 })
        );
        let mut no_sign = CertificateParams::new(Vec::<String>::new()).unwrap();
        no_sign.is_ca = IsCa::Ca(RcBc::Unconstrained);
        no_sign.key_usages = vec![KeyUsagePurpose::CrlSign];
        let der = sign(no_sign, &root);
        assert_eq!(
            check_signing_certificate(1, &der),
            Err(X509SvidError::SigningCertCannotSign { index: 1 })
        );
        let mut with_path = CertificateParams::new(Vec::<String>::new()).unwrap();
        with_path.is_ca = IsCa::Ca(RcBc::Unconstrained);
        with_path.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        with_path.subject_alt_names =
            vec![SanType::URI("spiffe://example.org/ca".try_into().unwrap())];
        let der = sign(with_path, &root);
        assert!(matches!(
            check_signing_certificate(1, &der),
            Err(X509SvidError::SigningCertIdHasPath { .. })
        ));
        assert!(matches!(
            check_leaf(b"not a certificate"),
            Err(X509SvidError::Malformed { .. })
        ));
    }
}
