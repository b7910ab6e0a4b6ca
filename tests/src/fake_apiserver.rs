//! A fake Kubernetes API server for the issuer's Kubernetes tests. It stands
//! in for a kube-apiserver, which cannot run here, and speaks its real wire
//! format: HTTP/1.1 over TLS (ALPN `http/1.1`) with a serving certificate for
//! 127.0.0.1 and `localhost`, `Authorization: Bearer <token>` required on
//! every request, JSON bodies shaped as the API server writes them, and every
//! failure a `v1.Status` with the reason and details the real one gives.
//!
//! It serves:
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered as the
//!   service-account authenticator answers for a bound projected token;
//! - pods: get, list and watch, cluster-wide and per namespace, with label
//!   and field selectors, one resourceVersion counter as etcd keeps, and a
//!   bounded event history behind which a watch gets `410 Expired`;
//! - nodes: get, list and watch, from the same history;
//! - config maps: get, create, replace (with resourceVersion preconditions),
//!   JSON merge patch and server-side apply (treated as a merge of the
//!   applied object);
//! - `GET /version`.
//!
//! Requests are bounded as a real server bounds them: a head over 64 KiB
//! gets `431`, a body over 1 MiB gets `413`, and both close the connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fake_tls::ServingCertificate;

/// The audience of the API server itself: what a TokenReview without
/// `spec.audiences` is checked against.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The largest request head read, as the fake kubelet bounds it.
const MAX_HEAD: usize = 64 * 1024;

/// The largest request body read.
const MAX_BODY: usize = 1024 * 1024;

/// How many pod events the watch history keeps; a watch from before the
/// oldest is answered `410 Expired`, as from a compacted watch cache.
const HISTORY: usize = 256;

/// The watch timeout when the client sets none (the real server picks a
/// random one between 30 and 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// How often an open watch that allows bookmarks gets one, as the watch
/// cache sends them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// A fresh cluster CA (`kubernetes`, as kubeadm names it) and a serving
/// certificate from it with the names kubeadm gives the API server, plus
/// `localhost` and `127.0.0.1` where this fake listens.
pub fn serving_certificate() -> ServingCertificate {
    ServingCertificate::generate(
        "kubernetes",
        "kube-apiserver",
        &[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &[[127, 0, 0, 1], [10, 96, 0, 1]],
    )
}

/// Who a bound projected service-account token names, and its audiences.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: String,
    pub node_uid: String,
    /// The token's `aud`; empty is a legacy token, valid for [`API_AUDIENCE`].
    pub audiences: Vec<String>,
}

/// A container of an [`ApiPod`].
#[derive(Debug, Clone)]
pub struct ApiContainer {
    pub name: String,
    pub image: String,
    /// The containerd id, 64 hex digits.
    pub id: String,
}

impl ApiContainer {
    /// Container `name` with containerd id `id` and an image named after it.
    pub fn new(name: &str, id: &str) -> Self {
        ApiContainer {
            name: name.into(),
            image: format!("registry.example.org/shop/{name}:1.4.2"),
            id: id.into(),
        }
    }
}

/// A pod as the API server stores it.
#[derive(Debug, Clone)]
pub struct ApiPod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    pub node_name: String,
    pub labels: Vec<(String, String)>,
    pub containers: Vec<ApiContainer>,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: String,
}

/// A running pod of service account `default`; name, namespace, uid, node
/// and containers are the test's to set.
impl Default for ApiPod {
    fn default() -> Self {
        ApiPod {
            name: String::new(),
            namespace: "default".into(),
            uid: String::new(),
            service_account: "default".into(),
            node_name: String::new(),
            labels: Vec::new(),
            containers: Vec::new(),
            phase: "Running".into(),
        }
    }
}

/// A node as the API server stores it.
#[derive(Debug, Clone)]
pub struct ApiNode {
    pub name: String,
    pub uid: String,
    /// Added to (and overriding) the labels the kubelet sets itself.
    pub labels: Vec<(String, String)>,
}

#[derive(Debug)]
struct StoredPod {
    pod: ApiPod,
    resource_version: u64,
    created: String,
}

#[derive(Debug)]
struct StoredNode {
    node: ApiNode,
    resource_version: u64,
    created: String,
}

/// One change to a pod or a node (its object's `kind` says which), as a
/// watch sends it.
#[derive(Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
    object: Value,
}

/// What etcd and the watch cache hold.
#[derive(Debug)]
struct Store {
    /// The last resourceVersion handed out, for any kind.
    resource_version: u64,
    pods: BTreeMap<(String, String), StoredPod>,
    nodes: BTreeMap<String, StoredNode>,
    config_maps: BTreeMap<(String, String), Value>,
    events: VecDeque<WatchEvent>,
    /// Events up to this resourceVersion are no longer in `events`.
    compacted: u64,
}

impl Store {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, kind: &'static str, object: Value, resource_version: u64) {
        if self.events.len() == HISTORY {
            let dropped = self.events.pop_front().unwrap();
            self.compacted = dropped.resource_version;
        }
        self.events.push_back(WatchEvent {
            resource_version,
            kind,
            object,
        });
    }
}

#[derive(Debug)]
struct State {
    token: Mutex<String>,
    identities: Mutex<HashMap<String, TokenIdentity>>,
    store: Mutex<Store>,
    /// Woken on every pod change, for open watches.
    changed: Notify,
    token_reviews: AtomicUsize,
    last_token_review: Mutex<Option<Value>>,
    requests: Mutex<HashMap<(String, String), usize>>,
    refused: AtomicUsize,
}

