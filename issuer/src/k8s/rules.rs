//! Identity rules applied to pods: which pods a rule selects, and the entry
//! each selected pod gets. Pure functions of the pod and the rule, so the
//! registrar can recompute the whole desired set and compare.
//!
//! A pod's entry is parented by the agent of the node the pod runs on
//! (`spiffe://<td>/agent/k8s_psat/<cluster>/<node uid>`) and selects the pod
//! by uid, namespace and service account, the selectors the agent's
//! Kubernetes workload attestor reports. Only that node's agent can mint
//! it, and only for that pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use workload_api::id::TrustDomain;
use workload_api::selector::Selector;

use super::psat;
use crate::config::k8s::{IdentityRule, K8sCluster};
use crate::config::template::PodFacts;
use crate::registration::validate_entry;
use crate::store::EntryFields;

/// The `managed_by` prefix of every entry a cluster's rules keep.
pub fn managed_prefix(cluster: &str) -> String {
    format!("k8s/{cluster}/")
}

/// The `managed_by` of the entry `rule` keeps for the pod with `pod_uid`.
pub fn managed_by(cluster: &str, rule: &str, pod_uid: &str) -> String {
    format!("k8s/{cluster}/{rule}/{pod_uid}")
}

/// What the rules need to know of a pod. `None` for a pod that cannot have
/// an identity: not yet scheduled to a node, or finished (Succeeded or
/// Failed), whose containers will not run again.
pub fn pod_facts(pod: &Pod, trust_domain: &TrustDomain, cluster: &str) -> Option<PodFacts> {
    let spec = pod.spec.as_ref()?;
    let node_name = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let meta = &pod.metadata;
    Some(PodFacts {
        trust_domain: trust_domain.to_string(),
        cluster: cluster.to_owned(),
        namespace: meta.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod_name: meta.name.clone()?,
        pod_uid: meta.uid.clone().filter(|u| !u.is_empty())?,
        node_name,
        labels: meta.labels.clone().unwrap_or_default(),
    })
}

/// Whether `rule` selects the pod.
pub fn selects(rule: &IdentityRule, pod: &PodFacts) -> bool {
    (rule.namespaces.is_empty() || rule.namespaces.contains(&pod.namespace))
        && rule
            .service_account
            .as_ref()
            .is_none_or(|sa| *sa == pod.service_account)
        && rule
            .pod_labels
            .iter()
            .all(|(key, value)| pod.labels.get(key) == Some(value))
}

/// The entry `rule` gives the pod on the node with `node_uid`, before any
/// owner binding, or why it cannot have one.
pub fn entry_for(
    cluster: &K8sCluster,
    rule: &IdentityRule,
    trust_domain: &TrustDomain,
    pod: &PodFacts,
    node_uid: &str,
) -> Result<EntryFields, String> {
    let parent =
        psat::agent_id(trust_domain, &cluster.name, node_uid).map_err(|e| e.to_string())?;
    let dns_names = rule
        .dns_names
        .iter()
        .map(|t| t.render(pod))
        .collect::<Result<Vec<_>, _>>()?;
    // Sorted, as the store keeps them, so a stored entry compares equal.
    let mut selectors = vec![
        Selector::new("k8s", format!("ns:{}", pod.namespace)),
        Selector::new("k8s", format!("sa:{}", pod.service_account)),
        Selector::new("k8s", format!("pod-uid:{}", pod.pod_uid)),
    ];
    selectors.sort();
    let fields = EntryFields {
        spiffe_id: rule.spiffe_id.render(pod)?,
        parent_id: parent.to_string(),
        selectors,
        x509_svid_ttl: rule.x509_svid_ttl.map_or(0, |d| d.as_secs() as i64),
        jwt_svid_ttl: rule.jwt_svid_ttl.map_or(0, |d| d.as_secs() as i64),
        dns_names,
        hint: String::new(),
        federates_with: rule
            .federates_with
            .iter()
            .map(|td| td.to_string())
            .collect(),
        admin: false,
        downstream: false,
        expires_at: 0,
        owner: None,
        managed_by: managed_by(&cluster.name, &rule.name, &pod.pod_uid),
    };
    validate_entry(&fields, trust_domain).map_err(|e| e.to_string())?;
    Ok(fields)
}

