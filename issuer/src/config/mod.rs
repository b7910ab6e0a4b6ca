//! Issuer configuration: a TOML file (unknown keys refused, naming the key),
//! overridden by command-line flags and environment variables, then validated
//! into the typed [`Config`] the subsystems use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use workload_api::config_file::{load_toml, parse_duration, required_trust_domain};
use workload_api::id::TrustDomain;
use workload_api::logging::{self, LogFormat};

pub use workload_api::config_file::ConfigError;

pub mod database;
pub mod federation;
pub mod k8s;
pub mod template;

use self::database::{DatabaseUrl, DatabaseUrlText};
use self::federation::{BundleEndpoint, BundleEndpointFile};
use self::k8s::K8sCluster;

use crate::ca::keys::KeyType;
use crate::ca::UpstreamCa;

/// The configuration file as written. Every key is optional so flags can fill in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// The store: a SQLite path (default: sigil.db in data_dir) or a
    /// postgres:// URL that several replicas share.
    pub database_url: Option<DatabaseUrlText>,
    /// The event log's signing key (a private Ed25519 JWK), made on first
    /// start if missing. Replicas sharing a database are given the same.
    pub log_key_file: Option<PathBuf>,
    pub agent_api_address: Option<String>,
    /// host:port of the public HTTP endpoint (CRLs, revocation list), or "off".
    pub http_address: Option<String>,
    pub admin_socket_path: Option<PathBuf>,
    pub ca_ttl: Option<String>,
    pub default_x509_svid_ttl: Option<String>,
    pub default_jwt_svid_ttl: Option<String>,
    pub default_wit_svid_ttl: Option<String>,
    pub agent_svid_ttl: Option<String>,
    pub join_token_ttl: Option<String>,
    pub ca_key_type: Option<String>,
    pub jwt_key_type: Option<String>,
    pub wit_key_type: Option<String>,
    /// The `iss` of WIT-SVIDs; none when unset.
    pub wit_issuer: Option<String>,
    /// The OIDC issuer URL: the `iss` of JWT-SVIDs and the base of the
    /// discovery document; OIDC discovery is off when unset.
    pub oidc_issuer: Option<String>,
    pub bundle_refresh_hint: Option<String>,
    /// Whether owner-bound X509-SVIDs carry the owner binding extension.
    pub x509_owner_extension: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub upstream_ca: Option<UpstreamCaFile>,
    /// Kubernetes clusters whose agents attest by k8s_psat.
    pub k8s_clusters: Option<Vec<k8s::ClusterFile>>,
    /// The SPIFFE Federation bundle endpoint; not served when absent.
    pub bundle_endpoint: Option<BundleEndpointFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCaFile {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub bundle_file: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_toml(path)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::TomlText { source })
    }

    /// Keeps `self`'s values where set, otherwise takes `fallback`'s.
    pub fn or(self, fallback: FileConfig) -> FileConfig {
        FileConfig {
            trust_domain: self.trust_domain.or(fallback.trust_domain),
            data_dir: self.data_dir.or(fallback.data_dir),
            database_url: self.database_url.or(fallback.database_url),
            log_key_file: self.log_key_file.or(fallback.log_key_file),
            agent_api_address: self.agent_api_address.or(fallback.agent_api_address),
            http_address: self.http_address.or(fallback.http_address),
            admin_socket_path: self.admin_socket_path.or(fallback.admin_socket_path),
            ca_ttl: self.ca_ttl.or(fallback.ca_ttl),
            default_x509_svid_ttl: self
                .default_x509_svid_ttl
                .or(fallback.default_x509_svid_ttl),
            default_jwt_svid_ttl: self.default_jwt_svid_ttl.or(fallback.default_jwt_svid_ttl),
            default_wit_svid_ttl: self.default_wit_svid_ttl.or(fallback.default_wit_svid_ttl),
            agent_svid_ttl: self.agent_svid_ttl.or(fallback.agent_svid_ttl),
            join_token_ttl: self.join_token_ttl.or(fallback.join_token_ttl),
            ca_key_type: self.ca_key_type.or(fallback.ca_key_type),
            jwt_key_type: self.jwt_key_type.or(fallback.jwt_key_type),
            wit_key_type: self.wit_key_type.or(fallback.wit_key_type),
            wit_issuer: self.wit_issuer.or(fallback.wit_issuer),
            oidc_issuer: self.oidc_issuer.or(fallback.oidc_issuer),
            bundle_refresh_hint: self.bundle_refresh_hint.or(fallback.bundle_refresh_hint),
            x509_owner_extension: self.x509_owner_extension.or(fallback.x509_owner_extension),
            log_level: self.log_level.or(fallback.log_level),
            log_format: self.log_format.or(fallback.log_format),
            upstream_ca: self.upstream_ca.or(fallback.upstream_ca),
            k8s_clusters: self.k8s_clusters.or(fallback.k8s_clusters),
            bundle_endpoint: self.bundle_endpoint.or(fallback.bundle_endpoint),
        }
    }
}