/// A running fake API server on 127.0.0.1.
#[derive(Debug)]
pub struct FakeApiServer {
    /// `https://127.0.0.1:<port>`.
    pub address: String,
    certificate: ServingCertificate,
    state: Arc<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1:0 with a fresh certificate and accepts `token`.
    pub async fn start(token: &str) -> Self {
        let certificate = serving_certificate();
        // A client offering h2 and http/1.1 falls back to HTTP/1.1.
        let acceptor = certificate.acceptor(&[b"http/1.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        // Starts where a young cluster's etcd might be, not at zero.
        let start_version = 1000;
        let state = Arc::new(State {
            token: Mutex::new(token.to_owned()),
            identities: Mutex::new(HashMap::new()),
            store: Mutex::new(Store {
                resource_version: start_version,
                pods: BTreeMap::new(),
                nodes: BTreeMap::new(),
                config_maps: BTreeMap::new(),
                events: VecDeque::new(),
                compacted: start_version,
            }),
            changed: Notify::new(),
            token_reviews: AtomicUsize::new(0),
            last_token_review: Mutex::new(None),
            requests: Mutex::new(HashMap::new()),
            refused: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            // Owned here so that stopping the server drops every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                let state = serving.clone();
                connections.spawn(async move {
                    // A failed handshake is the client refusing the certificate.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = serve(stream, &state).await;
                    }
                });
            }
        });
        FakeApiServer {
            address,
            certificate,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.certificate.ca_pem
    }

    /// A kubeconfig for this server: its address, its CA as
    /// `certificate-authority-data` and the accepted token.
    pub fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.certificate.ca_pem);
        let token = self.state.token.lock().unwrap().clone();
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: sigil-issuer\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: sigil-issuer\n\
             current-context: fake\n",
            self.address
        )
    }

    /// The bearer token accepted from now on (the old one no longer is).
    pub fn set_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = token.to_owned();
    }

    /// Makes `token` a valid bound service-account token for `identity`.
    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.state
            .identities
            .lock()
            .unwrap()
            .insert(token.to_owned(), identity);
    }

    /// How many TokenReviews were answered.
    pub fn token_reviews(&self) -> usize {
        self.state.token_reviews.load(Ordering::SeqCst)
    }

    /// The body of the last TokenReview request answered.
    pub fn last_token_review(&self) -> Option<Value> {
        self.state.last_token_review.lock().unwrap().clone()
    }

    /// Creates the pod, or replaces the one of the same namespace and name;
    /// watches see `ADDED` or `MODIFIED`.
    pub fn add_pod(&self, pod: ApiPod) {
        let mut store = self.state.store.lock().unwrap();
        let resource_version = store.next_version();
        let key = (pod.namespace.clone(), pod.name.clone());
        let (kind, created) = match store.pods.get(&key) {
            Some(old) => ("MODIFIED", old.created.clone()),
            None => ("ADDED", rfc3339(SystemTime::now())),
        };
        let stored = StoredPod {
            pod,
            resource_version,
            created,
        };
        store.record(kind, pod_json(&stored, None), resource_version);
        store.pods.insert(key, stored);
        drop(store);
        self.state.changed.notify_waiters();
    }

    /// Sets a pod's phase (`Pending`, `Running`, `Succeeded`, `Failed`);
    /// watches see `MODIFIED`. Panics if there is no such pod.
    pub fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) {
        let mut store = self.state.store.lock().unwrap();
        let resource_version = store.next_version();
        let stored = store
            .pods
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        stored.pod.phase = phase.to_owned();
        stored.resource_version = resource_version;
        let object = pod_json(stored, None);
        store.record("MODIFIED", object, resource_version);
        drop(store);
        self.state.changed.notify_waiters();
    }

    /// Deletes a pod at once, as a forced deletion (grace period 0) does;
    /// watches see `DELETED`. Panics if there is no such pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut store = self.state.store.lock().unwrap();
        let resource_version = store.next_version();
        let mut stored = store
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"));
        stored.resource_version = resource_version;
        let object = pod_json(&stored, Some(&rfc3339(SystemTime::now())));
        store.record("DELETED", object, resource_version);
        drop(store);
        self.state.changed.notify_waiters();
    }

    /// Creates or replaces a node.
    pub fn add_node(&self, node: ApiNode) {
        let mut store = self.state.store.lock().unwrap();
        let resource_version = store.next_version();
        let created = store
            .nodes
            .get(&node.name)
            .map_or_else(|| rfc3339(SystemTime::now()), |old| old.created.clone());
        let kind = if store.nodes.contains_key(&node.name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let stored = StoredNode {
            node,
            resource_version,
            created,
        };
        store.record(kind, node_json(&stored), resource_version);
        store.nodes.insert(stored.node.name.clone(), stored);
        drop(store);
        self.state.changed.notify_waiters();
    }

    /// Deletes a node; watches see `DELETED`. Panics if there is no such node.
    pub fn delete_node(&self, name: &str) {
        let mut store = self.state.store.lock().unwrap();
        let resource_version = store.next_version();
        let mut stored = store
            .nodes
            .remove(name)
            .unwrap_or_else(|| panic!("no node {name}"));
        stored.resource_version = resource_version;
        store.record("DELETED", node_json(&stored), resource_version);
        drop(store);
        self.state.changed.notify_waiters();
    }

    /// Creates or replaces a config map holding `data`, as another client's
    /// write would.
    pub fn put_config_map(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        let object = json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "data": data
        });
        let mut store = self.state.store.lock().unwrap();
        store_config_map(&mut store, namespace, name, object, "kubectl", "Update");
    }

    /// A config map as `GET` would return it.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .store
            .lock()
            .unwrap()
            .config_maps
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// How many `method path` requests arrived (path without the query),
    /// refused ones included.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(&(method.to_owned(), path.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// How many requests were refused with 401.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection: from now on
    /// connections are refused, as from an API server that is down.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // Once the aborted task is gone, so is the listener.
            let _ = task.await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The media type of the body, without parameters.
    fn content_type(&self) -> &str {
        self.header("content-type")
            .map_or("", |v| v.split(';').next().unwrap_or("").trim())
    }

    /// The field manager of a write: the query's, else the user agent's
    /// first word, as the API server derives it.
    fn field_manager(&self) -> String {
        match self.param("fieldManager") {
            Some(manager) => manager.to_owned(),
            None => self
                .header("user-agent")
                .and_then(|ua| ua.split('/').next())
                .unwrap_or("unknown")
                .to_owned(),
        }
    }
}

