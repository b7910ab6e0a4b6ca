//! Agent configuration: TOML (unknown keys refused, naming the key), overridden
//! by flags and environment variables, validated into [`AgentConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use workload_api::config_file::{load_toml, parse_duration, required_trust_domain};
use workload_api::id::TrustDomain;
use workload_api::jwk::Algorithm;
use workload_api::logging::{self, LogFormat};

use crate::attestor::k8s::{self, kubelet::KubeletTrust, K8sConfig};
use crate::failover::address::IssuerAddresses;

/// Why a configuration was refused; every variant names the key.
pub use workload_api::config_file::ConfigError;

/// The configuration file as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    /// The issuer's agent API: `host:port`, or several (replicas) as a
    /// list or a comma-separated string; kept comma-separated here.
    #[serde(default, deserialize_with = "one_or_many")]
    pub issuer_address: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    /// A file holding the join token, so it need not appear in the process
    /// list or the configuration.
    pub join_token_file: Option<PathBuf>,
    /// How the agent attests its node: `join_token` (default) or `k8s_psat`.
    pub node_attestor: Option<String>,
    /// k8s_psat: the cluster's name as configured on the issuer.
    pub k8s_psat_cluster: Option<String>,
    /// k8s_psat: the projected service account token, re-read at each attestation.
    pub k8s_psat_token_path: Option<PathBuf>,
    pub trust_bundle_path: Option<PathBuf>,
    pub trust_bundle_url: Option<String>,
    pub insecure_bootstrap: Option<bool>,
    /// The algorithm of workload WIT keys: ES256 (default), ES384, RS256, PS256.
    pub wit_key_algorithm: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// `host:port` serving /live, /ready and /metrics over HTTP; off when unset.
    pub health_address: Option<String>,
    /// Adds the Kubernetes workload attestor's `k8s` selectors (default off).
    pub k8s_workload_attestor: Option<bool>,
    /// `https://host:port` of the kubelet's authenticated port.
    pub kubelet_address: Option<String>,
    /// PEM CA certificates the kubelet's serving certificate is checked with.
    pub kubelet_ca_path: Option<PathBuf>,
    /// The service account token sent to the kubelet, re-read for each request.
    pub kubelet_token_path: Option<PathBuf>,
    /// Accept any kubelet certificate.
    pub kubelet_skip_verification_dangerous: Option<bool>,
    /// How many times the pod list is read for a starting container.
    pub k8s_pod_retries: Option<u32>,
    /// The pause between those reads (`250ms`).
    pub k8s_pod_retry_interval: Option<String>,
}

/// A string, or a list of strings joined with commas (the form flags and
/// environment variables give a list in).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("issuer_address as \"host:port\" or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, one: &str) -> Result<String, E> {
            Ok(one.to_owned())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut many = Vec::new();
            while let Some(one) = seq.next_element::<String>()? {
                many.push(one);
            }
            Ok(many.join(","))
        }
    }
    deserializer.deserialize_any(OneOrMany).map(Some)
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
            node_attestor: self.node_attestor.or(fallback.node_attestor),
            k8s_psat_cluster: self.k8s_psat_cluster.or(fallback.k8s_psat_cluster),
            k8s_psat_token_path: self.k8s_psat_token_path.or(fallback.k8s_psat_token_path),
            trust_bundle_path: self.trust_bundle_path.or(fallback.trust_bundle_path),
            trust_bundle_url: self.trust_bundle_url.or(fallback.trust_bundle_url),
            insecure_bootstrap: self.insecure_bootstrap.or(fallback.insecure_bootstrap),
            wit_key_algorithm: self.wit_key_algorithm.or(fallback.wit_key_algorithm),
            log_level: self.log_level.or(fallback.log_level),
            log_format: self.log_format.or(fallback.log_format),
            health_address: self.health_address.or(fallback.health_address),
            k8s_workload_attestor: self
                .k8s_workload_attestor
                .or(fallback.k8s_workload_attestor),
            kubelet_address: self.kubelet_address.or(fallback.kubelet_address),
            kubelet_ca_path: self.kubelet_ca_path.or(fallback.kubelet_ca_path),
            kubelet_token_path: self.kubelet_token_path.or(fallback.kubelet_token_path),
            kubelet_skip_verification_dangerous: self
                .kubelet_skip_verification_dangerous
                .or(fallback.kubelet_skip_verification_dangerous),
            k8s_pod_retries: self.k8s_pod_retries.or(fallback.k8s_pod_retries),
            k8s_pod_retry_interval: self
                .k8s_pod_retry_interval
                .or(fallback.k8s_pod_retry_interval),
        }
    }
}