/// The validated issuer configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    /// Default: `<data_dir>/log/log.jwk`.
    pub log_key_file: PathBuf,
    pub agent_api_address: SocketAddr,
    /// Where relying parties fetch CRLs and the revocation list; None: not served.
    pub http_address: Option<SocketAddr>,
    pub admin_socket_path: PathBuf,
    pub ca_ttl: Duration,
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub default_wit_svid_ttl: Duration,
    pub agent_svid_ttl: Duration,
    pub join_token_ttl: Duration,
    pub ca_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub wit_key_type: KeyType,
    pub wit_issuer: Option<String>,
    /// The OIDC issuer URL, without a trailing slash.
    pub oidc_issuer: Option<String>,
    pub bundle_refresh_hint: Duration,
    /// Owner-bound X509-SVIDs carry the owner binding extension (default).
    /// Off for fleets of Go relying parties: Go's crypto/x509 cannot parse
    /// its 128-bit OID arc. Tokens carry the binding either way.
    pub x509_owner_extension: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    pub upstream_ca: Option<UpstreamCa>,
    /// Kubernetes clusters: k8s_psat node attestation, identity rules and
    /// the bundle ConfigMap.
    pub k8s_clusters: Vec<K8sCluster>,
    /// Where and how the bundle is served to other trust domains; None:
    /// not served.
    pub bundle_endpoint: Option<BundleEndpoint>,
}

pub const DEFAULT_AGENT_API_ADDRESS: &str = "0.0.0.0:8081";
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8082";
pub const DEFAULT_ADMIN_SOCKET: &str = "/tmp/sigil-issuer/private/admin.sock";

