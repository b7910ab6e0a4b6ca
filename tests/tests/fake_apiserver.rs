//! The fake API server driven by the real `kube` client, connected the way
//! the issuer connects: a kubeconfig naming the server, its CA and a bearer
//! token. What kube decodes, and how its watcher reacts, is what shows the
//! fake answers as a kube-apiserver does: TokenReviews, pods and nodes,
//! watches with their resourceVersions and 410 relists, config map writes,
//! the v1.Status of each refusal, and the bounds on requests.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use sigil_tests::fake_apiserver::{
    ApiContainer, ApiNode, ApiPod, FakeApiServer, TokenIdentity, API_AUDIENCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::{Stream, StreamExt};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.aXNzdWVyLXJldmlld2Vy.c2lnbmF0dXJl";
const POD_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.d2ViLXBvZA.c2lnbmF0dXJl";
const CONTAINER: &str = "4c1d2a8e9f3b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

/// A kube client for `server` from a kubeconfig file, as the issuer builds one.
async fn client(server: &FakeApiServer) -> kube::Client {
    client_with(&server.kubeconfig()).await
}

async fn client_with(kubeconfig: &str) -> kube::Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The v1.Status of a refused call.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn web_pod(name: &str, node: &str) -> ApiPod {
    ApiPod {
        name: name.into(),
        namespace: "shop".into(),
        uid: format!("uid-{name}"),
        service_account: "web".into(),
        node_name: node.into(),
        labels: vec![("app".into(), "web".into())],
        containers: vec![ApiContainer::new("web", CONTAINER)],
        ..ApiPod::default()
    }
}

fn web_identity(audiences: &[&str]) -> TokenIdentity {
    TokenIdentity {
        namespace: "shop".into(),
        service_account: "web".into(),
        service_account_uid: "0f6c1c1e-2a5b-4f0e-9d41-3b1e0c2d7a90".into(),
        pod_name: "web-6b7f9c5d4-x2x9k".into(),
        pod_uid: "7d3f0a52-3b1e-4c8e-9d2a-6f1e0b9c8a71".into(),
        node_name: "node-1".into(),
        node_uid: "b5f1e1c4-6d2a-4c3e-8f0b-1a2b3c4d5e6f".into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
    }
}

fn review(token: &str, audiences: &[&str]) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..TokenReview::default()
    }
}

#[tokio::test]
async fn token_review_authenticates_a_bound_token() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_token(POD_TOKEN, web_identity(&["sigil", API_AUDIENCE]));
    let reviews: Api<TokenReview> = Api::all(client(&server).await);

    let answer = reviews
        .create(
            &PostParams::default(),
            &review(POD_TOKEN, &["other", "sigil"]),
        )
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.error, None);
    assert_eq!(status.audiences, Some(vec!["sigil".to_string()]));
    let user = status.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:shop:web")
    );
    assert_eq!(
        user.uid.as_deref(),
        Some("0f6c1c1e-2a5b-4f0e-9d41-3b1e0c2d7a90")
    );
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:shop",
            "system:authenticated"
        ]
    );
    let extra = user.extra.unwrap();
    let one = |key: &str| extra[&format!("authentication.kubernetes.io/{key}")].clone();
    assert_eq!(one("pod-name"), ["web-6b7f9c5d4-x2x9k"]);
    assert_eq!(one("pod-uid"), ["7d3f0a52-3b1e-4c8e-9d2a-6f1e0b9c8a71"]);
    assert_eq!(one("node-name"), ["node-1"]);
    assert_eq!(one("node-uid"), ["b5f1e1c4-6d2a-4c3e-8f0b-1a2b3c4d5e6f"]);
    let credential = one("credential-id");
    assert!(credential[0].starts_with("JTI="), "{credential:?}");
    // The review is echoed back.
    assert_eq!(answer.spec.token.as_deref(), Some(POD_TOKEN));

    // Without audiences the token is checked against the API server's.
    let answer = reviews
        .create(&PostParams::default(), &review(POD_TOKEN, &[]))
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.audiences, Some(vec![API_AUDIENCE.to_string()]));

    assert_eq!(server.token_reviews(), 2);
    let last = server.last_token_review().unwrap();
    assert_eq!(last["spec"]["token"], POD_TOKEN);
    assert_eq!(last["kind"], "TokenReview");
    assert_eq!(last["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        server.requests("POST", "/apis/authentication.k8s.io/v1/tokenreviews"),
        2
    );
}

