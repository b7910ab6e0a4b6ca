//! The Helm chart `charts/sigil`, rendered by Helm's own engine.
//!
//! `tests/python/chart_check.py` lints the chart strictly, renders it with
//! default values and with overrides, validates every object against the
//! Kubernetes 1.31 schemas in strict mode, checks the fields the deployment
//! depends on (host paths, the projected token's audience, RBAC verbs, probes,
//! security contexts) and that the values schema refuses wrong types and
//! unknown keys by name, and that several issuer replicas are refused on
//! SQLite and run on PostgreSQL with the URL from a Secret. It writes each
//! rendering's `issuer.toml` and `agent.toml`, which the tests here parse with
//! the binaries' own parsers: a key the binaries do not know would stop them
//! at start in the cluster.
//!
//! The Dockerfile is checked against what the chart runs: both binaries on
//! the PATH and the issuer's non-root uid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sigil_tests::{python, run, workspace_root};
use workload_api::logging::LogFormat;

/// The renderings chart_check.py writes, by scenario.
const SCENARIOS: [&str; 4] = ["default", "upstream", "custom", "replicated"];

/// Runs chart_check.py once for all the tests here; the directory holding
/// `<scenario>/issuer.toml` and `<scenario>/agent.toml`, or why it failed.
fn rendered() -> Result<&'static Path, &'static str> {
    static RENDERED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = RENDERED.get_or_init(|| {
        let root = workspace_root();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm_chart");
        if out.exists() {
            std::fs::remove_dir_all(&out).unwrap();
        }
        std::fs::create_dir_all(&out).unwrap();
        let (ok, stdout, stderr) = run(Command::new(python())
            .current_dir(&root)
            .arg(root.join("tests/python/chart_check.py"))
            .arg(root.join("charts/sigil"))
            .arg(&out));
        print!("{stdout}");
        if ok {
            Ok(out)
        } else {
            Err(format!("chart_check.py failed:\n{stdout}\n{stderr}"))
        }
    });
    match result {
        Ok(dir) => Ok(dir.as_path()),
        Err(why) => Err(why.as_str()),
    }
}

fn rendered_file(scenario: &str, name: &str) -> PathBuf {
    let dir = rendered().unwrap_or_else(|why| panic!("{why}"));
    let path = dir.join(scenario).join(name);
    assert!(path.exists(), "{} was not rendered", path.display());
    path
}

#[test]
fn chart_lints_renders_and_validates_against_kubernetes() {
    if let Err(why) = rendered() {
        panic!("{why}");
    }
    for scenario in SCENARIOS {
        rendered_file(scenario, "issuer.toml");
        rendered_file(scenario, "agent.toml");
    }
}