/// What reading a request gave.
enum Incoming {
    Request(Request),
    /// The client closed the connection between requests.
    Closed,
    /// Over a bound: answered, and the connection is to be closed.
    Refused,
}

/// Answers requests on one connection until the client closes it, keeping
/// it open between requests as the API server does.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: &State,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await? {
            Incoming::Request(request) => request,
            Incoming::Closed => return Ok(()),
            Incoming::Refused => {
                stream.shutdown().await?;
                // As Go's server does, the rest of the request is read for a
                // moment before closing, so that closing with it unread does
                // not reset the connection before the client reads the answer.
                let mut sink = [0u8; 8192];
                let drain =
                    async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
                return Ok(());
            }
        };
        *state
            .requests
            .lock()
            .unwrap()
            .entry((request.method.clone(), request.path.clone()))
            .or_insert(0) += 1;
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let expected = format!("Bearer {}", state.token.lock().unwrap());
        if request.header("authorization") != Some(expected.as_str()) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            respond(
                &mut stream,
                401,
                &status_json(401, "Unauthorized", "Unauthorized".into(), None),
            )
            .await?;
        } else {
            match handle(state, &request) {
                Reply::Json(code, body) => respond(&mut stream, code, &body).await?,
                Reply::Watch(watch) => serve_watch(&mut stream, state, watch).await?,
            }
        }
        if close {
            return stream.shutdown().await;
        }
    }
}

/// Reads bytes until `buffer` holds at least `len` of them; false if the
/// client closed first.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    len: usize,
) -> std::io::Result<bool> {
    while buffer.len() < len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(true)
}

/// Reads until `buffer` holds a line ending at or before `limit`; the
/// line's length without CRLF, or `None` if the client closed first.
async fn fill_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
            return Ok(Some(end));
        }
        if buffer.len() > limit || !fill(stream, buffer, buffer.len() + 1).await? {
            return Ok(None);
        }
    }
}

/// One request: head, then a body by `Content-Length` or chunked.
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Incoming> {
    let head = loop {
        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = end.filter(|end| *end <= MAX_HEAD) {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            break head;
        }
        if end.is_some() || buffer.len() > MAX_HEAD {
            // Go's server answers an oversized head in plain text.
            let body = b"431 Request Header Fields Too Large";
            let head = format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.flush().await?;
            return Ok(Incoming::Refused);
        }
        let before = buffer.len();
        if !fill(stream, buffer, before + 1).await? {
            return Ok(Incoming::Closed);
        }
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method,
        path: path.to_owned(),
        query: parse_query(query),
        headers,
        body: Vec::new(),
    };
    let too_large = status_json(
        413,
        "RequestEntityTooLarge",
        format!("Request entity too large: limit is {MAX_BODY}"),
        None,
    );
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let Some(end) = fill_line(stream, buffer, 1024).await? else {
                return Ok(Incoming::Closed);
            };
            let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 2);
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                let bad = status_json(400, "BadRequest", "malformed chunked encoding".into(), None);
                respond(stream, 400, &bad).await?;
                return Ok(Incoming::Refused);
            };
            if size == 0 {
                // Trailer lines, up to the empty one.
                loop {
                    let Some(end) = fill_line(stream, buffer, MAX_HEAD).await? else {
                        return Ok(Incoming::Closed);
                    };
                    buffer.drain(..end + 2);
                    if end == 0 {
                        return Ok(Incoming::Request(request));
                    }
                }
            }
            if request.body.len() + size > MAX_BODY {
                respond(stream, 413, &too_large).await?;
                return Ok(Incoming::Refused);
            }
            if !fill(stream, buffer, size + 2).await? {
                return Ok(Incoming::Closed);
            }
            request.body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
        }
    }
    let length = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        respond(stream, 413, &too_large).await?;
        return Ok(Incoming::Refused);
    }
    if !fill(stream, buffer, length).await? {
        return Ok(Incoming::Closed);
    }
    request.body = buffer.drain(..length).collect();
    Ok(Incoming::Request(request))
}

/// `a=1&b=x%2Cy` as decoded pairs; empty pairs (kube sends `?&watch=true`)
/// are skipped.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The answer to a request.
enum Reply {
    Json(u16, Value),
    Watch(Watch),
}