#[tokio::test]
async fn token_review_refuses_unknown_tokens_and_other_audiences() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_token(POD_TOKEN, web_identity(&["sigil"]));
    let reviews: Api<TokenReview> = Api::all(client(&server).await);

    let status = reviews
        .create(
            &PostParams::default(),
            &review("not-a-known-token", &["sigil"]),
        )
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(status.authenticated, Some(true));
    assert_eq!(status.error.as_deref(), Some("invalid bearer token"));
    assert_eq!(status.user.unwrap_or_default(), Default::default());
    assert_eq!(status.audiences, None);

    let status = reviews
        .create(
            &PostParams::default(),
            &review(POD_TOKEN, &["vault", "other"]),
        )
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(status.authenticated, Some(true));
    assert_eq!(
        status.error.as_deref(),
        Some(
            r#"[invalid bearer token, token audiences ["sigil"] is invalid for the target audiences ["vault" "other"]]"#
        )
    );

    // A token for `sigil` only is not one for the API server.
    let status = reviews
        .create(&PostParams::default(), &review(POD_TOKEN, &[]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        status.error.as_deref(),
        Some(format!(r#"[invalid bearer token, token audiences ["sigil"] is invalid for the target audiences ["{API_AUDIENCE}"]]"#).as_str())
    );

    // An empty token is a bad request, not a review.
    let status = api_error(
        reviews
            .create(&PostParams::default(), &review("", &["sigil"]))
            .await,
    );
    assert_eq!(status.code, 400);
    assert_eq!(status.reason, "BadRequest");
    assert_eq!(
        status.message,
        "token is required for TokenReview in authentication"
    );
    assert_eq!(server.token_reviews(), 3);
}

#[tokio::test]
async fn a_wrong_or_changed_bearer_token_is_unauthorized() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_node(ApiNode {
        name: "node-1".into(),
        uid: "node-uid".into(),
        labels: vec![],
    });
    let good = client(&server).await;
    let wrong = client_with(&server.kubeconfig().replace(TOKEN, "not-the-token")).await;

    let status = api_error(Api::<Node>::all(wrong).get("node-1").await);
    assert_eq!(status.code, 401);
    assert_eq!(status.reason, "Unauthorized");
    assert_eq!(status.message, "Unauthorized");

    Api::<Node>::all(good.clone()).get("node-1").await.unwrap();
    server.set_token("rotated");
    let status = api_error(Api::<Node>::all(good).get("node-1").await);
    assert_eq!(status.code, 401);
    Api::<Node>::all(client(&server).await)
        .get("node-1")
        .await
        .unwrap();
    assert_eq!(server.refused(), 2);
    assert_eq!(server.requests("GET", "/api/v1/nodes/node-1"), 4);
}

#[tokio::test]
async fn pods_and_nodes_decode_as_kube_types() {
    let server = FakeApiServer::start(TOKEN).await;
    let client = client(&server).await;
    server.add_pod(web_pod("web-1", "node-1"));
    server.add_pod(ApiPod {
        labels: vec![("app".into(), "db".into())],
        ..web_pod("db-1", "node-2")
    });
    server.add_node(ApiNode {
        name: "node-1".into(),
        uid: "3e1f5a2b-9c8d-4e7f-a6b5-c4d3e2f1a0b9".into(),
        labels: vec![("topology.kubernetes.io/zone".into(), "eu-west-1a".into())],
    });

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod = pods.get("web-1").await.unwrap();
    assert_eq!(pod.metadata.uid.as_deref(), Some("uid-web-1"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
    assert!(pod.metadata.resource_version.is_some());
    assert!(pod.metadata.creation_timestamp.is_some());
    assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
    assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "ReplicaSet");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    assert_eq!(spec.node_name.as_deref(), Some("node-1"));
    assert_eq!(spec.containers[0].name, "web");
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(status.pod_ip.is_some() && status.host_ip.is_some());
    let container = &status.container_statuses.unwrap()[0];
    assert_eq!(
        container.container_id.as_deref(),
        Some(format!("containerd://{CONTAINER}").as_str())
    );
    assert!(container.image_id.contains("@sha256:"));

    let status = api_error(pods.get("web-2").await);
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.message, r#"pods "web-2" not found"#);
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("web-2", "pods")
    );

    // Lists: by label, by node, and a field no server can select on.
    let all: Api<Pod> = Api::all(client.clone());
    let names = |list: kube::core::ObjectList<Pod>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let list = all.list(&ListParams::default()).await.unwrap();
    assert!(list.metadata.resource_version.is_some());
    assert_eq!(names(list), ["db-1", "web-1"]);
    let by_label = all
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(names(by_label), ["web-1"]);
    let by_node = all
        .list(&ListParams::default().fields("spec.nodeName=node-2"))
        .await
        .unwrap();
    assert_eq!(names(by_node), ["db-1"]);
    let by_set = pods
        .list(&ListParams::default().labels("app in (db,cache),!legacy"))
        .await
        .unwrap();
    assert_eq!(names(by_set), ["db-1"]);
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "other");
    assert!(elsewhere
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let status = api_error(
        all.list(&ListParams::default().fields("spec.hostname=x"))
            .await,
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.hostname")
    );

    let nodes: Api<Node> = Api::all(client);
    let node = nodes.get("node-1").await.unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "node-1");
    assert_eq!(labels["topology.kubernetes.io/zone"], "eu-west-1a");
    assert_eq!(
        node.metadata.uid.as_deref(),
        Some("3e1f5a2b-9c8d-4e7f-a6b5-c4d3e2f1a0b9")
    );
    let status = node.status.unwrap();
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.33.1");
    assert!(status
        .addresses
        .unwrap()
        .iter()
        .any(|a| a.type_ == "InternalIP"));
    let status = api_error(nodes.get("node-9").await);
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, r#"nodes "node-9" not found"#)
    );
}

