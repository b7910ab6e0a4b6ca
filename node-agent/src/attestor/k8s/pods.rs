//! The kubelet's pod list (`GET /pods`, a Kubernetes `v1.PodList`), read
//! for the fields attestation needs, and the `k8s` selectors of a container
//! found in it. Selector values follow SPIRE's k8s workload attestor, so
//! entries written for SPIRE carry over.

use std::collections::BTreeMap;

use serde::Deserialize;
use workload_api::selector::Selector;

use super::cgroup::{ContainerId, PodUid};

/// The selector type of this attestor.
pub const SELECTOR_TYPE: &str = "k8s";

/// `v1.PodList`: only `items` matters here.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Option<Vec<Pod>>,
}

/// `v1.Pod`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

/// `v1.ObjectMeta`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `v1.PodSpec`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
}

/// `v1.PodStatus`: the three lists a container's status may be in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

/// `v1.ContainerStatus`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(rename = "imageID", default)]
    pub image_id: String,
    /// `<runtime>://<id>`; absent until the runtime has created it.
    #[serde(rename = "containerID", default)]
    pub container_id: Option<String>,
}

impl ContainerStatus {
    /// Whether this status is the container `id`, whatever the runtime
    /// (`containerd://`, `cri-o://`, `docker://`).
    fn is(&self, id: &ContainerId) -> bool {
        self.container_id
            .as_deref()
            .and_then(|v| v.split_once("://"))
            .is_some_and(|(_, v)| v == id.as_str())
    }
}