/// The API paths this fake serves.
enum Route<'a> {
    Version,
    TokenReviews,
    /// All pods, or a namespace's.
    Pods(Option<&'a str>),
    Pod(&'a str, &'a str),
    Nodes,
    Node(&'a str),
    ConfigMaps(&'a str),
    ConfigMap(&'a str, &'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        ["version"] => Route::Version,
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => Route::TokenReviews,
        ["api", "v1", "pods"] => Route::Pods(None),
        ["api", "v1", "namespaces", ns, "pods"] => Route::Pods(Some(ns)),
        ["api", "v1", "namespaces", ns, "pods", name] => Route::Pod(ns, name),
        ["api", "v1", "nodes"] => Route::Nodes,
        ["api", "v1", "nodes", name] => Route::Node(name),
        ["api", "v1", "namespaces", ns, "configmaps"] => Route::ConfigMaps(ns),
        ["api", "v1", "namespaces", ns, "configmaps", name] => Route::ConfigMap(ns, name),
        _ => return None,
    })
}

fn handle(state: &State, request: &Request) -> Reply {
    let Some(route) = route(&request.path) else {
        return Reply::Json(
            404,
            status_json(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                Some(json!({})),
            ),
        );
    };
    let method = request.method.as_str();
    let (code, body) = match (route, method) {
        (Route::Version, "GET") => (200, version_json()),
        (Route::TokenReviews, "POST") => token_review(state, &request.body),
        (Route::Pods(namespace), "GET") => {
            return list_or_watch(state, Resource::Pods, namespace, request)
        }
        (Route::Nodes, "GET") => return list_or_watch(state, Resource::Nodes, None, request),
        (Route::Pod(ns, name), "GET") => {
            let store = state.store.lock().unwrap();
            match store.pods.get(&(ns.to_owned(), name.to_owned())) {
                Some(stored) => (200, pod_json(stored, None)),
                None => not_found("pods", name),
            }
        }
        (Route::Node(name), "GET") => {
            let store = state.store.lock().unwrap();
            match store.nodes.get(name) {
                Some(stored) => (200, node_json(stored)),
                None => not_found("nodes", name),
            }
        }
        (Route::ConfigMaps(ns), "POST") => create_config_map(state, ns, request),
        (Route::ConfigMap(ns, name), "GET") => {
            let store = state.store.lock().unwrap();
            match store.config_maps.get(&(ns.to_owned(), name.to_owned())) {
                Some(object) => (200, object.clone()),
                None => not_found("configmaps", name),
            }
        }
        (Route::ConfigMap(ns, name), "PUT") => replace_config_map(state, ns, name, request),
        (Route::ConfigMap(ns, name), "PATCH") => patch_config_map(state, ns, name, request),
        _ => (
            405,
            status_json(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".into(),
                Some(json!({})),
            ),
        ),
    };
    Reply::Json(code, body)
}

/// A `v1.Status` failure as the API server writes it.
/// A list of `resource`, or a watch of it when `watch` is set.
fn list_or_watch(
    state: &State,
    resource: Resource,
    namespace: Option<&str>,
    request: &Request,
) -> Reply {
    let filter = match PodFilter::from_request(namespace, resource.fields(), request) {
        Ok(filter) => filter,
        Err(status) => return Reply::Json(400, status),
    };
    if matches!(request.param("watch"), Some("true" | "1")) {
        return match Watch::from_request(resource, filter, request) {
            Ok(watch) => Reply::Watch(watch),
            Err(status) => Reply::Json(400, status),
        };
    }
    Reply::Json(200, list(state, resource, &filter))
}

fn status_json(code: u16, reason: &str, message: String, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// `pods "web-1" not found`: details name the object and the resource.
fn not_found(resource: &str, name: &str) -> (u16, Value) {
    (
        404,
        status_json(
            404,
            "NotFound",
            format!("{resource} \"{name}\" not found"),
            Some(json!({"name": name, "kind": resource})),
        ),
    )
}

fn bad_request(message: String) -> (u16, Value) {
    (
        400,
        status_json(400, "BadRequest", message, Some(json!({}))),
    )
}

fn version_json() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.1",
        "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
        "gitTreeState": "clean",
        "buildDate": "2025-05-15T08:19:08Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| Value::from(s.as_str()).to_string())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// A TokenReview, answered as the API server answers it: the review echoed
/// with a status from its service-account token authenticator.
fn token_review(state: &State, body: &[u8]) -> (u16, Value) {
    let review: Value = match serde_json::from_slice(body) {
        Ok(review @ Value::Object(_)) => review,
        Ok(_) => return bad_request("the object provided is unrecognized (must be of type TokenReview): couldn't get version/kind; json parse error: expected an object".into()),
        Err(e) => return bad_request(format!("the object provided is unrecognized (must be of type TokenReview): couldn't get version/kind; json parse error: {e}")),
    };
    if review.get("kind").is_some_and(|k| k != "TokenReview") {
        return bad_request(format!(
            "the object provided is unrecognized (must be of type TokenReview): {}",
            review["kind"]
        ));
    }
    let token = review["spec"]["token"].as_str().unwrap_or("");
    if token.is_empty() {
        return bad_request("token is required for TokenReview in authentication".into());
    }
    state.token_reviews.fetch_add(1, Ordering::SeqCst);
    *state.last_token_review.lock().unwrap() = Some(review.clone());
    let spec_audiences: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut spec = json!({"token": token});
    if !spec_audiences.is_empty() {
        spec["audiences"] = json!(spec_audiences);
    }
    // Without audiences the review asks for the API server's own.
    let requested = if spec_audiences.is_empty() {
        vec![API_AUDIENCE.to_owned()]
    } else {
        spec_audiences
    };
    let identity = state.identities.lock().unwrap().get(token).cloned();
    // Errors as the API server's union of request authenticators reports
    // them: `invalid bearer token` alone for a token no one knows, else
    // followed by the service-account authenticator's own, in brackets.
    let status = match identity {
        None => json!({"user": {}, "error": "invalid bearer token"}),
        Some(id) => {
            let token_audiences = if id.audiences.is_empty() {
                vec![API_AUDIENCE.to_owned()]
            } else {
                id.audiences.clone()
            };
            let granted: Vec<&String> = requested
                .iter()
                .filter(|a| token_audiences.contains(a))
                .collect();
            if granted.is_empty() {
                json!({
                    "user": {},
                    "error": format!(
                        "[invalid bearer token, token audiences {} is invalid for the target audiences {}]",
                        go_quoted(&token_audiences),
                        go_quoted(&requested)
                    )
                })
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", id.namespace, id.service_account),
                        "uid": id.service_account_uid,
                        "groups": [
                            "system:serviceaccounts",
                            format!("system:serviceaccounts:{}", id.namespace),
                            "system:authenticated"
                        ],
                        "extra": {
                            "authentication.kubernetes.io/credential-id": [format!("JTI={}", uuid_from(token.as_bytes()))],
                            "authentication.kubernetes.io/node-name": [id.node_name],
                            "authentication.kubernetes.io/node-uid": [id.node_uid],
                            "authentication.kubernetes.io/pod-name": [id.pod_name],
                            "authentication.kubernetes.io/pod-uid": [id.pod_uid]
                        }
                    },
                    "audiences": granted
                })
            }
        }
    };
    let mut metadata = match review.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    metadata.entry("creationTimestamp").or_insert(Value::Null);
    (
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": metadata,
            "spec": spec,
            "status": status
        }),
    )
}

/// One requirement of a label selector.
#[derive(Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelRequirement {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            LabelRequirement::Equals(k, v) => get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
        }
    }
}