/// The next watcher event that is not an error, within 10 s.
async fn next_event<S>(stream: &mut S) -> watcher::Event<Pod>
where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a watcher event in time")
            .expect("the watcher goes on");
        match item {
            Ok(event) => return event,
            Err(e) => eprintln!("watcher error: {e}"),
        }
    }
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap()
}

#[tokio::test]
async fn the_watcher_sees_pods_come_change_and_go() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_pod(web_pod("web-1", "node-1"));
    let api: Api<Pod> = Api::all(client(&server).await);
    let mut events = Box::pin(watcher(api, watcher::Config::default()));

    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::Init
    ));
    match next_event(&mut events).await {
        watcher::Event::InitApply(pod) => assert_eq!(name(&pod), "web-1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::InitDone
    ));

    server.add_pod(web_pod("web-2", "node-1"));
    match next_event(&mut events).await {
        watcher::Event::Apply(pod) => assert_eq!(name(&pod), "web-2"),
        other => panic!("{other:?}"),
    }
    server.set_pod_phase("shop", "web-2", "Failed");
    match next_event(&mut events).await {
        watcher::Event::Apply(pod) => {
            assert_eq!(name(&pod), "web-2");
            assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Failed"));
        }
        other => panic!("{other:?}"),
    }
    server.delete_pod("shop", "web-1");
    match next_event(&mut events).await {
        watcher::Event::Delete(pod) => {
            assert_eq!(name(&pod), "web-1");
            assert!(pod.metadata.deletion_timestamp.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests("GET", "/api/v1/pods"), 2);
}

#[tokio::test]
async fn a_watch_sends_typed_events_after_its_resource_version() {
    let server = FakeApiServer::start(TOKEN).await;
    let api: Api<Pod> = Api::namespaced(client(&server).await, "shop");
    server.add_pod(web_pod("web-1", "node-1"));
    let version = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.add_pod(web_pod("web-2", "node-1"));
    server.delete_pod("shop", "web-1");

    let params = WatchParams::default().labels("app=web").timeout(1);
    let events: Vec<WatchEvent<Pod>> = api
        .watch(&params, &version)
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let seen: Vec<(&str, String, String)> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(p) => (
                "ADDED",
                name(p).to_owned(),
                p.metadata.resource_version.clone().unwrap(),
            ),
            WatchEvent::Deleted(p) => (
                "DELETED",
                name(p).to_owned(),
                p.metadata.resource_version.clone().unwrap(),
            ),
            WatchEvent::Bookmark(b) => (
                "BOOKMARK",
                String::new(),
                b.metadata.resource_version.clone(),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    let after = |n: u64| (version.parse::<u64>().unwrap() + n).to_string();
    assert_eq!(
        seen,
        [
            ("ADDED", "web-2".into(), after(1)),
            ("DELETED", "web-1".into(), after(2)),
            // Sent as the watch times out, since bookmarks were allowed.
            ("BOOKMARK", String::new(), after(2)),
        ]
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_gone_and_the_watcher_relists() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_pod(web_pod("web-1", "node-1"));
    server.add_pod(ApiPod {
        labels: vec![("app".into(), "batch".into())],
        ..web_pod("batch-1", "node-1")
    });
    let api: Api<Pod> = Api::all(client(&server).await);
    let version = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // More changes than the history keeps, none of them to web pods.
    for i in 0..300 {
        let phase = if i % 2 == 0 { "Pending" } else { "Running" };
        server.set_pod_phase("shop", "batch-1", phase);
    }

    let mut stream = Box::pin(api.watch(&WatchParams::default(), &version).await.unwrap());
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert!(
                status
                    .message
                    .starts_with(&format!("too old resource version: {version} (")),
                "{}",
                status.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(stream.next().await.is_none());

    // A watcher left behind the history is told so and lists again.
    let config = watcher::Config::default()
        .labels("app=web")
        .timeout(1)
        .disable_bookmarks();
    let mut events = Box::pin(watcher(api, config));
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::InitDone
    ));
    for i in 0..300 {
        let phase = if i % 2 == 0 { "Pending" } else { "Running" };
        server.set_pod_phase("shop", "batch-1", phase);
    }
    // The watch ends after its second; resuming from the old version is 410.
    let relisted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await.unwrap() {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!(status.code, 410);
                    return;
                }
                Err(e) => panic!("{e}"),
                Ok(event) => eprintln!("before the relist: {event:?}"),
            }
        }
    })
    .await;
    assert!(
        relisted.is_ok(),
        "the watcher was never told it was too old"
    );
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::Init
    ));
    match next_event(&mut events).await {
        watcher::Event::InitApply(pod) => assert_eq!(name(&pod), "web-1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        watcher::Event::InitDone
    ));
}

