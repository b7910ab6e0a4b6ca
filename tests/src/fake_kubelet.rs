//! A fake kubelet for the Kubernetes workload attestor's tests. It stands in
//! for a kubelet, which cannot run here, and speaks its real wire format on
//! the authenticated port: HTTP/1.1 over TLS with a serving certificate for
//! 127.0.0.1, `Authorization: Bearer <service account token>` required (a
//! plain-text `401 Unauthorized` otherwise, as the kubelet's authentication
//! filter answers), and `GET /pods` answered with a `v1.PodList` in the JSON
//! the kubelet writes, chunked once it is over 2 KiB as Go's `net/http` does.
//!
//! TLS is terminated by the handshake function the test passes in, so a
//! test can serve an untrusted certificate; the certificates come from
//! [`serving_certificate`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::fake_tls::ServingCertificate;

/// The node name the fake kubelet runs on.
pub const NODE_NAME: &str = "node-1";

/// The largest request head read; a kubelet client sends a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// A kubelet's serving certificate: a fresh CA and a certificate from it
/// naming `127.0.0.1`, `localhost` and the node name, as a kubelet's does.
pub fn serving_certificate() -> ServingCertificate {
    ServingCertificate::generate(
        &format!("{NODE_NAME}-ca"),
        NODE_NAME,
        &["localhost", NODE_NAME],
        &[[127, 0, 0, 1]],
    )
}

/// A container of a [`FakePod`].
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub name: String,
    pub image: String,
    /// The digest form the runtime reports (`repo@sha256:...`).
    pub image_id: String,
    /// 64 hex digits.
    pub id: String,
    /// `containerd`, `cri-o` or `docker`: the `containerID` scheme.
    pub runtime: String,
    /// How many pod-list answers after the pod is added still show the
    /// container as being created, without its `containerID`.
    pub hidden_for_polls: usize,
}

impl FakeContainer {
    /// A running containerd container `name` with id `id`.
    pub fn new(name: &str, id: &str) -> Self {
        FakeContainer {
            name: name.into(),
            image: format!("registry.example.org/shop/{name}:1.4.2"),
            image_id: format!(
                "registry.example.org/shop/{name}@sha256:{}",
                hex::encode(ring::digest::digest(&ring::digest::SHA256, name.as_bytes()))
            ),
            id: id.into(),
            runtime: "containerd".into(),
            hidden_for_polls: 0,
        }
    }
}

/// A pod as the kubelet lists it.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
    pub containers: Vec<FakeContainer>,
}

impl FakePod {
    fn to_json(&self, polls_since_added: usize) -> Value {
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let specs: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "image": c.image,
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    "volumeMounts": [{
                        "name": "kube-api-access-x7k2p",
                        "readOnly": true,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
                    }],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent"
                })
            })
            .collect();
        let all_running = self
            .containers
            .iter()
            .all(|c| polls_since_added >= c.hidden_for_polls);
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                if polls_since_added < c.hidden_for_polls {
                    json!({
                        "name": c.name,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                        "lastState": {},
                        "ready": false,
                        "restartCount": 0,
                        "image": c.image,
                        "imageID": "",
                        "started": false
                    })
                } else {
                    json!({
                        "name": c.name,
                        "state": {"running": {"startedAt": "2026-11-30T04:58:12Z"}},
                        "lastState": {},
                        "ready": true,
                        "restartCount": 0,
                        "image": c.image,
                        "imageID": c.image_id,
                        "containerID": format!("{}://{}", c.runtime, c.id),
                        "started": true
                    })
                }
            })
            .collect();
        json!({
            "metadata": {
                "name": self.name,
                "generateName": format!("{}-", self.name.rsplit_once('-').map_or(self.name.as_str(), |(a, _)| a)),
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "48213",
                "creationTimestamp": "2026-11-30T04:58:10Z",
                "labels": labels,
                "annotations": {
                    "kubernetes.io/config.seen": "2026-11-30T04:58:10.512394817Z",
                    "kubernetes.io/config.source": "api"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": format!("{}-rs", self.name),
                    "uid": "5d0c1a4e-8f0b-4b5e-9a51-0c0f6a3b7e21",
                    "controller": true,
                    "blockOwnerDeletion": true
                }],
                "managedFields": [{
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-11-30T04:58:10Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:generateName": {}}}
                }]
            },
            "spec": {
                "volumes": [{
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
                        ],
                        "defaultMode": 420
                    }
                }],
                "containers": specs,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": self.service_account,
                "serviceAccount": self.service_account,
                "nodeName": NODE_NAME,
                "securityContext": {},
                "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "priority": 0,
                "enableServiceLinks": true,
                "preemptionPolicy": "PreemptLowerPriority"
            },
            "status": {
                "phase": if all_running { "Running" } else { "Pending" },
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-30T04:58:10Z"},
                    {"type": "Ready", "status": if all_running { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": "2026-11-30T04:58:12Z"},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-30T04:58:10Z"}
                ],
                "hostIP": "10.0.0.11",
                "hostIPs": [{"ip": "10.0.0.11"}],
                "podIP": "10.244.1.17",
                "podIPs": [{"ip": "10.244.1.17"}],
                "startTime": "2026-11-30T04:58:10Z",
                "containerStatuses": statuses,
                "qosClass": "Burstable"
            }
        })
    }
}