/// `app=web,tier!=db,env in (a,b),!legacy`: the label selector grammar.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let set = |values: &str| -> Result<Vec<String>, String> {
        let inner = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("found '{values}', expected: '('"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!("found '{k}', expected: identifier"));
        }
        Ok(k.to_owned())
    };
    terms
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .map(|term| {
            let term = term.trim();
            if let Some(k) = term.strip_prefix('!') {
                return Ok(LabelRequirement::NotExists(key(k)?));
            }
            if let Some((k, v)) = term.split_once(" notin ") {
                return Ok(LabelRequirement::NotIn(key(k)?, set(v)?));
            }
            if let Some((k, v)) = term.split_once(" in ") {
                return Ok(LabelRequirement::In(key(k)?, set(v)?));
            }
            if let Some((k, v)) = term.split_once("!=") {
                return Ok(LabelRequirement::NotEquals(key(k)?, v.trim().to_owned()));
            }
            if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return Ok(LabelRequirement::Equals(key(k)?, v.trim().to_owned()));
            }
            Ok(LabelRequirement::Exists(key(term)?))
        })
        .collect::<Result<_, String>>()
        .map_err(|e| format!("unable to parse requirement: {e}"))
}

/// The pod fields the API server lets a field selector use, with where
/// they are in the pod.
const POD_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("spec.nodeName", "/spec/nodeName"),
    ("spec.restartPolicy", "/spec/restartPolicy"),
    ("spec.schedulerName", "/spec/schedulerName"),
    ("spec.serviceAccountName", "/spec/serviceAccountName"),
    ("status.phase", "/status/phase"),
    ("status.podIP", "/status/podIP"),
    ("status.nominatedNodeName", "/status/nominatedNodeName"),
];

/// The node fields the API server lets a field selector use.
const NODE_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("spec.unschedulable", "/spec/unschedulable"),
];

/// What a list or watch is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Nodes,
}

impl Resource {
    /// The `kind` of its objects.
    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Nodes => "Node",
        }
    }

    fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Resource::Pods => POD_FIELDS,
            Resource::Nodes => NODE_FIELDS,
        }
    }

    /// Every object of this resource, as `GET` returns it.
    fn current(self, store: &Store) -> Vec<Value> {
        match self {
            Resource::Pods => store.pods.values().map(|p| pod_json(p, None)).collect(),
            Resource::Nodes => store.nodes.values().map(node_json).collect(),
        }
    }
}

/// Which objects a list or watch covers.
#[derive(Debug)]
struct PodFilter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    /// JSON pointer, value, and whether the value must be equal.
    fields: Vec<(&'static str, String, bool)>,
}

impl PodFilter {
    fn from_request(
        namespace: Option<&str>,
        supported: &[(&str, &'static str)],
        request: &Request,
    ) -> Result<Self, Value> {
        let labels = parse_label_selector(request.param("labelSelector").unwrap_or(""))
            .map_err(|e| status_json(400, "BadRequest", e, Some(json!({}))))?;
        let mut fields = Vec::new();
        for term in request
            .param("fieldSelector")
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                let message = format!("invalid selector: '{term}'; can't understand '{term}'");
                return Err(status_json(400, "BadRequest", message, Some(json!({}))));
            };
            let Some((_, pointer)) = supported.iter().find(|(name, _)| *name == field) else {
                let message = format!("field label not supported: {field}");
                return Err(status_json(400, "BadRequest", message, Some(json!({}))));
            };
            fields.push((*pointer, value.to_owned(), equal));
        }
        Ok(PodFilter {
            namespace: namespace.map(String::from),
            labels,
            fields,
        })
    }

    fn matches(&self, pod: &Value) -> bool {
        let namespace = pod["metadata"]["namespace"].as_str();
        if self.namespace.is_some() && namespace != self.namespace.as_deref() {
            return false;
        }
        let empty = Map::new();
        let labels = pod["metadata"]["labels"].as_object().unwrap_or(&empty);
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|(pointer, value, equal)| {
                let actual = pod.pointer(pointer).and_then(Value::as_str).unwrap_or("");
                (actual == value) == *equal
            })
    }
}

/// A list item: the object without `kind` and `apiVersion`, which the API
/// server leaves out of the items of a list.
fn list_item(mut object: Value) -> Value {
    if let Value::Object(map) = &mut object {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

fn list(state: &State, resource: Resource, filter: &PodFilter) -> Value {
    let store = state.store.lock().unwrap();
    let items: Vec<Value> = resource
        .current(&store)
        .into_iter()
        .filter(|object| filter.matches(object))
        .map(list_item)
        .collect();
    json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": store.resource_version.to_string()},
        "items": items
    })
}

/// Where a watch starts.
#[derive(Debug)]
enum WatchStart {
    /// `resourceVersion` unset or `0`: the current pods as `ADDED`, then
    /// the changes after them.
    Current,
    /// The changes after this resourceVersion.
    After(u64),
}

/// A watch the client asked for.
#[derive(Debug)]
struct Watch {
    resource: Resource,
    filter: PodFilter,
    start: WatchStart,
    timeout: Duration,
    bookmarks: bool,
    /// `sendInitialEvents=true`: the initial `ADDED` events end with a
    /// bookmark annotated `k8s.io/initial-events-end`.
    initial_events_end: bool,
}

impl Watch {
    fn from_request(
        resource: Resource,
        filter: PodFilter,
        request: &Request,
    ) -> Result<Self, Value> {
        let start = match request.param("resourceVersion").unwrap_or("") {
            "" | "0" => WatchStart::Current,
            version => WatchStart::After(version.parse().map_err(|_| {
                let message = format!("invalid resource version: {version}");
                status_json(400, "BadRequest", message, Some(json!({})))
            })?),
        };
        let timeout = request
            .param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        Ok(Watch {
            resource,
            filter,
            start,
            timeout,
            bookmarks: request.param("allowWatchBookmarks") == Some("true"),
            initial_events_end: request.param("sendInitialEvents") == Some("true"),
        })
    }
}

