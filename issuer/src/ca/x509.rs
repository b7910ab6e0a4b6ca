//! Certificate templates: the signing (CA) certificate and the X509-SVID leaf
//! (X509-SVID.md section 2 for the URI SAN, 3 for leaf and signing
//! certificates, 4 for basic constraints and key usage; RFC 5280 profile).

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::owner::OwnerBinding;

use super::error::CaError;
use super::keys::SigningKey;
use super::owner_extension::{self, OidSwappingKey};

/// How far certificates are backdated, to absorb small clock differences.
const BACKDATE: std::time::Duration = std::time::Duration::from_secs(10);

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(uri.try_into()?))
}

/// A signing CA for `trust_domain`: cA=true, keyCertSign and cRLSign, the
/// trust domain's SPIFFE ID (no path) as its URI SAN.
pub fn ca_params(
    trust_domain: &TrustDomain,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Sigil");
    dn.push(
        DnType::CommonName,
        format!("Sigil CA {}", trust_domain.as_str()),
    );
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&crate::ids::serial_number()));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri_san(&trust_domain.id_string())?];
    params.not_before = (not_before - BACKDATE).into();
    params.not_after = not_after.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A workload or agent X509-SVID: one URI SAN, cA=false, critical keyUsage
/// digitalSignature, EKU serverAuth+clientAuth, explicit subject, DNS SANs,
/// and the owner binding extension when the workload has an owner.
pub fn svid_params(
    spiffe_id: &SpiffeId,
    dns_names: &[String],
    owner: Option<&OwnerBinding>,
    serial: &[u8],
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Sigil");
    if let Some(first) = dns_names.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![uri_san(&spiffe_id.to_string())?];
    for name in dns_names {
        sans.push(SanType::DnsName(name.as_str().try_into()?));
    }
    params.subject_alt_names = sans;
    if let Some(owner) = owner {
        params
            .custom_extensions
            .push(owner_extension::extension(owner));
    }
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// An rcgen issuer for a CA certificate and its key.
pub fn issuer_for(
    cert_der: &[u8],
    key: &SigningKey,
) -> Result<rcgen::Issuer<'static, OidSwappingKey>, CaError> {
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der()),
        rcgen::PublicKeyData::algorithm(key.rcgen()),
    )?;
    Ok(rcgen::Issuer::from_ca_cert_der(
        &CertificateDer::from(cert_der),
        OidSwappingKey(key_pair),
    )?)
}

/// The end of a certificate's validity, to cap what it signs.
pub fn not_after(cert_der: &[u8]) -> Result<SystemTime, CaError> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    Ok(cert.tbs_certificate.validity.not_after.to_system_time())
}

/// The start of a certificate's validity.
pub fn not_before(cert_der: &[u8]) -> Result<SystemTime, CaError> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    Ok(cert.tbs_certificate.validity.not_before.to_system_time())
}

/// Whether a certificate names itself as issuer: how the roots of an
/// upstream chain are told apart from its intermediates.
pub fn is_self_signed(cert_der: &[u8]) -> Result<bool, CaError> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    Ok(cert.tbs_certificate.issuer == cert.tbs_certificate.subject)
}