#[tokio::test]
async fn config_maps_are_created_replaced_patched_and_applied() {
    let server = FakeApiServer::start(TOKEN).await;
    let maps: Api<ConfigMap> = Api::namespaced(client(&server).await, "sigil");
    let bundle = |data: serde_json::Value| -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bundle"},
            "data": data
        }))
        .unwrap()
    };

    let created = maps
        .create(
            &PostParams::default(),
            &bundle(json!({"bundle.json": "{}"})),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("sigil"));
    assert!(created.metadata.uid.is_some());
    let status = api_error(
        maps.create(&PostParams::default(), &bundle(json!({})))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(status.message, r#"configmaps "bundle" already exists"#);

    // Replace with the current version, then again with the stale one.
    let mut next = maps.get("bundle").await.unwrap();
    assert_eq!(
        next.metadata.resource_version,
        created.metadata.resource_version
    );
    next.data = Some([("bundle.json".to_string(), "{\"keys\":[]}".to_string())].into());
    let replaced = maps
        .replace("bundle", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    let status = api_error(maps.replace("bundle", &PostParams::default(), &next).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"));

    // A merge patch adds and removes keys.
    let merged = maps
        .patch(
            "bundle",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"bundle.json": null, "seq": "7"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        [("seq".to_string(), "7".to_string())].into()
    );
    let status = api_error(
        maps.patch(
            "missing",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "b"}})),
        )
        .await,
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, r#"configmaps "missing" not found"#)
    );

    // Server-side apply creates what is missing and updates what is there.
    let apply = PatchParams::apply("sigil-issuer").force();
    let applied = maps
        .patch(
            "trust",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "trust"},
                "data": {"bundle.pem": "A"}
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["bundle.pem"], "A");
    maps.patch(
        "trust",
        &apply,
        &Patch::Apply(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "trust"},
            "data": {"bundle.pem": "B"}
        })),
    )
    .await
    .unwrap();
    let stored = server.config_map("sigil", "trust").unwrap();
    assert_eq!(stored["data"]["bundle.pem"], "B");
    assert_eq!(
        stored["metadata"]["managedFields"][0]["manager"],
        "sigil-issuer"
    );
    assert_eq!(
        maps.get("trust").await.unwrap().data.unwrap()["bundle.pem"],
        "B"
    );

    // One written by someone else is read as any other.
    server.put_config_map("sigil", "seeded", &[("k", "v")]);
    assert_eq!(maps.get("seeded").await.unwrap().data.unwrap()["k"], "v");
    assert_eq!(
        server.requests("PATCH", "/api/v1/namespaces/sigil/configmaps/trust"),
        2
    );
}