/// The pod and container status of container `id`. With the pod UID from
/// the cgroup, only that pod is looked at.
pub fn find<'a>(
    pods: &'a PodList,
    id: &ContainerId,
    pod_uid: Option<&PodUid>,
) -> Option<(&'a Pod, &'a ContainerStatus)> {
    pods.items
        .iter()
        .flatten()
        .filter(|pod| pod_uid.is_none_or(|uid| pod.metadata.uid == uid.as_str()))
        .find_map(|pod| {
            let status = &pod.status;
            [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            .flatten()
            .find(|c| c.is(id))
            .map(|c| (pod, c))
        })
}

/// The `k8s` selectors of a container in a pod; empty fields give none.
pub fn selectors(pod: &Pod, container: &ContainerStatus) -> Vec<Selector> {
    let mut values = vec![
        ("ns", pod.metadata.namespace.clone()),
        ("sa", pod.spec.service_account_name.clone()),
        ("pod-name", pod.metadata.name.clone()),
        ("pod-uid", pod.metadata.uid.clone()),
    ];
    for (key, value) in pod.metadata.labels.iter().flatten() {
        values.push(("pod-label", format!("{key}:{value}")));
    }
    values.push(("container-name", container.name.clone()));
    values.push(("container-image", container.image.clone()));
    if container.image_id != container.image {
        values.push(("container-image", container.image_id.clone()));
    }
    values.push(("node-name", pod.spec.node_name.clone()));
    values
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| Selector::new(SELECTOR_TYPE, format!("{name}:{value}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const SIDECAR: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const INIT: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const DEBUG: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// Shaped as a kubelet answers `GET /pods`: fields this attestor does
    /// not read are there too and must be ignored.
    fn pod_list() -> PodList {
        let json = serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                {
                    "metadata": {
                        "name": "coredns-5d78c9869d-abcde",
                        "namespace": "kube-system",
                        "uid": "aaaaaaaa-0000-0000-0000-000000000000",
                        "creationTimestamp": "2024-05-01T10:00:00Z",
                        "labels": {"k8s-app": "kube-dns"}
                    },
                    "spec": {"serviceAccountName": "coredns", "nodeName": "node-1", "containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.10.1"}]},
                    "status": {"phase": "Running", "containerStatuses": [{
                        "name": "coredns", "ready": true, "restartCount": 0,
                        "state": {"running": {"startedAt": "2024-05-01T10:00:05Z"}},
                        "image": "registry.k8s.io/coredns/coredns:v1.10.1",
                        "imageID": "registry.k8s.io/coredns/coredns@sha256:a0ead06651cf580044aeb0a0feba63591858fb2e43ade8c9dea45a6a89ae7e5e",
                        "containerID": "containerd://3333333333333333333333333333333333333333333333333333333333333333",
                        "started": true
                    }]}
                },
                {
                    "metadata": {
                        "name": "web-7f9c",
                        "namespace": "shop",
                        "uid": "2c48913c-b29f-11e7-9350-020968147796",
                        "labels": {"app": "web", "app.kubernetes.io/part-of": "shop"},
                        "annotations": {"kubectl.kubernetes.io/restartedAt": "x"}
                    },
                    "spec": {"serviceAccountName": "web", "nodeName": "node-1"},
                    "status": {
                        "phase": "Running",
                        "podIP": "10.0.0.7",
                        "initContainerStatuses": [{
                            "name": "migrate", "image": "shop/migrate:1", "imageID": "shop/migrate:1",
                            "containerID": format!("cri-o://{INIT}"), "ready": false,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
                        }],
                        "containerStatuses": [
                            {
                                "name": "web", "image": "docker.io/shop/web:2.1",
                                "imageID": "docker.io/shop/web@sha256:5f1bd1c4d1f0ab0e4a6a3f3fbc4ec8b63cad0a0e8c0c9f3f6b2d9c44a1b2c3d4",
                                "containerID": format!("containerd://{ID}"), "ready": true,
                                "state": {"running": {"startedAt": "2024-05-01T10:01:00Z"}}
                            },
                            {
                                "name": "sidecar", "image": "envoy:1.29", "imageID": "",
                                "ready": false,
                                "state": {"waiting": {"reason": "ContainerCreating"}}
                            }
                        ],
                        "ephemeralContainerStatuses": [{
                            "name": "debugger", "image": "busybox", "imageID": "busybox",
                            "containerID": format!("docker://{DEBUG}"), "ready": false,
                            "state": {"running": {}}
                        }]
                    }
                },
                {"metadata": {"name": "pending", "namespace": "shop", "uid": "x"}, "spec": {}, "status": {"phase": "Pending"}}
            ]
        });
        serde_json::from_value(json).unwrap()
    }

    fn id(s: &str) -> ContainerId {
        ContainerId::try_from(s).unwrap()
    }

    #[test]
    fn finds_containers_in_every_status_list() {
        let pods = pod_list();
        for (container, name) in [(ID, "web"), (INIT, "migrate"), (DEBUG, "debugger")] {
            let (pod, status) = find(&pods, &id(container), None).expect(name);
            assert_eq!(
                (pod.metadata.name.as_str(), status.name.as_str()),
                ("web-7f9c", name)
            );
        }
        // A container whose status has no id yet (still being created).
        assert!(find(&pods, &id(SIDECAR), None).is_none());
        // With the pod UID from the cgroup, another pod's container is not taken.
        let uid = PodUid::try_from("2c48913c-b29f-11e7-9350-020968147796").unwrap();
        assert!(find(&pods, &id(ID), Some(&uid)).is_some());
        let other = PodUid::try_from("bbbbbbbb-0000-0000-0000-000000000000").unwrap();
        assert!(find(&pods, &id(ID), Some(&other)).is_none());
        assert!(find(&PodList::default(), &id(ID), None).is_none());
    }

    #[test]
    fn selectors_of_a_container() {
        let pods = pod_list();
        let (pod, status) = find(&pods, &id(ID), None).unwrap();
        let values: Vec<String> = selectors(pod, status)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            values,
            [
                "k8s:ns:shop",
                "k8s:sa:web",
                "k8s:pod-name:web-7f9c",
                "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
                "k8s:pod-label:app:web",
                "k8s:pod-label:app.kubernetes.io/part-of:shop",
                "k8s:container-name:web",
                "k8s:container-image:docker.io/shop/web:2.1",
                "k8s:container-image:docker.io/shop/web@sha256:5f1bd1c4d1f0ab0e4a6a3f3fbc4ec8b63cad0a0e8c0c9f3f6b2d9c44a1b2c3d4",
                "k8s:node-name:node-1",
            ]
        );
        // The same image and image ID give one selector; empty fields none.
        let (pod, status) = find(&pods, &id(INIT), None).unwrap();
        let values: Vec<String> = selectors(pod, status)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            values
                .iter()
                .filter(|v| v.starts_with("k8s:container-image:"))
                .count(),
            1,
            "{values:?}"
        );
        let bare = Pod::default();
        assert!(selectors(&bare, &ContainerStatus::default()).is_empty());
    }

    #[test]
    fn null_and_missing_lists_are_empty() {
        let pods: PodList = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"p","labels":null},"status":{"containerStatuses":null}}]}"#,
        )
        .unwrap();
        assert!(find(&pods, &id(ID), None).is_none());
        let empty: PodList = serde_json::from_str(r#"{"kind":"PodList","items":null}"#).unwrap();
        assert!(find(&empty, &id(ID), None).is_none());
    }
}
