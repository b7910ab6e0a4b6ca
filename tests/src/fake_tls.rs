//! TLS for the fake Kubernetes servers: a fresh CA with a serving
//! certificate from it, and the rustls acceptor that presents it.

use std::sync::Arc;

/// A serving certificate and the CA that signed it.
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    /// The CA a client is to trust, PEM.
    pub ca_pem: String,
    pub chain_der: Vec<Vec<u8>>,
    pub key_pkcs8_der: Vec<u8>,
}

impl ServingCertificate {
    /// A CA named `ca_name` and a certificate from it for `subject`, with
    /// `dns_names` and `ips` as its subject alternative names.
    pub fn generate(ca_name: &str, subject: &str, dns_names: &[&str], ips: &[[u8; 4]]) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            dns_names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress((*ip).into()));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        let cert = params.signed_by(&key, &issuer).unwrap();
        ServingCertificate {
            ca_pem: ca.pem(),
            chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
        }
    }

    /// A TLS acceptor presenting this certificate, offering `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            self.chain_der
                .iter()
                .map(|d| rustls::pki_types::CertificateDer::from(d.clone()))
                .collect(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_pkcs8_der.clone().into()),
        )
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
