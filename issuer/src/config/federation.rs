//! The `[bundle_endpoint]` table: where and how the issuer serves its trust
//! bundle to other trust domains (SPIFFE_Federation.md section 5).
//!
//! ```toml
//! [bundle_endpoint]
//! address = "0.0.0.0:8443"
//! profile = "https_web"        # or "https_spiffe"
//! path = "/"                   # optional
//! cert_file = "/etc/sigil/bundle-endpoint/tls.crt"   # https_web only
//! key_file = "/etc/sigil/bundle-endpoint/tls.key"    # https_web only
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The longest bundle endpoint path accepted.
pub const MAX_PATH_BYTES: usize = 1024;

/// The `[bundle_endpoint]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointFile {
    pub address: Option<String>,
    pub profile: Option<String>,
    pub path: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How the bundle endpoint authenticates itself (section 5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEndpointProfile {
    /// `https_web`: a Web PKI certificate and key from PEM files, reloaded
    /// when they change.
    HttpsWeb {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// `https_spiffe`: the issuer's own X509-SVID.
    HttpsSpiffe,
}

/// The validated `[bundle_endpoint]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpoint {
    pub address: SocketAddr,
    /// The request path the bundle is served on; anything else is 404.
    pub path: String,
    pub profile: BundleEndpointProfile,
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// An absolute request path: starts with `/`, no query or fragment, only
/// characters a request line may carry.
fn path(value: &str) -> Result<String, ConfigError> {
    let refuse = |why: &str| {
        invalid(
            "bundle_endpoint.path",
            format!("{:?} {why}", workload_api::display::shown(value)),
        )
    };
    if !value.starts_with('/') {
        return Err(refuse("does not start with \"/\""));
    }
    if value.len() > MAX_PATH_BYTES {
        return Err(refuse(&format!("is longer than {MAX_PATH_BYTES} bytes")));
    }
    if value.contains(['?', '#']) {
        return Err(refuse("has a query or fragment"));
    }
    if value.parse::<hyper::http::uri::PathAndQuery>().is_err() {
        return Err(refuse(
            "is not a URL path (percent-encode spaces and other special characters)",
        ));
    }
    Ok(value.to_owned())
}

impl BundleEndpoint {
    pub fn from_file(file: BundleEndpointFile) -> Result<Self, ConfigError> {
        let address = file.address.ok_or(ConfigError::Missing {
            key: "bundle_endpoint.address",
        })?;
        let address = address.parse().map_err(|e| {
            invalid(
                "bundle_endpoint.address",
                format!("{:?}: {e}", workload_api::display::shown(&address)),
            )
        })?;
        let path = path(file.path.as_deref().unwrap_or("/"))?;
        let profile = match file.profile.as_deref() {
            None => {
                return Err(ConfigError::Missing {
                    key: "bundle_endpoint.profile",
                })
            }
            Some("https_web") => BundleEndpointProfile::HttpsWeb {
                cert_file: file.cert_file.ok_or(ConfigError::Missing {
                    key: "bundle_endpoint.cert_file",
                })?,
                key_file: file.key_file.ok_or(ConfigError::Missing {
                    key: "bundle_endpoint.key_file",
                })?,
            },
            Some("https_spiffe") => {
                // The endpoint presents the issuer's SVID; files given here
                // would be silently unused.
                for (key, given) in [
                    ("bundle_endpoint.cert_file", file.cert_file.is_some()),
                    ("bundle_endpoint.key_file", file.key_file.is_some()),
                ] {
                    if given {
                        return Err(invalid(
                            key,
                            "is for profile \"https_web\"; \"https_spiffe\" presents the \
                             issuer's own X509-SVID"
                                .into(),
                        ));
                    }
                }
                BundleEndpointProfile::HttpsSpiffe
            }
            Some(other) => {
                return Err(invalid(
                    "bundle_endpoint.profile",
                    format!(
                        "{:?} is not one of https_web, https_spiffe",
                        workload_api::display::shown(other)
                    ),
                ))
            }
        };
        Ok(BundleEndpoint {
            address,
            path,
            profile,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BundleEndpoint, String> {
        let file: BundleEndpointFile = toml::from_str(text).map_err(|e| e.to_string())?;
        BundleEndpoint::from_file(file).map_err(|e| e.to_string())
    }

    #[test]
    fn profiles_parse() {
        assert_eq!(
            parse(
                "address = \"0.0.0.0:8443\"\nprofile = \"https_web\"\n\
                 cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"
            )
            .unwrap(),
            BundleEndpoint {
                address: "0.0.0.0:8443".parse().unwrap(),
                path: "/".into(),
                profile: BundleEndpointProfile::HttpsWeb {
                    cert_file: "/c.pem".into(),
                    key_file: "/k.pem".into(),
                },
            }
        );
        let spiffe = parse(
            "address = \"127.0.0.1:0\"\nprofile = \"https_spiffe\"\npath = \"/b/bundle.json\"\n",
        )
        .unwrap();
        assert_eq!(spiffe.profile, BundleEndpointProfile::HttpsSpiffe);
        assert_eq!(spiffe.path, "/b/bundle.json");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            ("profile = \"https_spiffe\"\n", "bundle_endpoint.address"),
            (
                "address = \"nowhere\"\nprofile = \"https_spiffe\"\n",
                "bundle_endpoint.address",
            ),
            ("address = \"127.0.0.1:1\"\n", "bundle_endpoint.profile"),
            (
                "address = \"127.0.0.1:1\"\nprofile = \"http\"\n",
                "bundle_endpoint.profile",
            ),
            (
                "address = \"127.0.0.1:1\"\nprofile = \"https_web\"\nkey_file = \"/k\"\n",
                "bundle_endpoint.cert_file",
            ),
            (
                "address = \"127.0.0.1:1\"\nprofile = \"https_web\"\ncert_file = \"/c\"\n",
                "bundle_endpoint.key_file",
            ),
            (
                "address = \"127.0.0.1:1\"\nprofile = \"https_spiffe\"\ncert_file = \"/c\"\n",
                "bundle_endpoint.cert_file",
            ),
            (
                "address = \"127.0.0.1:1\"\nprofile = \"https_spiffe\"\nkey_file = \"/k\"\n",
                "bundle_endpoint.key_file",
            ),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(key), "{text:?}: {error}");
        }
    }

    #[test]
    fn paths_are_absolute_without_query() {
        let with_path = |p: &str| {
            parse(&format!(
                "address = \"127.0.0.1:1\"\nprofile = \"https_spiffe\"\npath = {p:?}\n"
            ))
        };
        assert_eq!(with_path("/a/b%20c").unwrap().path, "/a/b%20c");
        for (bad, why) in [
            ("bundle", "does not start with"),
            ("/b?x=1", "query or fragment"),
            ("/b#f", "query or fragment"),
            ("/a b", "is not a URL path"),
        ] {
            let error = with_path(bad).unwrap_err();
            assert!(
                error.contains("bundle_endpoint.path") && error.contains(why),
                "{bad:?}: {error}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(with_path(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let error =
            parse("address = \"127.0.0.1:1\"\nprofile = \"https_spiffe\"\nport = 1\n").unwrap_err();
        assert!(error.contains("port"), "{error}");
    }
}