/// An empty object carrying only a resourceVersion, as bookmarks are sent.
fn bookmark(resource: Resource, resource_version: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({
        "resourceVersion": resource_version.to_string(),
        "creationTimestamp": null
    });
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": match resource {
            Resource::Pods => json!({
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": metadata,
                "spec": {"containers": null},
                "status": {}
            }),
            Resource::Nodes => json!({
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": metadata,
                "spec": {},
                "status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": {}}
            }),
        }
    })
}

/// Streams a watch as the API server does: `200` with a chunked body of
/// newline-terminated events, ended at the timeout. A start before the
/// kept history is one `ERROR` event with a `410 Expired` status, as the
/// watch cache answers once the request has been accepted.
async fn serve_watch<S: AsyncWrite + Unpin>(
    stream: &mut S,
    state: &State,
    watch: Watch,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nDate: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        uuid(),
        http_date(SystemTime::now())
    );
    stream.write_all(head.as_bytes()).await?;
    let deadline = Instant::now() + watch.timeout;
    let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
    let mut first = Vec::new();
    let start = {
        let store = state.store.lock().unwrap();
        match watch.start {
            WatchStart::Current => {
                first.extend(
                    watch
                        .resource
                        .current(&store)
                        .into_iter()
                        .filter(|object| watch.filter.matches(object))
                        .map(|object| json!({"type": "ADDED", "object": object})),
                );
                if watch.initial_events_end {
                    first.push(bookmark(watch.resource, store.resource_version, true));
                }
                Ok(store.resource_version)
            }
            WatchStart::After(version) if version < store.compacted => {
                let message = format!("too old resource version: {version} ({})", store.compacted);
                Err(json!({
                    "type": "ERROR",
                    "object": status_json(410, "Expired", message, None)
                }))
            }
            WatchStart::After(version) => Ok(version),
        }
    };
    let mut cursor = match start {
        Ok(cursor) => cursor,
        Err(expired) => {
            // Nothing follows the error.
            write_events(stream, &[expired]).await?;
            stream.write_all(b"0\r\n\r\n").await?;
            return stream.flush().await;
        }
    };
    write_events(stream, &first).await?;
    loop {
        let notified = state.changed.notified();
        tokio::pin!(notified);
        // Registered before reading the history, so no change is missed.
        notified.as_mut().enable();
        let events: Vec<Value> = {
            let store = state.store.lock().unwrap();
            if cursor < store.compacted {
                // Left behind: the watch ends and the client resumes.
                break;
            }
            let events = store
                .events
                .iter()
                .filter(|e| {
                    e.resource_version > cursor
                        && e.object["kind"] == watch.resource.kind()
                        && watch.filter.matches(&e.object)
                })
                .map(|e| json!({"type": e.kind, "object": e.object}))
                .collect();
            cursor = cursor.max(store.events.back().map_or(0, |e| e.resource_version));
            events
        };
        write_events(stream, &events).await?;
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                if watch.bookmarks {
                    let version = state.store.lock().unwrap().resource_version;
                    write_events(stream, &[bookmark(watch.resource, version, false)]).await?;
                }
                break;
            }
            _ = tokio::time::sleep_until(next_bookmark), if watch.bookmarks => {
                let version = state.store.lock().unwrap().resource_version;
                write_events(stream, &[bookmark(watch.resource, version, false)]).await?;
                next_bookmark += BOOKMARK_EVERY;
            }
        }
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await
}

/// Events, one chunk each, each a JSON object and a newline.
async fn write_events<S: AsyncWrite + Unpin>(
    stream: &mut S,
    events: &[Value],
) -> std::io::Result<()> {
    for event in events {
        let mut line = serde_json::to_vec(event).unwrap();
        line.push(b'\n');
        stream
            .write_all(format!("{:x}\r\n", line.len()).as_bytes())
            .await?;
        stream.write_all(&line).await?;
        stream.write_all(b"\r\n").await?;
    }
    stream.flush().await
}

/// A node's InternalIP, fixed by its name.
fn node_ip(node: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, node.as_bytes());
    format!("10.0.{}.{}", d.as_ref()[0], d.as_ref()[1] % 250 + 2)
}

/// A pod's IP, fixed by its uid.
fn pod_ip(uid: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    format!("10.244.{}.{}", d.as_ref()[0], d.as_ref()[1] % 250 + 2)
}

/// The pod as the API server returns it; `deleted` is the deletion time
/// of a pod being deleted.
fn pod_json(stored: &StoredPod, deleted: Option<&str>) -> Value {
    let pod = &stored.pod;
    let labels: Map<String, Value> = pod
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let owner = pod
        .name
        .rsplit_once('-')
        .map_or(pod.name.as_str(), |(a, _)| a);
    let running = pod.phase == "Running";
    let specs: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "resources": {},
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
    let statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            let image_id = format!(
                "{}@sha256:{}",
                c.image.rsplit_once(':').map_or(c.image.as_str(), |(repo, _)| repo),
                hex::encode(ring::digest::digest(&ring::digest::SHA256, c.image.as_bytes()))
            );
            let (state, ready, started) = match pod.phase.as_str() {
                "Running" => (json!({"running": {"startedAt": stored.created}}), true, true),
                "Succeeded" => (
                    json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": stored.created, "finishedAt": stored.created, "containerID": format!("containerd://{}", c.id)}}),
                    false,
                    false,
                ),
                "Failed" => (
                    json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": stored.created, "finishedAt": stored.created, "containerID": format!("containerd://{}", c.id)}}),
                    false,
                    false,
                ),
                _ => {
                    // Still being created: no id or image digest yet.
                    return json!({
                        "name": c.name,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                        "lastState": {},
                        "ready": false,
                        "restartCount": 0,
                        "image": c.image,
                        "imageID": "",
                        "started": false
                    });
                }
            };
            json!({
                "name": c.name,
                "state": state,
                "lastState": {},
                "ready": ready,
                "restartCount": 0,
                "image": c.image,
                "imageID": image_id,
                "containerID": format!("containerd://{}", c.id),
                "started": started
            })
        })
        .collect();
    let mut metadata = json!({
        "name": pod.name,
        "generateName": format!("{owner}-"),
        "namespace": pod.namespace,
        "uid": pod.uid,
        "resourceVersion": stored.resource_version.to_string(),
        "creationTimestamp": stored.created,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": owner,
            "uid": uuid_from(owner.as_bytes()),
            "controller": true,
            "blockOwnerDeletion": true
        }],
        "managedFields": [{
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": stored.created,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {}, "f:ownerReferences": {}}}
        }]
    });
    if let Some(deleted) = deleted {
        metadata["deletionTimestamp"] = json!(deleted);
        metadata["deletionGracePeriodSeconds"] = json!(0);
    }
    let ready = if running { "True" } else { "False" };
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ],
                    "defaultMode": 420
                }
            }],
            "containers": specs,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": pod.service_account,
            "serviceAccount": pod.service_account,
            "nodeName": pod.node_name,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": pod.phase,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": stored.created},
                {"type": "Ready", "status": ready, "lastProbeTime": null, "lastTransitionTime": stored.created},
                {"type": "ContainersReady", "status": ready, "lastProbeTime": null, "lastTransitionTime": stored.created},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": stored.created}
            ],
            "hostIP": node_ip(&pod.node_name),
            "hostIPs": [{"ip": node_ip(&pod.node_name)}],
            "podIP": pod_ip(&pod.uid),
            "podIPs": [{"ip": pod_ip(&pod.uid)}],
            "startTime": stored.created,
            "containerStatuses": statuses,
            "qosClass": "BestEffort"
        }
    })
}

