//! The SPIFFE Workload API server (SPIFFE_Workload_API.md,
//! SPIFFE_Workload_Endpoint.md), generic over an [`IdentitySource`].
//!
//! Every request must carry `workload.spiffe.io: true`. Callers are identified
//! out of band by the socket's peer credentials. Streams send the full state at
//! once, then again on every change that alters what this caller sees.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::connection::ConnectionInfo;
use proto::workload as pb;
use proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tonic::{Request, Response, Status};

use crate::id::trust_domain_id;
use crate::jwtsvid;
use crate::selector::{Selector, Selectors};
use crate::source::{Caller, Identity, IdentitySource, Snapshot};

/// The metadata key every Workload API request carries.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How long a call waits for SVIDs that are entitled but not yet minted.
const MINT_WAIT: Duration = Duration::from_secs(10);

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API service.
#[derive(Debug)]
pub struct WorkloadApi<S> {
    source: Arc<S>,
}

impl<S> Clone for WorkloadApi<S> {
    fn clone(&self) -> Self {
        WorkloadApi {
            source: self.source.clone(),
        }
    }
}

impl<S: IdentitySource> WorkloadApi<S> {
    pub fn new(source: Arc<S>) -> Self {
        WorkloadApi { source }
    }

    /// Checks the security header and attests the caller.
    async fn admit<T>(&self, request: &Request<T>) -> Result<Selectors, Status> {
        check_header(request)?;
        let info = request
            .extensions()
            .get::<ConnectionInfo>()
            .ok_or_else(|| Status::internal("connection information is unavailable"))?;
        let cred = info.peer.ok_or_else(|| {
            Status::internal("peer credentials are unavailable on this connection")
        })?;
        self.source
            .attest(Caller {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
                cache: info.cache.clone(),
            })
            .await
    }

    /// Answers now with `render(snapshot, selectors)` and again whenever the
    /// caller's view changes. `render` returns `Ok(None)` while entitled SVIDs
    /// are still being minted; an error from the first render is returned at
    /// once. Changes are told by `fingerprint`, a hash of what the caller sees
    /// (entries, SVID serials, bundle sequences), so a stream keeps no copy
    /// of its SVIDs and unrelated changes cost no rendering. The stream is
    /// polled by the connection's own task: no task or channel per call.
    fn stream<T, R, P>(
        &self,
        selectors: Selectors,
        render: R,
        fingerprint: P,
    ) -> Result<Stream<T>, Status>
    where
        T: Send + 'static,
        R: Fn(&Snapshot, &[Selector]) -> Result<Option<T>, Status> + Send + 'static,
        P: Fn(&Snapshot, &[Selector]) -> u64 + Send + 'static,
    {
        let mut snapshots = self.source.snapshots();
        let snapshot = snapshots.borrow_and_update().clone();
        let first = render(&snapshot, &selectors)?;
        let watch = Watch {
            last: first.as_ref().map(|_| fingerprint(&snapshot, &selectors)),
            first,
            snapshots,
            selectors,
            render,
            fingerprint,
            started: tokio::time::Instant::now(),
            ended: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            watch,
            |mut watch| async move {
                let item = watch.next().await?;
                Some((item, watch))
            },
        )))
    }
}

/// A stream's state between messages.
struct Watch<T, R, P> {
    first: Option<T>,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    selectors: Selectors,
    render: R,
    fingerprint: P,
    /// The fingerprint of the last message sent; `None` before the first.
    last: Option<u64>,
    started: tokio::time::Instant,
    ended: bool,
}

impl<T, R, P> Watch<T, R, P>
where
    R: Fn(&Snapshot, &[Selector]) -> Result<Option<T>, Status>,
    P: Fn(&Snapshot, &[Selector]) -> u64,
{
    /// The next message: at once for the first, then on the next change the
    /// caller can see. `None` ends the stream.
    async fn next(&mut self) -> Option<Result<T, Status>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(MINT_WAIT), if self.last.is_none() => {}
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            let print = (self.fingerprint)(&snapshot, &self.selectors);
            if self.last == Some(print) {
                continue;
            }
            match (self.render)(&snapshot, &self.selectors) {
                Ok(Some(message)) => {
                    self.last = Some(print);
                    return Some(Ok(message));
                }
                Ok(None) if self.last.is_none() && self.started.elapsed() > MINT_WAIT => {
                    self.ended = true;
                    return Some(Err(Status::unavailable("SVIDs are not minted yet; retry")));
                }
                Ok(None) => {}
                Err(status) => {
                    self.ended = true;
                    return Some(Err(status));
                }
            }
        }
    }
}

/// What a caller's X.509 view depends on.
fn x509_fingerprint(snapshot: &Snapshot, selectors: &[Selector]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    for identity in snapshot.entitled(selectors) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        identity.x509.as_ref().map(|x| x.serial).hash(&mut hasher);
    }
    hasher.finish()
}

/// What a caller's bundle view depends on.
fn bundles_fingerprint(snapshot: &Snapshot, selectors: &[Selector]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    hasher.finish()
}

fn bundles_fingerprint_into(
    hasher: &mut impl std::hash::Hasher,
    snapshot: &Snapshot,
    selectors: &[Selector],
) {
    use std::hash::Hash;
    snapshot.bundle.sequence().hash(hasher);
    snapshot.bundle.x509_authorities().len().hash(hasher);
    snapshot.bundle.jwt_authorities().len().hash(hasher);
    for identity in snapshot.entitled(selectors) {
        for td in &identity.federates_with {
            td.as_str().hash(hasher);
            snapshot
                .federated
                .get(td)
                .map(|b| b.sequence())
                .hash(hasher);
        }
    }
}

/// Refuses requests without `workload.spiffe.io: true`.
pub fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