#[tokio::test]
async fn a_stopped_server_refuses_connections() {
    let server = FakeApiServer::start(TOKEN).await;
    server.add_node(ApiNode {
        name: "node-1".into(),
        uid: "node-uid".into(),
        labels: vec![],
    });
    let nodes: Api<Node> = Api::all(client(&server).await);
    nodes.get("node-1").await.unwrap();
    server.stop().await;
    match nodes.get("node-1").await {
        Err(kube::Error::Api(status)) => panic!("a stopped server answered {status:?}"),
        Err(_) => {}
        Ok(node) => panic!("a stopped server served {node:?}"),
    }
    let address = server.address.trim_start_matches("https://");
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}

/// A raw TLS connection trusting the server's CA, for requests kube does
/// not send.
async fn raw_connection(
    server: &FakeApiServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(server.ca_pem().as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.address.trim_start_matches("https://"))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn read_all<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused() {
    let server = FakeApiServer::start(TOKEN).await;

    let mut tls = raw_connection(&server).await;
    let head = format!(
        "POST /api/v1/namespaces/sigil/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["reason"], "RequestEntityTooLarge");
    assert_eq!(body["code"], 413);

    let mut tls = raw_connection(&server).await;
    let head = format!(
        "GET /api/v1/pods HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_a_status() {
    let server = FakeApiServer::start(TOKEN).await;
    let mut tls = raw_connection(&server).await;
    let request = format!(
        "GET /apis/apps/v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n\
         DELETE /api/v1/nodes/node-1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let answer = read_all(&mut tls).await;
    // The answers follow each other, each body without a final newline.
    let statuses: Vec<&str> = answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.lines().next().unwrap())
        .collect();
    assert_eq!(statuses, ["404 Not Found", "405 Method Not Allowed"]);
    assert!(answer.contains(r#""message":"the server could not find the requested resource""#));
    assert!(answer.contains(r#""reason":"MethodNotAllowed""#));
}