/// Every entry the cluster's rules want, by `managed_by`, for `pods` on the
/// nodes in `node_uids` (by node name). Pods on nodes not yet known wait
/// for them; a pod a rule cannot render for is reported in the errors, with
/// the rule and the reason, and gets no entry from that rule.
pub fn desired_entries<'a>(
    cluster: &K8sCluster,
    trust_domain: &TrustDomain,
    pods: impl IntoIterator<Item = &'a PodFacts>,
    node_uids: &BTreeMap<String, String>,
) -> (BTreeMap<String, (String, EntryFields)>, Vec<String>) {
    let mut desired = BTreeMap::new();
    let mut errors = Vec::new();
    for pod in pods {
        let Some(node_uid) = node_uids.get(&pod.node_name) else {
            continue;
        };
        for rule in cluster.identity_rules.iter().filter(|r| selects(r, pod)) {
            match entry_for(cluster, rule, trust_domain, pod, node_uid) {
                Ok(fields) => {
                    desired.insert(fields.managed_by.clone(), (rule.name.clone(), fields));
                }
                Err(reason) => errors.push(format!(
                    "identity rule {:?} cannot register pod {}/{}: {reason}",
                    rule.name, pod.namespace, pod.pod_name
                )),
            }
        }
    }
    (desired, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::k8s::ClusterFile;

    fn cluster() -> K8sCluster {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            k8s_clusters: Vec<ClusterFile>,
        }
        let wrapper: Wrapper = toml::from_str(
            r#"
            [[k8s_clusters]]
            name = "demo"
            [[k8s_clusters.identity_rules]]
            name = "web"
            spiffe_id = "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            namespaces = ["shop"]
            pod_labels = { app = "web" }
            dns_names = ["{pod_name}.{namespace}.svc"]
            x509_svid_ttl = "30m"
            [[k8s_clusters.identity_rules]]
            name = "tiered"
            spiffe_id = "spiffe://{trust_domain}/tier/{label:tier}"
            service_account = "web"
            "#,
        )
        .unwrap();
        K8sCluster::all_from_files(wrapper.k8s_clusters)
            .unwrap()
            .remove(0)
    }

    fn pod(name: &str, labels: &[(&str, &str)]) -> PodFacts {
        PodFacts {
            trust_domain: "example.org".into(),
            cluster: "demo".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: name.into(),
            pod_uid: format!("uid-{name}"),
            node_name: "node-1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn matching_pods_get_entries_on_their_nodes_agent() {
        let td = TrustDomain::new("example.org").unwrap();
        let nodes = BTreeMap::from([("node-1".to_owned(), "n-uid-1".to_owned())]);
        let pods = [
            pod("web-1", &[("app", "web")]),
            pod("db-1", &[("app", "db")]),
        ];
        let (desired, errors) = desired_entries(&cluster(), &td, &pods, &nodes);
        // The tiered rule selects both pods (same service account) but neither
        // carries the label its template needs.
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("no label \"tier\""), "{errors:?}");
        assert_eq!(desired.len(), 1);
        let (rule, entry) = &desired["k8s/demo/web/uid-web-1"];
        assert_eq!(rule, "web");
        assert_eq!(entry.spiffe_id, "spiffe://example.org/ns/shop/sa/web");
        assert_eq!(
            entry.parent_id,
            "spiffe://example.org/agent/k8s_psat/demo/n-uid-1"
        );
        assert_eq!(entry.dns_names, ["web-1.shop.svc"]);
        assert_eq!(entry.x509_svid_ttl, 1800);
        assert!(entry
            .selectors
            .contains(&Selector::new("k8s", "pod-uid:uid-web-1")));
    }

    #[test]
    fn pods_wait_for_their_node_and_finished_pods_have_none() {
        let td = TrustDomain::new("example.org").unwrap();
        let (desired, _) = desired_entries(
            &cluster(),
            &td,
            &[pod("web-1", &[("app", "web")])],
            &BTreeMap::new(),
        );
        assert!(desired.is_empty());
        let finished: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job-1", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Succeeded"}
        }))
        .unwrap();
        assert!(pod_facts(&finished, &td, "demo").is_none());
        let unscheduled: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-2", "namespace": "shop", "uid": "u2"},
            "spec": {"containers": []},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert!(pod_facts(&unscheduled, &td, "demo").is_none());
    }
}
