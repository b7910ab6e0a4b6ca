//! The `[[k8s_clusters]]` configuration: which Kubernetes clusters attest
//! agents by projected service account token (k8s_psat), which service
//! accounts may do so, the identity rules that register their pods, and the
//! ConfigMap the bundle is published to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use workload_api::config_file::{parse_duration, ConfigError};
use workload_api::id::TrustDomain;

use super::template::Template;

/// The audience agents' projected tokens carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "sigil-issuer";

/// One `[[k8s_clusters]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub name: String,
    /// A kubeconfig file; absent: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub audience: Option<String>,
    /// `namespace:serviceaccount` of the agents allowed to attest.
    #[serde(default)]
    pub service_account_allow_list: Vec<String>,
    /// `namespace/name` of a ConfigMap kept holding the trust bundle.
    pub bundle_config_map: Option<String>,
    #[serde(default)]
    pub identity_rules: Vec<IdentityRuleFile>,
}

/// One `[[k8s_clusters.identity_rules]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRuleFile {
    pub name: String,
    pub spiffe_id: String,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    pub x509_svid_ttl: Option<String>,
    pub jwt_svid_ttl: Option<String>,
    #[serde(default)]
    pub federates_with: Vec<String>,
    /// A registered owner the rule's entries are bound to, with `consent_file`.
    pub owner: Option<String>,
    /// The owner's consent JWS (`sigil-issuer owner consent --spiffe-id-prefix`):
    /// it must cover every SPIFFE ID the rule makes, and its selectors must
    /// be among every entry's (`k8s:ns:...`, `k8s:sa:...`).
    pub consent_file: Option<PathBuf>,
}

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct K8sCluster {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub audience: String,
    /// `(namespace, service account)` pairs.
    pub service_account_allow_list: Vec<(String, String)>,
    /// `(namespace, name)`.
    pub bundle_config_map: Option<(String, String)>,
    pub identity_rules: Vec<IdentityRule>,
}

/// A validated identity rule: which pods it selects and the entry each gets.
#[derive(Debug, Clone)]
pub struct IdentityRule {
    pub name: String,
    pub spiffe_id: Template,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub dns_names: Vec<Template>,
    pub x509_svid_ttl: Option<Duration>,
    pub jwt_svid_ttl: Option<Duration>,
    pub federates_with: Vec<TrustDomain>,
    /// The owner id and the consent JWS read from `consent_file`.
    pub owner: Option<(String, String)>,
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// A DNS-1123 label, what Kubernetes allows for namespaces and cluster
/// names are kept to, since the cluster name is a SPIFFE ID path segment.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn ttl(
    key: &'static str,
    rule: &str,
    value: Option<&str>,
) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|text| {
            let parsed =
                parse_duration(text).map_err(|e| invalid(key, format!("rule {rule:?}: {e}")))?;
            if parsed < Duration::from_secs(1) {
                return Err(invalid(
                    key,
                    format!("rule {rule:?}: {text:?} is shorter than one second"),
                ));
            }
            Ok(parsed)
        })
        .transpose()
}

impl K8sCluster {
    /// Validates every cluster, refusing two with one name.
    pub fn all_from_files(files: Vec<ClusterFile>) -> Result<Vec<K8sCluster>, ConfigError> {
        let mut clusters: Vec<K8sCluster> = Vec::with_capacity(files.len());
        for file in files {
            let cluster = K8sCluster::from_file(file)?;
            if clusters.iter().any(|c| c.name == cluster.name) {
                return Err(invalid(
                    "k8s_clusters.name",
                    format!("{:?} is configured twice", cluster.name),
                ));
            }
            clusters.push(cluster);
        }
        Ok(clusters)
    }