/// The node as the API server returns it, with the labels and status its
/// kubelet registers.
fn node_json(stored: &StoredNode) -> Value {
    let node = &stored.node;
    let mut labels: Map<String, Value> = [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
    .collect();
    labels.extend(
        node.labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone()))),
    );
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        node.uid.as_bytes(),
    ));
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": node.name,
            "uid": node.uid,
            "resourceVersion": stored.resource_version.to_string(),
            "creationTimestamp": stored.created,
            "labels": labels,
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            }
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24"]
        },
        "status": {
            "capacity": {"cpu": "4", "ephemeral-storage": "102625208Ki", "memory": "16375356Ki", "pods": "110"},
            "allocatable": {"cpu": "4", "ephemeral-storage": "94580335255", "memory": "16272956Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": stored.created, "lastTransitionTime": stored.created, "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": stored.created, "lastTransitionTime": stored.created, "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
                {"type": "PIDPressure", "status": "False", "lastHeartbeatTime": stored.created, "lastTransitionTime": stored.created, "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": stored.created, "lastTransitionTime": stored.created, "reason": "KubeletReady", "message": "kubelet is posting ready status"}
            ],
            "addresses": [
                {"type": "InternalIP", "address": node_ip(&node.name)},
                {"type": "Hostname", "address": node.name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": &digest[..32],
                "systemUUID": uuid_from(node.uid.as_bytes()),
                "bootID": uuid_from(node.name.as_bytes()),
                "kernelVersion": "6.8.0-48-generic",
                "osImage": "Ubuntu 24.04.1 LTS",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": "v1.33.1",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64"
            }
        }
    })
}

/// Checks a config map body: a JSON object of kind `ConfigMap` whose
/// `data` holds strings.
fn parse_config_map(body: &[u8]) -> Result<Value, (u16, Value)> {
    let unhandled = |reason: String| {
        bad_request(format!(
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: {reason}"
        ))
    };
    let object: Value = serde_json::from_slice(body).map_err(|e| unhandled(e.to_string()))?;
    if !object.is_object() {
        return Err(unhandled("expected a JSON object".into()));
    }
    check_config_map(&object).map_err(unhandled)?;
    Ok(object)
}

/// What a decoder of `v1.ConfigMap` would refuse.
fn check_config_map(object: &Value) -> Result<(), String> {
    if object.get("kind").is_some_and(|k| k != "ConfigMap") {
        return Err(format!("kind {} is not ConfigMap", object["kind"]));
    }
    if object.get("apiVersion").is_some_and(|v| v != "v1") {
        return Err(format!("apiVersion {} is not v1", object["apiVersion"]));
    }
    match object.get("data") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(data)) if data.values().all(Value::is_string) => Ok(()),
        Some(_) => Err(
            "json: cannot unmarshal into Go struct field ConfigMap.data of type map[string]string"
                .into(),
        ),
    }
}