/// The validated agent configuration. `Debug` hides the join token.
#[derive(Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    /// The issuer's agent API: one `host:port`, or several replicas the
    /// agent fails over between.
    pub issuer_address: IssuerAddresses,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    pub join_token: Option<String>,
    /// How the node is attested when the agent has no valid SVID.
    pub node_attestor: NodeAttestor,
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
    /// Where /live, /ready and /metrics are served; None: not served.
    pub health_address: Option<std::net::SocketAddr>,
    /// The Kubernetes workload attestor, when on.
    pub k8s: Option<K8sConfig>,
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
            .field("node_attestor", &self.node_attestor)
            .field("trust_bundle_path", &self.trust_bundle_path)
            .field("trust_bundle_url", &self.trust_bundle_url)
            .field("insecure_bootstrap", &self.insecure_bootstrap)
            .field("wit_key_alg", &self.wit_key_alg)
            .field("k8s", &self.k8s)
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

/// How the agent proves its node to the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestor {
    /// A single-use join token (`join_token` / `join_token_file`).
    JoinToken,
    /// The pod's projected service account token, reviewed by the issuer
    /// with the cluster's API server.
    K8sPsat {
        cluster: String,
        token_path: PathBuf,
    },
}

/// Where Kubernetes mounts the agent's projected token (the Helm chart's path).
pub const DEFAULT_K8S_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/sigil-agent";

pub const DEFAULT_SOCKET: &str = "/tmp/sigil-agent/public/api.sock";
pub const DEFAULT_ISSUER_ADDRESS: &str = "127.0.0.1:8081";

impl AgentConfig {
    pub fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let trust_domain = required_trust_domain(file.trust_domain.as_deref())?;
        let k8s = k8s_config(&file)?;
        let node_attestor = node_attestor(
            &file,
            file.join_token.is_some() || file.join_token_file.is_some(),
        )?;
        let issuer_address = file
            .issuer_address
            .as_deref()
            .unwrap_or(DEFAULT_ISSUER_ADDRESS)
            .parse::<IssuerAddresses>()
            .map_err(|e| ConfigError::Invalid {
                key: "issuer_address",
                reason: e.to_string(),
            })?;
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
        let health_address = file
            .health_address
            .as_deref()
            .map(|address| {
                address.parse().map_err(|_| ConfigError::Invalid {
                    key: "health_address",
                    reason: format!("{address:?} is not host:port with an IP address"),
                })
            })
            .transpose()?;
        Ok(AgentConfig {
            trust_domain,
            issuer_address,
            data_dir,
            socket_path: file
                .socket_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            join_token,
            node_attestor,
            trust_bundle_path: file.trust_bundle_path,
            trust_bundle_url: file.trust_bundle_url,
            insecure_bootstrap: file.insecure_bootstrap.unwrap_or(false),
            wit_key_alg,
            log_level,
            log_format,
            health_address,
            k8s,
        })
    }
}

