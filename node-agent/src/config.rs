//! Agent configuration: TOML (unknown keys refused, naming the key), overridden
//! by flags and environment variables, validated into [`AgentConfig`].

use std::path::{Path, PathBuf};

use serde::Deserialize;
use workload_api::config_file::{load_toml, required_trust_domain};
use workload_api::id::TrustDomain;
use workload_api::jwk::Algorithm;
use workload_api::logging::{self, LogFormat};

/// Why a configuration was refused; every variant names the key.
pub use workload_api::config_file::ConfigError;

/// The configuration file as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub issuer_address: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    /// A file holding the join token, so it need not appear in the process
    /// list or the configuration.
    pub join_token_file: Option<PathBuf>,
    pub trust_bundle_path: Option<PathBuf>,
    pub trust_bundle_url: Option<String>,
    pub insecure_bootstrap: Option<bool>,
    /// The algorithm of workload WIT keys: ES256 (default), ES384, RS256, PS256.
    pub wit_key_algorithm: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_toml(path)
    }

    /// Keeps `self`'s values where set, otherwise takes `fallback`'s.
    pub fn or(self, fallback: FileConfig) -> FileConfig {
        FileConfig {
            trust_domain: self.trust_domain.or(fallback.trust_domain),
            issuer_address: self.issuer_address.or(fallback.issuer_address),
            data_dir: self.data_dir.or(fallback.data_dir),
            socket_path: self.socket_path.or(fallback.socket_path),
            join_token: self.join_token.or(fallback.join_token),
            join_token_file: self.join_token_file.or(fallback.join_token_file),
            trust_bundle_path: self.trust_bundle_path.or(fallback.trust_bundle_path),
            trust_bundle_url: self.trust_bundle_url.or(fallback.trust_bundle_url),
            insecure_bootstrap: self.insecure_bootstrap.or(fallback.insecure_bootstrap),
            wit_key_algorithm: self.wit_key_algorithm.or(fallback.wit_key_algorithm),
            log_level: self.log_level.or(fallback.log_level),
            log_format: self.log_format.or(fallback.log_format),
        }
    }
}

/// The validated agent configuration. `Debug` hides the join token.
#[derive(Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    /// `host:port` of the issuer's agent API.
    pub issuer_address: String,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    pub join_token: Option<String>,
    /// PEM CA certificates or a SPIFFE bundle (JWK Set) to trust the issuer by.
    pub trust_bundle_path: Option<PathBuf>,
    /// An https URL serving the bundle, authenticated by the system's roots.
    pub trust_bundle_url: Option<String>,
    /// Trust the issuer's certificate unverified on first contact.
    pub insecure_bootstrap: bool,
    /// What workload WIT keys are and sign proofs with (`cnf.jwk.alg`).
    pub wit_key_alg: Algorithm,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("issuer_address", &self.issuer_address)
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "[redacted]"),
            )
            .field("trust_bundle_path", &self.trust_bundle_path)
            .field("trust_bundle_url", &self.trust_bundle_url)
            .field("insecure_bootstrap", &self.insecure_bootstrap)
            .field("wit_key_alg", &self.wit_key_alg)
            .finish()
    }
}

/// The algorithms a workload's WIT key may use.
pub const WIT_KEY_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
];

pub const DEFAULT_SOCKET: &str = "/tmp/sigil-agent/public/api.sock";
pub const DEFAULT_ISSUER_ADDRESS: &str = "127.0.0.1:8081";

impl AgentConfig {
    pub fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let trust_domain = required_trust_domain(file.trust_domain.as_deref())?;
        let issuer_address = file
            .issuer_address
            .unwrap_or_else(|| DEFAULT_ISSUER_ADDRESS.into());
        if issuer_address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ConfigError::Invalid {
                key: "issuer_address",
                reason: format!("{issuer_address:?} is not host:port"),
            });
        }
        let data_dir = file
            .data_dir
            .ok_or(ConfigError::Missing { key: "data_dir" })?;
        let join_token = match (file.join_token, &file.join_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "join_token_file",
                    reason: "set join_token or join_token_file, not both".into(),
                })
            }
            (token, None) => token,
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Invalid {
                        key: "join_token_file",
                        reason: format!("{}: {e}", path.display()),
                    })?
                    .trim()
                    .to_owned(),
            ),
        };
        if join_token.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                key: "join_token",
                reason: "empty".into(),
            });
        }
        if let Some(url) = &file.trust_bundle_url {
            if !url.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    key: "trust_bundle_url",
                    reason: format!("{url:?} must be an https URL"),
                });
            }
            if file.trust_bundle_path.is_some() {
                return Err(ConfigError::Invalid {
                    key: "trust_bundle_url",
                    reason: "set trust_bundle_path or trust_bundle_url, not both".into(),
                });
            }
        }
        let wit_key_alg = match file.wit_key_algorithm.as_deref() {
            None => Algorithm::ES256,
            Some(name) => WIT_KEY_ALGORITHMS
                .iter()
                .copied()
                .find(|alg| alg.name() == name)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "wit_key_algorithm",
                    reason: format!("{name:?} is not one of ES256, ES384, RS256, PS256"),
                })?,
        };
        let log_format = LogFormat::parse(file.log_format.as_deref())?;
        let log_level = logging::parse_level(file.log_level.as_deref(), "info")?;
        Ok(AgentConfig {
            trust_domain,
            issuer_address,
            data_dir,
            socket_path: file
                .socket_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            join_token,
            trust_bundle_path: file.trust_bundle_path,
            trust_bundle_url: file.trust_bundle_url,
            insecure_bootstrap: file.insecure_bootstrap.unwrap_or(false),
            wit_key_alg,
            log_level,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<FileConfig>("insecure_boostrap = true").unwrap_err();
        assert!(err.message().contains("insecure_boostrap"), "{err}");
        let base = FileConfig {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            ..FileConfig::default()
        };
        let bad_address = FileConfig {
            issuer_address: Some("nowhere".into()),
            ..FileConfig::default()
        };
        let err = AgentConfig::from_file(bad_address.or(base.clone())).unwrap_err();
        assert!(err.to_string().contains("issuer_address"), "{err}");
        for alg in ["EdDSA", "HS256", "es256"] {
            let bad_alg = FileConfig {
                wit_key_algorithm: Some(alg.into()),
                ..FileConfig::default()
            };
            let err = AgentConfig::from_file(bad_alg.or(base.clone())).unwrap_err();
            assert!(err.to_string().contains("wit_key_algorithm"), "{err}");
        }
        let config = AgentConfig::from_file(FileConfig {
            join_token: Some("s3cr3t".into()),
            ..base.clone()
        })
        .unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_join_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "f1le-t0ken\n").unwrap();
        let base = FileConfig {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            join_token_file: Some(path.clone()),
            ..FileConfig::default()
        };
        let config = AgentConfig::from_file(base.clone()).unwrap();
        assert_eq!(config.join_token.as_deref(), Some("f1le-t0ken"));
        let both = FileConfig {
            join_token: Some("other".into()),
            ..base.clone()
        };
        let err = AgentConfig::from_file(both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        let err = AgentConfig::from_file(base.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("join_token: empty"), "{err}");
        let missing = FileConfig {
            join_token_file: Some(dir.path().join("absent")),
            ..base
        };
        let err = AgentConfig::from_file(missing).unwrap_err().to_string();
        assert!(
            err.contains("join_token_file") && err.contains("absent"),
            "{err}"
        );
    }
}