/// Stores a config map, filling in what the server owns (namespace, name,
/// uid, creation time, resourceVersion, managed fields); returns it.
fn store_config_map(
    store: &mut Store,
    namespace: &str,
    name: &str,
    mut object: Value,
    manager: &str,
    operation: &str,
) -> Value {
    let key = (namespace.to_owned(), name.to_owned());
    let (uid, created) = match store.config_maps.get(&key) {
        Some(old) => (
            old["metadata"]["uid"].clone(),
            old["metadata"]["creationTimestamp"].clone(),
        ),
        None => (json!(uuid()), json!(rfc3339(SystemTime::now()))),
    };
    let resource_version = store.next_version();
    let data_fields: Map<String, Value> = object["data"]
        .as_object()
        .map(|data| data.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
        .unwrap_or_default();
    object["kind"] = json!("ConfigMap");
    object["apiVersion"] = json!("v1");
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = uid;
    metadata["resourceVersion"] = json!(resource_version.to_string());
    metadata["creationTimestamp"] = created;
    metadata["managedFields"] = json!([{
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": rfc3339(SystemTime::now()),
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": data_fields}
    }]);
    if object.get("data").is_some_and(Value::is_null) {
        object.as_object_mut().unwrap().remove("data");
    }
    store.config_maps.insert(key, object.clone());
    object
}

fn already_exists(name: &str) -> (u16, Value) {
    (
        409,
        status_json(
            409,
            "AlreadyExists",
            format!("configmaps \"{name}\" already exists"),
            Some(json!({"name": name, "kind": "configmaps"})),
        ),
    )
}

fn conflict(name: &str) -> (u16, Value) {
    (
        409,
        status_json(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            Some(json!({"name": name, "kind": "configmaps"})),
        ),
    )
}

/// A name or namespace in the body other than the URL's: what the API
/// server refuses.
fn check_identity(object: &Value, namespace: &str, name: Option<&str>) -> Result<(), (u16, Value)> {
    let metadata = &object["metadata"];
    if metadata["namespace"]
        .as_str()
        .is_some_and(|ns| ns != namespace)
    {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    if let (Some(url), Some(body)) = (name, metadata["name"].as_str()) {
        if url != body {
            return Err(bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
    }
    Ok(())
}

fn create_config_map(state: &State, namespace: &str, request: &Request) -> (u16, Value) {
    let object = match parse_config_map(&request.body) {
        Ok(object) => object,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = check_identity(&object, namespace, None) {
        return refusal;
    }
    let Some(name) = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    else {
        return (
            422,
            status_json(
                422,
                "Invalid",
                "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required".into(),
                Some(json!({"kind": "ConfigMap", "causes": [{
                    "reason": "FieldValueRequired",
                    "message": "Required value: name or generateName is required",
                    "field": "metadata.name"
                }]})),
            ),
        );
    };
    let name = name.to_owned();
    let mut store = state.store.lock().unwrap();
    if store
        .config_maps
        .contains_key(&(namespace.to_owned(), name.clone()))
    {
        return already_exists(&name);
    }
    let stored = store_config_map(
        &mut store,
        namespace,
        &name,
        object,
        &request.field_manager(),
        "Update",
    );
    (201, stored)
}

fn replace_config_map(
    state: &State,
    namespace: &str,
    name: &str,
    request: &Request,
) -> (u16, Value) {
    let object = match parse_config_map(&request.body) {
        Ok(object) => object,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = check_identity(&object, namespace, Some(name)) {
        return refusal;
    }
    let mut store = state.store.lock().unwrap();
    let Some(current) = store
        .config_maps
        .get(&(namespace.to_owned(), name.to_owned()))
    else {
        return not_found("configmaps", name);
    };
    // A resourceVersion in the body is a precondition; none is unconditional.
    if let Some(version) = object["metadata"]["resourceVersion"].as_str() {
        if version != current["metadata"]["resourceVersion"] {
            return conflict(name);
        }
    }
    let stored = store_config_map(
        &mut store,
        namespace,
        name,
        object,
        &request.field_manager(),
        "Update",
    );
    (200, stored)
}

/// RFC 7386: objects merge member by member, `null` removes, anything
/// else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn patch_config_map(state: &State, namespace: &str, name: &str, request: &Request) -> (u16, Value) {
    let apply = match request.content_type() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" => true,
        _ => {
            return (
                415,
                status_json(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {:?})", request.content_type()),
                    Some(json!({})),
                ),
            );
        }
    };
    if apply && request.param("fieldManager").is_none_or(str::is_empty) {
        return (
            422,
            status_json(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{
                    "reason": "FieldValueRequired",
                    "message": "Required value: is required for apply patch",
                    "field": "fieldManager"
                }]})),
            ),
        );
    }
    // An applied configuration is sent as JSON by every client this fake
    // serves, and JSON is YAML; a merge patch is JSON by definition.
    let patch: Value = match serde_json::from_slice(&request.body) {
        Ok(patch @ Value::Object(_)) => patch,
        Ok(_) => return bad_request("the patch is not a JSON object".into()),
        Err(e) => return bad_request(format!("error decoding patch: {e}")),
    };
    if apply {
        if let Err(reason) = check_config_map(&patch) {
            return bad_request(reason);
        }
        if patch.get("kind").is_none() || patch.get("apiVersion").is_none() {
            return bad_request("invalid object type: /, Kind=".into());
        }
    }
    if let Err(refusal) = check_identity(&patch, namespace, Some(name)) {
        return refusal;
    }
    let mut store = state.store.lock().unwrap();
    let key = (namespace.to_owned(), name.to_owned());
    let (mut object, code) = match store.config_maps.get(&key) {
        Some(current) => {
            if let Some(version) = patch["metadata"]["resourceVersion"].as_str() {
                if version != current["metadata"]["resourceVersion"] {
                    return conflict(name);
                }
            }
            (current.clone(), 200)
        }
        // Apply creates what is missing; a merge patch has nothing to patch.
        None if apply => (json!({}), 201),
        None => return not_found("configmaps", name),
    };
    merge_patch(&mut object, &patch);
    if let Err(reason) = check_config_map(&object) {
        return bad_request(reason);
    }
    let operation = if apply { "Apply" } else { "Update" };
    let stored = store_config_map(
        &mut store,
        namespace,
        name,
        object,
        &request.field_manager(),
        operation,
    );
    (code, stored)
}

/// One JSON response; bodies over 2 KiB chunked, as Go's server sends
/// them when the handler sets no length.
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    body: &Value,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Unknown",
    };
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nDate: {}\r\n",
        uuid(),
        http_date(SystemTime::now())
    );
    crate::fake_http::write_response(stream, head, &body).await
}

/// A random (version 4) UUID.
fn uuid() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    format_uuid(bytes)
}

/// A UUID fixed by `seed`, for ids that must stay the same across answers.
fn uuid_from(seed: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, seed);
    format_uuid(digest.as_ref()[..16].try_into().unwrap())
}

fn format_uuid(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The UTC calendar date and time of `t`: year, month, day, hour, minute,
/// second, and the weekday (0 is Sunday).
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let days = (secs / 86_400) as i64;
    let weekday = ((days + 4) % 7) as u64;
    // Days to civil date, after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        weekday,
    )
}

/// `2026-11-30T04:58:10Z`, as metav1.Time is written.
fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `Mon, 30 Nov 2026 05:00:00 GMT`, the `Date` header.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, wd) = civil(t);
    format!(
        "{}, {d:02} {} {y} {h:02}:{mi:02}:{s:02} GMT",
        DAYS[wd as usize],
        MONTHS[mo as usize - 1]
    )
}