/// An OIDC issuer URL (OpenID Connect Discovery 1.0, section 4.1): https
/// (or http, for a proxy that terminates TLS in front of the issuer), a
/// host, no query or fragment; its trailing slash is dropped.
fn oidc_issuer(url: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "oidc_issuer",
        reason: format!("{url:?} {reason}"),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("is not an https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("has no host"));
    }
    if url.contains(['?', '#']) {
        return Err(invalid("has a query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn duration(
    key: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = parse_duration(value).map_err(|e| ConfigError::Invalid {
        key,
        reason: e.to_string(),
    })?;
    if parsed < Duration::from_secs(1) {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{value:?} is shorter than one second"),
        });
    }
    Ok(parsed)
}

fn key_type(key: &'static str, value: Option<&str>) -> Result<KeyType, ConfigError> {
    match value {
        None => Ok(KeyType::EcP256),
        Some(name) => KeyType::parse(name).ok_or_else(|| ConfigError::Invalid {
            key,
            reason: format!("{name:?} is not one of ec-p256, ec-p384, rsa-2048"),
        }),
    }
}

impl Config {
    /// Validates a merged file configuration.
    pub fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let trust_domain = required_trust_domain(file.trust_domain.as_deref())?;
        let data_dir = file
            .data_dir
            .ok_or(ConfigError::Missing { key: "data_dir" })?;
        let database_url = match &file.database_url {
            Some(text) => text.parse().map_err(|e| ConfigError::Invalid {
                key: "database_url",
                reason: e.to_string(),
            })?,
            None => DatabaseUrl::default_in(&data_dir),
        };
        let address = file
            .agent_api_address
            .as_deref()
            .unwrap_or(DEFAULT_AGENT_API_ADDRESS);
        let agent_api_address = address.parse().map_err(|e| ConfigError::Invalid {
            key: "agent_api_address",
            reason: format!("{address:?}: {e}"),
        })?;
        let http_address = match file.http_address.as_deref().unwrap_or(DEFAULT_HTTP_ADDRESS) {
            "off" => None,
            address => Some(address.parse().map_err(|e| ConfigError::Invalid {
                key: "http_address",
                reason: format!("{address:?}: {e} (or \"off\")"),
            })?),
        };
        let ca_ttl = duration(
            "ca_ttl",
            file.ca_ttl.as_deref(),
            Duration::from_secs(24 * 3600),
        )?;
        let default_x509_svid_ttl = duration(
            "default_x509_svid_ttl",
            file.default_x509_svid_ttl.as_deref(),
            Duration::from_secs(3600),
        )?;
        let default_jwt_svid_ttl = duration(
            "default_jwt_svid_ttl",
            file.default_jwt_svid_ttl.as_deref(),
            Duration::from_secs(300),
        )?;
        let default_wit_svid_ttl = duration(
            "default_wit_svid_ttl",
            file.default_wit_svid_ttl.as_deref(),
            Duration::from_secs(3600),
        )?;
        if let Some(iss) = &file.wit_issuer {
            if !iss.contains("://") {
                return Err(ConfigError::Invalid {
                    key: "wit_issuer",
                    reason: format!("{iss:?} is not a URI"),
                });
            }
        }
        let oidc_issuer = file.oidc_issuer.as_deref().map(oidc_issuer).transpose()?;
        let agent_svid_ttl = duration(
            "agent_svid_ttl",
            file.agent_svid_ttl.as_deref(),
            default_x509_svid_ttl,
        )?;
        let join_token_ttl = duration(
            "join_token_ttl",
            file.join_token_ttl.as_deref(),
            Duration::from_secs(600),
        )?;
        let bundle_refresh_hint = duration(
            "bundle_refresh_hint",
            file.bundle_refresh_hint.as_deref(),
            Duration::from_secs(300),
        )?;
        let lead = crate::ca::rotation::publication_lead(ca_ttl);
        if bundle_refresh_hint * crate::ca::rotation::HINTS_BEFORE_USE > lead {
            return Err(ConfigError::Invalid {
                key: "bundle_refresh_hint",
                reason: format!(
                    "{} is too long: a new key is published {} before it signs (a third of ca_ttl), \
                     which must span at least {} refresh hints",
                    humantime::format_duration(bundle_refresh_hint),
                    humantime::format_duration(lead),
                    crate::ca::rotation::HINTS_BEFORE_USE
                ),
            });
        }
        let log_format = LogFormat::parse(file.log_format.as_deref())?;
        let log_level = logging::parse_level(file.log_level.as_deref(), "info")?;
        Ok(Config {
            trust_domain,
            admin_socket_path: file
                .admin_socket_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            log_key_file: file
                .log_key_file
                .unwrap_or_else(|| data_dir.join("log").join("log.jwk")),
            data_dir,
            database_url,
            agent_api_address,
            http_address,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            default_wit_svid_ttl,
            agent_svid_ttl,
            join_token_ttl,
            ca_key_type: key_type("ca_key_type", file.ca_key_type.as_deref())?,
            jwt_key_type: key_type("jwt_key_type", file.jwt_key_type.as_deref())?,
            wit_key_type: key_type("wit_key_type", file.wit_key_type.as_deref())?,
            wit_issuer: file.wit_issuer,
            oidc_issuer,
            bundle_refresh_hint,
            x509_owner_extension: file.x509_owner_extension.unwrap_or(true),
            log_level,
            log_format,
            upstream_ca: file.upstream_ca.map(|u| UpstreamCa {
                cert_file: u.cert_file,
                key_file: u.key_file,
                bundle_file: u.bundle_file,
            }),
            k8s_clusters: K8sCluster::all_from_files(file.k8s_clusters.unwrap_or_default())?,
            bundle_endpoint: file
                .bundle_endpoint
                .map(BundleEndpoint::from_file)
                .transpose()?,
        })
    }

    /// A configuration with defaults for everything but the essentials.
    pub fn new(trust_domain: TrustDomain, data_dir: PathBuf) -> Self {
        Config::from_file(FileConfig {
            trust_domain: Some(trust_domain.to_string()),
            data_dir: Some(data_dir),
            ..FileConfig::default()
        })
        .expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_published_several_refresh_hints_before_use() {
        let parse = |ca_ttl: &str, hint: &str| {
            let text = format!(
                "trust_domain = \"example.org\"\ndata_dir = \"/d\"\nca_ttl = \"{ca_ttl}\"\nbundle_refresh_hint = \"{hint}\"\n"
            );
            Config::from_file(FileConfig::parse(&text).unwrap()).map_err(|e| e.to_string())
        };
        // The defaults: published 8h before use, 96 hints of 5 minutes.
        parse("24h", "5m").unwrap();
        parse("9h", "1h").unwrap();
        assert_eq!(
            parse("9h", "61m").unwrap_err(),
            "config key bundle_refresh_hint: 1h 1m is too long: a new key is published 3h before it \
             signs (a third of ca_ttl), which must span at least 3 refresh hints"
        );
    }

    #[test]
    fn oidc_issuers_are_urls_without_query_or_trailing_slash() {
        let parse = |url: &str| {
            Config::from_file(FileConfig {
                oidc_issuer: Some(url.into()),
                ..FileConfig::parse("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n").unwrap()
            })
            .map(|c| c.oidc_issuer.unwrap())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            parse("https://oidc.example.org/").unwrap(),
            "https://oidc.example.org"
        );
        assert_eq!(
            parse("https://example.org/tenant").unwrap(),
            "https://example.org/tenant"
        );
        assert!(parse("oidc.example.org")
            .unwrap_err()
            .contains("is not an https:// URL"));
        assert!(parse("https://example.org/?x=1")
            .unwrap_err()
            .contains("query or fragment"));
        assert!(parse("https:///x").unwrap_err().contains("has no host"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = FileConfig::parse("trust_domain = \"example.org\"\nca_tll = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca_tll"), "{err}");
        let err =
            FileConfig::parse("[upstream_ca]\ncert_file = \"a\"\nkey_file = \"b\"\nbogus = 1\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn defaults_and_validation() {
        let base =
            FileConfig::parse("trust_domain = \"example.org\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        let config = Config::from_file(base.clone()).unwrap();
        assert_eq!(config.ca_ttl, Duration::from_secs(86400));
        assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(config.ca_key_type, KeyType::EcP256);

        let bad = |text: &str| {
            let file = FileConfig::parse(text).unwrap().or(base.clone());
            Config::from_file(file).unwrap_err().to_string()
        };
        assert!(bad("ca_ttl = \"forever\"").contains("ca_ttl"));
        assert!(bad("ca_key_type = \"dsa\"").contains("ca_key_type"));
        assert!(bad("agent_api_address = \"nowhere\"").contains("agent_api_address"));
        assert!(bad("trust_domain = \"Bad Domain\"").contains("trust_domain"));
        assert!(bad("log_format = \"xml\"").contains("log_format"));
        let missing = Config::from_file(FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("trust_domain"), "{missing}");
    }

    #[test]
    fn bundle_endpoint_is_optional_and_validated() {
        let base = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
        let config = Config::from_file(FileConfig::parse(base).unwrap()).unwrap();
        assert_eq!(config.bundle_endpoint, None);
        let on = format!(
            "{base}[bundle_endpoint]\naddress = \"127.0.0.1:8443\"\nprofile = \"https_spiffe\"\n"
        );
        let config = Config::from_file(FileConfig::parse(&on).unwrap()).unwrap();
        assert_eq!(
            config.bundle_endpoint.unwrap().profile,
            federation::BundleEndpointProfile::HttpsSpiffe
        );
        let bad = format!("{base}[bundle_endpoint]\nprofile = \"https_spiffe\"\n");
        let error = Config::from_file(FileConfig::parse(&bad).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("bundle_endpoint.address"), "{error}");
        let unknown = format!("{base}[bundle_endpoint]\nadress = \"127.0.0.1:1\"\n");
        let error = FileConfig::parse(&unknown).unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
    }

    #[test]
    fn flags_override_file() {
        let file =
            FileConfig::parse("trust_domain = \"a.org\"\ndata_dir = \"/x\"\nca_ttl = \"2h\"")
                .unwrap();
        let flags = FileConfig {
            trust_domain: Some("b.org".into()),
            ..FileConfig::default()
        };
        let config = Config::from_file(flags.or(file)).unwrap();
        assert_eq!(config.trust_domain.as_str(), "b.org");
        assert_eq!(config.ca_ttl, Duration::from_secs(7200));
    }
}