#[test]
fn rendered_issuer_config_is_accepted_by_the_issuer() {
    for scenario in SCENARIOS {
        let path = rendered_file(scenario, "issuer.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // On PostgreSQL the URL, password included, reaches the issuer as
        // SIGIL_DATABASE_URL from a Secret; the ConfigMap never holds it.
        assert!(
            !text.contains("database_url") && !text.contains("postgres"),
            "{scenario}: issuer.toml names the database:\n{text}"
        );
        let file =
            sigil_issuer::config::FileConfig::parse(&text).accepted(scenario, "issuer.toml", &text);
        let clusters = file.k8s_clusters.clone().unwrap_or_default();
        let config =
            sigil_issuer::config::Config::from_file(file).accepted(scenario, "issuer.toml", &text);

        let (trust_domain, cluster, audience, namespace, release) = match scenario {
            "default" | "replicated" => ("example.org", "demo", "sigil-issuer", "sigil", "sigil"),
            "upstream" => (
                "prod.example.com",
                "demo",
                "sigil-issuer",
                "identity",
                "sigil",
            ),
            "custom" => (
                "example.org",
                "prod-eu-1",
                "sigil-prod",
                "security",
                "ident-sigil",
            ),
            other => unreachable!("{other}"),
        };
        assert_eq!(config.trust_domain.to_string(), trust_domain);
        assert_eq!(config.data_dir, Path::new("/var/lib/sigil/issuer"));
        assert_eq!(
            config.agent_api_address,
            "0.0.0.0:8081".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.http_address, Some("0.0.0.0:8082".parse().unwrap()));
        assert_eq!(
            config.admin_socket_path,
            Path::new("/run/sigil/admin/admin.sock")
        );

        // The Kubernetes cluster as the issuer validated it: the in-cluster
        // service account (no kubeconfig), the agents' token audience and
        // service account, the bundle ConfigMap.
        let [k8s] = config.k8s_clusters.as_slice() else {
            panic!("{scenario}: not one cluster: {:?}", config.k8s_clusters);
        };
        let agent_account = format!("{release}-agent");
        assert_eq!(k8s.name, cluster);
        assert_eq!(k8s.kubeconfig, None);
        assert_eq!(k8s.audience, audience);
        assert_eq!(
            k8s.service_account_allow_list,
            [(namespace.to_string(), agent_account.clone())]
        );
        assert!(k8s.allows(namespace, &agent_account));
        assert_eq!(
            k8s.bundle_config_map,
            Some((namespace.to_string(), format!("{release}-bundle")))
        );
        let rules: Vec<&str> = k8s.identity_rules.iter().map(|r| r.name.as_str()).collect();

        match scenario {
            // Several replicas on PostgreSQL write the same issuer.toml as one
            // on SQLite: the database comes from the environment.
            "default" | "replicated" => {
                assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(3600));
                assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(300));
                assert_eq!(config.ca_ttl, Duration::from_secs(24 * 3600));
                assert_eq!(config.log_format, LogFormat::Json);
                assert!(config.upstream_ca.is_none());
                assert_eq!(rules, ["default"]);
                let rule = &clusters[0].identity_rules[0];
                assert_eq!(
                    rule.spiffe_id,
                    "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
                );
                assert!(rule.namespaces.is_empty() && rule.pod_labels.is_empty());
            }
            "upstream" => {
                let upstream = config.upstream_ca.as_ref().expect("upstream CA configured");
                assert_eq!(
                    upstream.cert_file,
                    Path::new("/etc/sigil/upstream-ca/tls.crt")
                );
                assert_eq!(
                    upstream.key_file,
                    Path::new("/etc/sigil/upstream-ca/tls.key")
                );
                assert_eq!(
                    upstream.bundle_file.as_deref(),
                    Some(Path::new("/etc/sigil/upstream-ca/ca.crt"))
                );
                assert_eq!(rules, ["web", "every-pod"]);
                // Every key of the first rule, camelCase in the values,
                // snake_case in the file.
                let web = &clusters[0].identity_rules[0];
                assert_eq!(
                    web.spiffe_id,
                    "spiffe://{trust_domain}/{cluster}/ns/{namespace}/sa/{service_account}"
                );
                assert_eq!(web.namespaces, ["shop", "shop-canary"]);
                let labels: Vec<(&str, &str)> = web
                    .pod_labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(
                    labels,
                    [("app", "web"), ("app.kubernetes.io/tier", "front \"end\"")]
                );
                assert_eq!(web.service_account.as_deref(), Some("web"));
                assert_eq!(
                    web.dns_names,
                    ["{pod_name}.{namespace}.svc", "{label:app}.example.com"]
                );
                assert_eq!(web.x509_svid_ttl.as_deref(), Some("30m"));
                assert_eq!(web.jwt_svid_ttl.as_deref(), Some("2m"));
                assert_eq!(web.federates_with, ["partner.example"]);
                let web = &k8s.identity_rules[0];
                assert_eq!(web.x509_svid_ttl, Some(Duration::from_secs(30 * 60)));
                assert_eq!(web.jwt_svid_ttl, Some(Duration::from_secs(2 * 60)));
            }
            "custom" => {
                assert_eq!(config.default_x509_svid_ttl, Duration::from_secs(4 * 3600));
                assert_eq!(config.default_jwt_svid_ttl, Duration::from_secs(600));
                assert_eq!(config.default_wit_svid_ttl, Duration::from_secs(2 * 3600));
                assert_eq!(config.agent_svid_ttl, Duration::from_secs(6 * 3600));
                assert_eq!(config.ca_ttl, Duration::from_secs(72 * 3600));
                assert_eq!(config.log_format, LogFormat::Text);
                assert_eq!(config.log_level, "debug");
                assert!(rules.is_empty());
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn rendered_agent_config_is_accepted_by_the_agent() {
    for scenario in SCENARIOS {
        let path = rendered_file(scenario, "agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The agent's own reading of its --config file. Its AgentConfig would
        // also read the kubelet CA and token files, which exist only in a pod.
        let file =
            sigil_agent::config::FileConfig::load(&path).accepted(scenario, "agent.toml", &text);

        let (trust_domain, issuer_address, cluster) = match scenario {
            "default" | "replicated" => ("example.org", "sigil-issuer.sigil.svc:8081", "demo"),
            "upstream" => ("prod.example.com", "sigil-issuer.identity.svc:8081", "demo"),
            "custom" => (
                "example.org",
                "ident-sigil-issuer.security.svc:8081",
                "prod-eu-1",
            ),
            other => unreachable!("{other}"),
        };
        assert_eq!(file.trust_domain.as_deref(), Some(trust_domain));
        assert_eq!(file.issuer_address.as_deref(), Some(issuer_address));
        assert_eq!(
            file.data_dir.as_deref(),
            Some(Path::new("/var/lib/sigil/agent"))
        );
        assert_eq!(
            file.socket_path.as_deref(),
            Some(Path::new("/run/sigil/sockets/agent.sock"))
        );
        assert_eq!(
            file.trust_bundle_path.as_deref(),
            Some(Path::new("/run/sigil/bundle/bundle.crt"))
        );
        // Node attestation with the projected token, for this cluster.
        assert_eq!(file.node_attestor.as_deref(), Some("k8s_psat"));
        assert_eq!(file.k8s_psat_cluster.as_deref(), Some(cluster));
        assert_eq!(
            file.k8s_psat_token_path.as_deref(),
            Some(Path::new("/var/run/secrets/tokens/sigil-agent"))
        );
        assert!(file.join_token.is_none() && file.join_token_file.is_none());
        assert_eq!(file.k8s_workload_attestor, Some(true));
        // The node's kubelet comes from SIGIL_KUBELET_ADDRESS, set per pod.
        assert_eq!(file.kubelet_address, None);
        assert_eq!(
            file.kubelet_token_path.as_deref(),
            Some(Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/token"
            ))
        );
        if scenario == "upstream" {
            assert_eq!(file.kubelet_skip_verification_dangerous, Some(true));
            assert_eq!(file.kubelet_ca_path, None);
        } else {
            assert_eq!(file.kubelet_skip_verification_dangerous, None);
            assert_eq!(
                file.kubelet_ca_path.as_deref(),
                Some(Path::new(
                    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
                ))
            );
        }
        assert_eq!(file.health_address.as_deref(), Some("0.0.0.0:8088"));
    }
}

#[test]
fn dockerfile_builds_what_the_chart_runs() {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let statefulset =
        std::fs::read_to_string(root.join("charts/sigil/templates/issuer-statefulset.yaml"))
            .unwrap();
    let daemonset =
        std::fs::read_to_string(root.join("charts/sigil/templates/agent-daemonset.yaml")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked -p sigil-issuer -p sigil-agent"));
    for (binary, template) in [("sigil-issuer", &statefulset), ("sigil-agent", &daemonset)] {
        assert!(
            dockerfile.contains(&format!("/target/release/{binary} /usr/local/bin/{binary}")),
            "the image has no /usr/local/bin/{binary}"
        );
        assert!(template.contains(&format!("command: [\"{binary}\"]")));
    }
    // The issuer's pod runs as the image's user.
    let user = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("USER "))
        .next_back()
        .expect("the image names its user");
    assert_eq!(user.trim(), "65532:65532");
    assert!(statefulset.contains("runAsUser: 65532") && statefulset.contains("runAsGroup: 65532"));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for excluded in ["target", ".venv", ".git"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_matches('/') == excluded),
            ".dockerignore does not exclude {excluded}"
        );
    }
}

/// `unwrap` that shows the rendered file with the error.
trait Accepted<T> {
    fn accepted(self, scenario: &str, name: &str, text: &str) -> T;
}

impl<T, E: std::fmt::Display> Accepted<T> for Result<T, E> {
    fn accepted(self, scenario: &str, name: &str, text: &str) -> T {
        self.unwrap_or_else(|e| panic!("{scenario}: the rendered {name} is refused: {e}\n{text}"))
    }
}