    fn from_file(file: ClusterFile) -> Result<K8sCluster, ConfigError> {
        if !is_dns_label(&file.name) {
            return Err(invalid(
                "k8s_clusters.name",
                format!(
                    "{:?} is not a lowercase DNS label (a-z, 0-9, '-', at most 63)",
                    file.name
                ),
            ));
        }
        let cluster = file.name.clone();
        let audience = file.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into());
        if audience.is_empty() {
            return Err(invalid(
                "k8s_clusters.audience",
                format!("cluster {cluster:?}: empty"),
            ));
        }
        let service_account_allow_list = file
            .service_account_allow_list
            .iter()
            .map(|entry| match entry.split_once(':') {
                Some((ns, sa)) if is_dns_label(ns) && !sa.is_empty() && !sa.contains(':') => {
                    Ok((ns.to_owned(), sa.to_owned()))
                }
                _ => Err(invalid(
                    "k8s_clusters.service_account_allow_list",
                    format!("cluster {cluster:?}: {entry:?} is not namespace:serviceaccount"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bundle_config_map = file
            .bundle_config_map
            .as_deref()
            .map(|text| match text.split_once('/') {
                Some((ns, name)) if is_dns_label(ns) && !name.is_empty() && !name.contains('/') => {
                    Ok((ns.to_owned(), name.to_owned()))
                }
                _ => Err(invalid(
                    "k8s_clusters.bundle_config_map",
                    format!("cluster {cluster:?}: {text:?} is not namespace/name"),
                )),
            })
            .transpose()?;
        let mut identity_rules: Vec<IdentityRule> = Vec::new();
        for rule in file.identity_rules {
            let rule = IdentityRule::from_file(rule)?;
            if identity_rules.iter().any(|r| r.name == rule.name) {
                return Err(invalid(
                    "k8s_clusters.identity_rules.name",
                    format!(
                        "cluster {cluster:?}: rule {:?} is configured twice",
                        rule.name
                    ),
                ));
            }
            identity_rules.push(rule);
        }
        Ok(K8sCluster {
            name: file.name,
            kubeconfig: file.kubeconfig,
            audience,
            service_account_allow_list,
            bundle_config_map,
            identity_rules,
        })
    }

    /// Whether `namespace:service_account` may attest agents.
    pub fn allows(&self, namespace: &str, service_account: &str) -> bool {
        self.service_account_allow_list
            .iter()
            .any(|(ns, sa)| ns == namespace && sa == service_account)
    }
}

impl IdentityRule {
    fn from_file(file: IdentityRuleFile) -> Result<IdentityRule, ConfigError> {
        let name = file.name;
        if name.is_empty() || name.len() > 63 || name.contains(['/', ' ']) {
            return Err(invalid(
                "k8s_clusters.identity_rules.name",
                format!("{name:?} must be 1 to 63 characters without '/' or spaces"),
            ));
        }
        let spiffe_id = Template::parse(&file.spiffe_id).map_err(|e| {
            invalid(
                "k8s_clusters.identity_rules.spiffe_id",
                format!("rule {name:?}: {e}"),
            )
        })?;
        if !file.spiffe_id.starts_with("spiffe://") {
            return Err(invalid(
                "k8s_clusters.identity_rules.spiffe_id",
                format!(
                    "rule {name:?}: {:?} does not start with spiffe://",
                    file.spiffe_id
                ),
            ));
        }
        let dns_names = file
            .dns_names
            .iter()
            .map(|text| {
                Template::parse(text).map_err(|e| {
                    invalid(
                        "k8s_clusters.identity_rules.dns_names",
                        format!("rule {name:?}: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(ns) = file.namespaces.iter().find(|ns| !is_dns_label(ns)) {
            return Err(invalid(
                "k8s_clusters.identity_rules.namespaces",
                format!("rule {name:?}: {ns:?} is not a namespace name"),
            ));
        }
        let federates_with = file
            .federates_with
            .iter()
            .map(|td| {
                TrustDomain::new(td).map_err(|e| {
                    invalid(
                        "k8s_clusters.identity_rules.federates_with",
                        format!("rule {name:?}: {td:?}: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let owner = match (file.owner, file.consent_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "k8s_clusters.identity_rules.consent_file",
                    format!("rule {name:?}: an owner needs the owner's consent"),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "k8s_clusters.identity_rules.owner",
                    format!("rule {name:?}: consent_file is given without an owner"),
                ))
            }
            (Some(owner), Some(path)) => {
                let consent = read_consent(&path).map_err(|reason| {
                    invalid(
                        "k8s_clusters.identity_rules.consent_file",
                        format!("rule {name:?}: {}: {reason}", path.display()),
                    )
                })?;
                Some((owner, consent))
            }
        };
        Ok(IdentityRule {
            x509_svid_ttl: ttl(
                "k8s_clusters.identity_rules.x509_svid_ttl",
                &name,
                file.x509_svid_ttl.as_deref(),
            )?,
            jwt_svid_ttl: ttl(
                "k8s_clusters.identity_rules.jwt_svid_ttl",
                &name,
                file.jwt_svid_ttl.as_deref(),
            )?,
            name,
            spiffe_id,
            namespaces: file.namespaces,
            pod_labels: file.pod_labels,
            service_account: file.service_account,
            dns_names,
            federates_with,
            owner,
        })
    }
}

/// The largest consent file read; a consent JWS is well under 4 KiB.
const MAX_CONSENT_BYTES: u64 = 64 * 1024;

fn read_consent(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_CONSENT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CONSENT_BYTES {
        return Err(format!("more than {MAX_CONSENT_BYTES} bytes"));
    }
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<K8sCluster>, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            k8s_clusters: Vec<ClusterFile>,
        }
        let wrapper: Wrapper = toml::from_str(text).map_err(|e| e.to_string())?;
        K8sCluster::all_from_files(wrapper.k8s_clusters).map_err(|e| e.to_string())
    }

    #[test]
    fn a_cluster_with_rules_is_read() {
        let clusters = parse(
            r#"
            [[k8s_clusters]]
            name = "demo"
            service_account_allow_list = ["sigil:sigil-agent"]
            bundle_config_map = "sigil/sigil-bundle"
            [[k8s_clusters.identity_rules]]
            name = "web"
            spiffe_id = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            namespaces = ["shop"]
            pod_labels = { app = "web" }
            dns_names = ["{pod_name}.{namespace}.svc"]
            x509_svid_ttl = "30m"
            "#,
        )
        .unwrap();
        let demo = &clusters[0];
        assert_eq!(demo.audience, DEFAULT_AUDIENCE);
        assert!(demo.allows("sigil", "sigil-agent"));
        assert!(!demo.allows("sigil", "default"));
        assert_eq!(
            demo.bundle_config_map,
            Some(("sigil".into(), "sigil-bundle".into()))
        );
        let rule = &demo.identity_rules[0];
        assert_eq!(rule.x509_svid_ttl, Some(Duration::from_secs(1800)));
        assert_eq!(rule.pod_labels["app"], "web");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let base = "[[k8s_clusters]]\nname = \"demo\"\n";
        let cases = [
            ("[[k8s_clusters]]\nname = \"Demo\"\n", "k8s_clusters.name"),
            (
                &format!("{base}service_account_allow_list = [\"sigil\"]\n"),
                "service_account_allow_list",
            ),
            (
                &format!("{base}bundle_config_map = \"sigil-bundle\"\n"),
                "bundle_config_map",
            ),
            (
                &format!("{base}[[k8s_clusters.identity_rules]]\nname = \"r\"\nspiffe_id = \"spiffe://{{nope}}/x\"\n"),
                "identity_rules.spiffe_id",
            ),
            (
                &format!("{base}[[k8s_clusters.identity_rules]]\nname = \"r\"\nspiffe_id = \"spiffe://x/y\"\nx509_svid_ttl = \"soon\"\n"),
                "identity_rules.x509_svid_ttl",
            ),
            (
                &format!("{base}[[k8s_clusters.identity_rules]]\nname = \"r\"\nspiffe_id = \"spiffe://x/y\"\nowner = \"mailto:a@example.org\"\n"),
                "identity_rules.consent_file",
            ),
            (
                &format!("{base}[[k8s_clusters.identity_rules]]\nname = \"r\"\nspiffe_id = \"spiffe://x/y\"\nowner = \"mailto:a@example.org\"\nconsent_file = \"/nonexistent/consent.jws\"\n"),
                "consent.jws",
            ),
            (&format!("{base}{base}"), "configured twice"),
            (&format!("{base}kube_config = \"/x\"\n"), "kube_config"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
