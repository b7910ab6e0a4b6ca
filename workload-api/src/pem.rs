//! PEM text (RFC 7468): the certificates and keys operators hand Sigil as
//! files, and the bundles and SVIDs Sigil writes for tools such as openssl.

/// Every PEM block labelled `label` in `text`, decoded. Blocks with other
/// labels are skipped; text that is not PEM yields nothing.
pub fn blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .collect()
}

/// `der` as one PEM block labelled `label`, lines ending in LF.
pub fn encode(label: &str, der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(label, der),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// One DER certificate as a PEM block.
pub fn certificate(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_and_other_labels_are_skipped() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x07];
        let text = format!(
            "{}-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n{}",
            certificate(&der),
            certificate(&[1, 2, 3])
        );
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\nMAMCAQc=\n"));
        assert_eq!(blocks(&text, "CERTIFICATE"), vec![der, vec![1, 2, 3]]);
        assert_eq!(blocks(&text, "PRIVATE KEY"), vec![vec![0, 1, 2]]);
        assert!(blocks("not pem", "CERTIFICATE").is_empty());
    }
}