/// The node attestor's keys, validated.
fn node_attestor(file: &FileConfig, has_join_token: bool) -> Result<NodeAttestor, ConfigError> {
    match file.node_attestor.as_deref().unwrap_or("join_token") {
        "join_token" => {
            let stray = [
                ("k8s_psat_cluster", file.k8s_psat_cluster.is_some()),
                ("k8s_psat_token_path", file.k8s_psat_token_path.is_some()),
            ];
            if let Some((key, _)) = stray.into_iter().find(|(_, set)| *set) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "only used with node_attestor = \"k8s_psat\"".into(),
                });
            }
            Ok(NodeAttestor::JoinToken)
        }
        "k8s_psat" => {
            if has_join_token {
                return Err(ConfigError::Invalid {
                    key: "join_token",
                    reason: "not used with node_attestor = \"k8s_psat\"".into(),
                });
            }
            let cluster = file
                .k8s_psat_cluster
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or(ConfigError::Missing {
                    key: "k8s_psat_cluster",
                })?;
            Ok(NodeAttestor::K8sPsat {
                cluster,
                token_path: file
                    .k8s_psat_token_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_PSAT_TOKEN_PATH)),
            })
        }
        other => Err(ConfigError::Invalid {
            key: "node_attestor",
            reason: format!("{other:?} is not join_token or k8s_psat"),
        }),
    }
}

/// The Kubernetes workload attestor's keys, validated; `None` when it is off.
fn k8s_config(file: &FileConfig) -> Result<Option<K8sConfig>, ConfigError> {
    if !file.k8s_workload_attestor.unwrap_or(false) {
        let stray = [
            ("kubelet_address", file.kubelet_address.is_some()),
            ("kubelet_ca_path", file.kubelet_ca_path.is_some()),
            ("kubelet_token_path", file.kubelet_token_path.is_some()),
            (
                "kubelet_skip_verification_dangerous",
                file.kubelet_skip_verification_dangerous.is_some(),
            ),
            ("k8s_pod_retries", file.k8s_pod_retries.is_some()),
            (
                "k8s_pod_retry_interval",
                file.k8s_pod_retry_interval.is_some(),
            ),
        ];
        if let Some((key, _)) = stray.into_iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                key,
                reason: "only used with k8s_workload_attestor = true".into(),
            });
        }
        return Ok(None);
    }
    let address = file
        .kubelet_address
        .as_deref()
        .unwrap_or(k8s::DEFAULT_KUBELET_ADDRESS);
    let kubelet_address =
        parse_kubelet_address(address).map_err(|reason| ConfigError::Invalid {
            key: "kubelet_address",
            reason: format!("{address:?} {reason}"),
        })?;
    let kubelet_trust = if file.kubelet_skip_verification_dangerous.unwrap_or(false) {
        if file.kubelet_ca_path.is_some() {
            return Err(ConfigError::Invalid {
                key: "kubelet_ca_path",
                reason: "set kubelet_ca_path or kubelet_skip_verification_dangerous, not both"
                    .into(),
            });
        }
        KubeletTrust::DangerousSkipVerification
    } else {
        let path = file
            .kubelet_ca_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(k8s::DEFAULT_KUBELET_CA_PATH));
        let invalid = |reason: String| ConfigError::Invalid {
            key: "kubelet_ca_path",
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(e.to_string()))?;
        let ders = k8s::kubelet::ca_certificates(&text).map_err(invalid)?;
        KubeletTrust::CaCertificates { path, ders }
    };
    let pod_retries = file.k8s_pod_retries.unwrap_or(k8s::DEFAULT_POD_RETRIES);
    if !(1..=100).contains(&pod_retries) {
        return Err(ConfigError::Invalid {
            key: "k8s_pod_retries",
            reason: format!("{pod_retries} is not from 1 to 100"),
        });
    }
    let pod_retry_interval = match file.k8s_pod_retry_interval.as_deref() {
        None => k8s::DEFAULT_POD_RETRY_INTERVAL,
        Some(text) => {
            let interval = parse_duration(text).map_err(|e| ConfigError::Invalid {
                key: "k8s_pod_retry_interval",
                reason: e.to_string(),
            })?;
            if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&interval) {
                return Err(ConfigError::Invalid {
                    key: "k8s_pod_retry_interval",
                    reason: format!("{text:?} is not from 10ms to 10s"),
                });
            }
            interval
        }
    };
    Ok(Some(K8sConfig {
        kubelet_address,
        kubelet_trust,
        token_path: file
            .kubelet_token_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(k8s::DEFAULT_KUBELET_TOKEN_PATH)),
        pod_retries,
        pod_retry_interval,
        pod_list_ttl: k8s::DEFAULT_POD_LIST_TTL,
        kubelet_timeout: k8s::DEFAULT_KUBELET_TIMEOUT,
        proc_root: PathBuf::from("/proc"),
    }))
}