#[derive(Debug)]
struct State {
    token: Mutex<String>,
    /// Each pod with the number of pod-list requests answered before it
    /// was added.
    pods: Mutex<Vec<(FakePod, usize)>>,
    pod_lists: AtomicUsize,
    refused: AtomicUsize,
}

/// A running fake kubelet on 127.0.0.1.
#[derive(Debug)]
pub struct FakeKubelet {
    /// `https://127.0.0.1:<port>`.
    pub address: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    /// Listens on 127.0.0.1:0 and accepts `token`. `handshake` runs the TLS
    /// server handshake on each connection with the serving certificate.
    pub async fn start<H, F, S>(token: &str, handshake: H) -> Self
    where
        H: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            token: Mutex::new(token.to_owned()),
            pods: Mutex::new(Vec::new()),
            pod_lists: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let accepted = handshake(tcp);
                let state = serving.clone();
                tokio::spawn(async move {
                    // A failed handshake is the client refusing the certificate.
                    if let Ok(stream) = accepted.await {
                        let _ = serve(stream, &state).await;
                    }
                });
            }
        });
        FakeKubelet {
            address,
            state,
            task,
        }
    }

    /// Adds a pod to the node.
    pub fn add_pod(&self, pod: FakePod) {
        let answered = self.state.pod_lists.load(Ordering::SeqCst);
        self.state.pods.lock().unwrap().push((pod, answered));
    }

    /// The token accepted from now on (the old one no longer is).
    pub fn set_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = token.to_owned();
    }

    /// How many pod lists were served.
    pub fn pod_lists(&self) -> usize {
        self.state.pod_lists.load(Ordering::SeqCst)
    }

    /// How many requests were refused with 401.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// The pod list as the next `GET /pods` would answer it.
    pub fn pod_list_json(&self) -> Value {
        pod_list(&self.state, self.pod_lists())
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_list(state: &State, answered: usize) -> Value {
    let items: Vec<Value> = state
        .pods
        .lock()
        .unwrap()
        .iter()
        .map(|(pod, added_at)| pod.to_json(answered - added_at))
        .collect();
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items
    })
}

/// Answers requests on one connection until the client closes it, keeping
/// it open between requests as the kubelet does.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: &State,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end + 4);
                break head;
            }
            if buffer.len() > MAX_HEAD {
                return respond(&mut stream, 431, "text/plain", b"").await;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let expected = format!("Bearer {}", state.token.lock().unwrap());
        if header("authorization") != Some(expected.as_str()) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            respond(
                &mut stream,
                401,
                "text/plain; charset=utf-8",
                b"Unauthorized\n",
            )
            .await?;
        } else if path != "/pods" && path != "/pods/" {
            respond(
                &mut stream,
                404,
                "text/plain; charset=utf-8",
                b"404 page not found\n",
            )
            .await?;
        } else if method != "GET" {
            respond(
                &mut stream,
                405,
                "text/plain; charset=utf-8",
                b"Method Not Allowed\n",
            )
            .await?;
        } else {
            let answered = state.pod_lists.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::to_vec(&pod_list(state, answered)).unwrap();
            respond(&mut stream, 200, "application/json", &body).await?;
        }
        if close {
            return stream.shutdown().await;
        }
    }
}

/// One response; bodies over 2 KiB chunked, as Go's server sends them when
/// the handler sets no length.
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nDate: Mon, 30 Nov 2026 05:00:00 GMT\r\n"
    );
    if status == 401 {
        head.push_str("X-Content-Type-Options: nosniff\r\n");
    }
    crate::fake_http::write_response(stream, head, body).await
}