fn x509_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Result<Option<pb::X509svidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let bundle = snapshot.bundle.x509_der_concat();
    let svids: Vec<pb::X509svid> = entitled
        .iter()
        .filter_map(|identity| {
            identity.x509.as_ref().map(|x509| pb::X509svid {
                spiffe_id: identity.spiffe_id.clone(),
                x509_svid: x509.chain.clone(),
                x509_svid_key: x509.key_pkcs8.to_vec(),
                bundle: bundle.clone(),
                hint: identity.hint.clone(),
            })
        })
        .collect();
    if svids.len() < entitled.len() {
        return Ok(None);
    }
    let mut federated_bundles = std::collections::HashMap::new();
    for identity in &entitled {
        for td in &identity.federates_with {
            if let Some(b) = snapshot.federated.get(td) {
                federated_bundles.insert(trust_domain_id(td), b.x509_der_concat());
            }
        }
    }
    Ok(Some(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    }))
}

/// The bundles a caller receives: its own trust domain's and those its
/// identities federate with.
fn bundle_map<V>(
    snapshot: &Snapshot,
    selectors: &[Selector],
    encode: impl Fn(&crate::Bundle) -> V,
) -> Result<std::collections::HashMap<String, V>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let mut map = std::collections::HashMap::new();
    map.insert(
        trust_domain_id(snapshot.bundle.trust_domain()),
        encode(&snapshot.bundle),
    );
    for identity in entitled {
        for td in &identity.federates_with {
            if let Some(b) = snapshot.federated.get(td) {
                map.insert(trust_domain_id(td), encode(b));
            }
        }
    }
    Ok(map)
}

#[tonic::async_trait]
impl<S: IdentitySource> SpiffeWorkloadApi for WorkloadApi<S> {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.admit(&request).await?;
        Ok(Response::new(self.stream(
            selectors,
            x509_response,
            x509_fingerprint,
        )?))
    }

    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector]| {
            bundle_map(snapshot, selectors, |b| b.x509_der_concat()).map(|bundles| {
                Some(pb::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles,
                })
            })
        };
        Ok(Response::new(self.stream(
            selectors,
            render,
            bundles_fingerprint,
        )?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = self.admit(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let snapshot = self.source.snapshots().borrow().clone();
        let identities: Vec<_> = snapshot
            .entitled(&selectors)
            .filter(|i| request.spiffe_id.is_empty() || i.spiffe_id == request.spiffe_id)
            .cloned()
            .collect();
        if identities.is_empty() {
            return Err(no_identity());
        }
        let mut svids = Vec::with_capacity(identities.len());
        for identity in identities {
            let svid = self
                .source
                .fetch_jwt_svid(&identity, &request.audience)
                .await?;
            svids.push(pb::Jwtsvid {
                spiffe_id: identity.spiffe_id.clone(),
                svid,
                hint: identity.hint.clone(),
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector]| {
            bundle_map(snapshot, selectors, |b| b.jwt_only_jwks_json())
                .map(|bundles| Some(pb::JwtBundlesResponse { bundles }))
        };
        Ok(Response::new(self.stream(
            selectors,
            render,
            bundles_fingerprint,
        )?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snapshot = self.source.snapshots().borrow().clone();
        let validated = jwtsvid::validate(
            &request.svid,
            &request.audience,
            |td| snapshot.bundle_for(td),
            SystemTime::now(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(to_struct(validated.claims)),
        }))
    }

    type FetchWITSVIDStream = Stream<pb::WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        request: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let selectors = self.admit(&request).await?;
        let wanted = request.into_inner().spiffe_id;
        let filter = move |identity: &Identity| wanted.is_empty() || identity.spiffe_id == wanted;
        let fingerprint_filter = filter.clone();
        let render = move |snapshot: &Snapshot, selectors: &[Selector]| {
            wit_response(snapshot, selectors, &filter)
        };
        let fingerprint = move |snapshot: &Snapshot, selectors: &[Selector]| {
            wit_fingerprint(snapshot, selectors, &fingerprint_filter)
        };
        Ok(Response::new(self.stream(
            selectors,
            render,
            fingerprint,
        )?))
    }

    type FetchWITBundlesStream = Stream<pb::WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        request: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let selectors = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector]| {
            bundle_map(snapshot, selectors, |b| {
                String::from_utf8(b.wit_only_jwks_json()).expect("JSON is UTF-8")
            })
            .map(|bundles| {
                Some(pb::WitBundlesResponse {
                    bundles,
                    more: false,
                })
            })
        };
        Ok(Response::new(self.stream(
            selectors,
            render,
            bundles_fingerprint,
        )?))
    }
}

/// The caller's WIT-SVIDs (those `filter` keeps), once all are minted.
fn wit_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
    filter: &impl Fn(&Identity) -> bool,
) -> Result<Option<pb::WitsvidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).filter(|i| filter(i)).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let svids: Vec<pb::Witsvid> = entitled
        .iter()
        .filter_map(|identity| {
            identity.wit.as_ref().map(|wit| pb::Witsvid {
                spiffe_id: identity.spiffe_id.clone(),
                wit_svid: wit.token.clone(),
                wit_svid_key: wit.key_jwk.to_string(),
                hint: identity.hint.clone(),
            })
        })
        .collect();
    if svids.len() < entitled.len() {
        return Ok(None);
    }
    Ok(Some(pb::WitsvidResponse { svids }))
}

/// What a caller's WIT view depends on.
fn wit_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    filter: &impl Fn(&Identity) -> bool,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for identity in snapshot.entitled(selectors).filter(|i| filter(i)) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        identity.wit.as_ref().map(|w| w.serial).hash(&mut hasher);
    }
    hasher.finish()
}

/// JSON claims as a protobuf Struct.
fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