/// `https://host:port` (the port defaulting to 443), nothing after it.
fn parse_kubelet_address(address: &str) -> Result<hyper::Uri, &'static str> {
    let uri: hyper::Uri = address.parse().map_err(|_| "is not a URL")?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https URL");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    let bare = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    if !bare {
        return Err("must be https://host:port, without a path or query");
    }
    Ok(uri)
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
    fn issuer_address_is_one_address_or_a_list() {
        let parse = |line: &str| {
            let text = format!("trust_domain = \"example.org\"\ndata_dir = \"/tmp/x\"\n{line}");
            let file: FileConfig = toml::from_str(&text).map_err(|e| e.message().to_owned())?;
            AgentConfig::from_file(file).map_err(|e| e.to_string())
        };
        let one = parse("issuer_address = \"issuer.example:8081\"").unwrap();
        assert_eq!(one.issuer_address.to_string(), "issuer.example:8081");
        assert_eq!(one.issuer_address.len(), 1);
        let list = parse("issuer_address = [\"10.0.0.1:8081\", \"issuer.example:8081\"]").unwrap();
        assert_eq!(
            list.issuer_address.to_string(),
            "10.0.0.1:8081,issuer.example:8081"
        );
        let addresses: Vec<String> = list
            .issuer_address
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["10.0.0.1:8081", "issuer.example:8081"]);
        assert_eq!(
            parse("").unwrap().issuer_address.to_string(),
            DEFAULT_ISSUER_ADDRESS
        );
        let refused = [
            (
                "issuer_address = [\"10.0.0.1:8081\", \"issuer.example\"]",
                "config key issuer_address: \"issuer.example\" is not host:port",
            ),
            (
                "issuer_address = \"10.0.0.1:8081,:8081\"",
                "config key issuer_address: \":8081\" is not host:port",
            ),
            (
                "issuer_address = []",
                "config key issuer_address: no address given",
            ),
            (
                "issuer_address = 8081",
                "issuer_address as \"host:port\" or a list",
            ),
            ("issuer_address = [8081]", "expected a string"),
        ];
        for (line, expected) in refused {
            let err = parse(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
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

    #[test]
    fn node_attestor_keys() {
        let base = FileConfig {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            ..FileConfig::default()
        };
        let config = AgentConfig::from_file(base.clone()).unwrap();
        assert_eq!(config.node_attestor, NodeAttestor::JoinToken);
        let psat = FileConfig {
            node_attestor: Some("k8s_psat".into()),
            k8s_psat_cluster: Some("demo".into()),
            ..base.clone()
        };
        assert_eq!(
            AgentConfig::from_file(psat.clone()).unwrap().node_attestor,
            NodeAttestor::K8sPsat {
                cluster: "demo".into(),
                token_path: DEFAULT_K8S_PSAT_TOKEN_PATH.into(),
            }
        );
        let err = |file: FileConfig| AgentConfig::from_file(file).unwrap_err().to_string();
        assert!(err(FileConfig {
            k8s_psat_cluster: None,
            ..psat.clone()
        })
        .contains("k8s_psat_cluster is required"));
        assert!(err(FileConfig {
            join_token: Some("t".into()),
            ..psat.clone()
        })
        .contains("join_token: not used with node_attestor"));
        assert!(err(FileConfig {
            k8s_psat_cluster: Some("demo".into()),
            ..base.clone()
        })
        .contains("k8s_psat_cluster: only used with node_attestor"));
        assert!(err(FileConfig {
            node_attestor: Some("tpm".into()),
            ..base
        })
        .contains("node_attestor: \"tpm\" is not join_token or k8s_psat"));
    }

    #[test]
    fn kubernetes_attestor_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.crt");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let text = format!(
            r#"
            trust_domain = "example.org"
            data_dir = "/tmp/x"
            k8s_workload_attestor = true
            kubelet_address = "https://10.0.0.5:10250"
            kubelet_ca_path = "{}"
            kubelet_token_path = "/run/token"
            k8s_pod_retries = 3
            k8s_pod_retry_interval = "100ms"
            "#,
            ca_path.display()
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let k8s = AgentConfig::from_file(file.clone()).unwrap().k8s.unwrap();
        assert_eq!(k8s.kubelet_address.host(), Some("10.0.0.5"));
        assert_eq!(k8s.token_path, PathBuf::from("/run/token"));
        assert_eq!(k8s.pod_retries, 3);
        assert_eq!(k8s.pod_retry_interval, Duration::from_millis(100));
        assert!(matches!(
            &k8s.kubelet_trust,
            KubeletTrust::CaCertificates { ders, .. } if ders == &[ca.der().to_vec()]
        ));

        let base = FileConfig {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            ..FileConfig::default()
        };
        assert!(AgentConfig::from_file(base.clone()).unwrap().k8s.is_none());
        let skip = FileConfig {
            k8s_workload_attestor: Some(true),
            kubelet_skip_verification_dangerous: Some(true),
            ..base.clone()
        };
        let k8s = AgentConfig::from_file(skip.clone()).unwrap().k8s.unwrap();
        assert_eq!(k8s.kubelet_address.to_string(), "https://127.0.0.1:10250/");
        assert_eq!(k8s.pod_retries, 10);
        assert!(matches!(
            k8s.kubelet_trust,
            KubeletTrust::DangerousSkipVerification
        ));

        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "not pem").unwrap();
        let refused: Vec<(FileConfig, &str)> = vec![
            (
                FileConfig {
                    kubelet_address: Some("https://x".into()),
                    ..base.clone()
                },
                "kubelet_address",
            ),
            (
                FileConfig {
                    kubelet_skip_verification_dangerous: Some(true),
                    k8s_workload_attestor: Some(false),
                    ..base.clone()
                },
                "kubelet_skip_verification_dangerous",
            ),
            (
                FileConfig {
                    kubelet_address: Some("http://127.0.0.1:10255".into()),
                    ..skip.clone()
                },
                "kubelet_address",
            ),
            (
                FileConfig {
                    kubelet_address: Some("https://127.0.0.1:10250/pods".into()),
                    ..skip.clone()
                },
                "kubelet_address",
            ),
            (
                FileConfig {
                    kubelet_ca_path: Some(ca_path.clone()),
                    ..skip.clone()
                },
                "kubelet_ca_path",
            ),
            (
                FileConfig {
                    kubelet_skip_verification_dangerous: None,
                    kubelet_ca_path: Some(garbage),
                    ..skip.clone()
                },
                "kubelet_ca_path",
            ),
            (
                FileConfig {
                    kubelet_skip_verification_dangerous: None,
                    kubelet_ca_path: Some(dir.path().join("absent.crt")),
                    ..skip.clone()
                },
                "kubelet_ca_path",
            ),
            (
                FileConfig {
                    k8s_pod_retries: Some(0),
                    ..skip.clone()
                },
                "k8s_pod_retries",
            ),
            (
                FileConfig {
                    k8s_pod_retry_interval: Some("1ms".into()),
                    ..skip.clone()
                },
                "k8s_pod_retry_interval",
            ),
            (
                FileConfig {
                    k8s_pod_retry_interval: Some("soon".into()),
                    ..skip.clone()
                },
                "k8s_pod_retry_interval",
            ),
        ];
        for (file, key) in refused {
            let err = AgentConfig::from_file(file).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config key {key}:")),
                "{key}: {err}"
            );
        }
        let err = toml::from_str::<FileConfig>("k8s_workload_atestor = true").unwrap_err();
        assert!(err.message().contains("k8s_workload_atestor"), "{err}");
    }
}
