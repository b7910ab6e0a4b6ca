//! The issuer's agent API addresses as configured: one or more `host:port`,
//! comma-separated where given as one string (a flag, an environment
//! variable). A name may stand for several replicas; it is resolved at each
//! connection attempt, not here.

use std::fmt;
use std::str::FromStr;

/// Why an issuer address list was refused; names the bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("no address given")]
    Empty,
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
}

/// One `host:port`: a name or an IP address (IPv6 in brackets), and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuerAddress(String);

impl FromStr for IssuerAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        let valid = text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if valid {
            Ok(IssuerAddress(text.to_owned()))
        } else {
            Err(AddressError::NotHostPort(text.to_owned()))
        }
    }
}

impl fmt::Display for IssuerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl IssuerAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The configured addresses, in the order given; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerAddresses(Vec<IssuerAddress>);

impl IssuerAddresses {
    pub fn iter(&self) -> impl Iterator<Item = &IssuerAddress> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for IssuerAddresses {
    type Err = AddressError;

    /// `host:port[,host:port...]`; spaces around an entry are ignored.
    fn from_str(text: &str) -> Result<Self, AddressError> {
        if text.trim().is_empty() {
            return Err(AddressError::Empty);
        }
        text.split(',')
            .map(|entry| entry.trim().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(IssuerAddresses)
    }
}

impl fmt::Display for IssuerAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, address) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{address}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_and_name_the_bad_entry() {
        let cases: &[(&str, Result<&[&str], AddressError>)] = &[
            ("issuer:8081", Ok(&["issuer:8081"])),
            ("10.0.0.1:8081", Ok(&["10.0.0.1:8081"])),
            ("[::1]:8081", Ok(&["[::1]:8081"])),
            (
                "a.example:1, b.example:2,a.example:1",
                Ok(&["a.example:1", "b.example:2", "a.example:1"]),
            ),
            ("", Err(AddressError::Empty)),
            (" ", Err(AddressError::Empty)),
            ("nowhere", Err(AddressError::NotHostPort("nowhere".into()))),
            (
                "a.example:1,b.example",
                Err(AddressError::NotHostPort("b.example".into())),
            ),
            (
                "a.example:1,,b.example:2",
                Err(AddressError::NotHostPort("".into())),
            ),
            (":8081", Err(AddressError::NotHostPort(":8081".into()))),
            (
                "a.example:65536",
                Err(AddressError::NotHostPort("a.example:65536".into())),
            ),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<IssuerAddresses>();
            let parsed = parsed
                .as_ref()
                .map(|list| list.iter().map(IssuerAddress::as_str).collect::<Vec<_>>());
            let expected = expected.clone().map(<[&str]>::to_vec);
            assert_eq!(parsed.map_err(Clone::clone), expected, "{text:?}");
        }
        let list: IssuerAddresses = "a:1, b:2".parse().unwrap();
        assert_eq!(list.to_string(), "a:1,b:2");
        assert_eq!(
            AddressError::NotHostPort("b".into()).to_string(),
            "\"b\" is not host:port"
        );
    }
}
