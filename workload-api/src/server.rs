//! The SPIFFE Workload API server (SPIFFE_Workload_API.md,
//! SPIFFE_Workload_Endpoint.md), generic over an [`IdentitySource`].
//!
//! Every request must carry `workload.spiffe.io: true`. Callers are identified
//! out of band by the socket's peer credentials. Streams send the full state at
//! once, then again on every change that alters what this caller sees.
//!
//! No expired credential is served: responses are rendered with the time
//! they are sent and leave out X509-SVIDs, WIT-SVIDs and JWT-SVIDs past their
//! expiry, and a stream looks again when one of its SVIDs expires. A caller
//! whose every SVID has expired gets UNAVAILABLE naming how long the issuer
//! has been unreachable.

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
use crate::source::{Caller, Identity, IdentitySource, IssuerOutage, Snapshot};

/// The metadata key every Workload API request carries.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How long a call waits for SVIDs that are entitled but not yet minted.
const MINT_WAIT: Duration = Duration::from_secs(10);
/// The longest a stream sleeps before re-reading the wall clock while one of
/// its SVIDs is due to expire. Sleeps run on the monotonic clock, which
/// stands still while a host is suspended; the wall clock jumps on resume.
const EXPIRY_POLL: Duration = Duration::from_secs(2);

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// What a caller would be sent at one moment.
#[derive(Debug)]
enum View<T> {
    /// This message.
    Ready(T),
    /// Entitled SVIDs are still being minted.
    Pending,
    /// Every SVID the caller is entitled to has expired and none is being
    /// minted: nothing may be served.
    Expired,
}

/// What a caller's view depends on at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    /// A hash of what the caller sees: entries, serials of the SVIDs still
    /// valid, bundle sequences.
    hash: u64,
    /// When the first SVID in view expires, which changes the view.
    next_expiry: Option<SystemTime>,
}

impl Fingerprint {
    fn of(hasher: impl std::hash::Hasher) -> Self {
        Fingerprint {
            hash: hasher.finish(),
            next_expiry: None,
        }
    }
}

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
        let selectors = self
            .source
            .attest(Caller {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
                cache: info.cache.clone(),
            })
            .await?;
        let snapshot = self.source.snapshots().borrow().clone();
        if let Some(reason) = &snapshot.refused {
            return Err(Status::permission_denied(reason.to_string()));
        }
        if snapshot.awaiting_entries {
            return Err(awaiting_entries(
                self.source.issuer_outage(),
                SystemTime::now(),
            ));
        }
        Ok(selectors)
    }

    /// Answers now with `render(snapshot, selectors, now)` and again whenever
    /// the caller's view changes: a new snapshot, or one of its SVIDs
    /// expiring. `render` returns `Pending` while entitled SVIDs are still
    /// being minted; an error from the first render is returned at once, and
    /// `Expired` becomes UNAVAILABLE naming the issuer outage. Changes are
    /// told by `fingerprint`, a hash of what the caller sees (entries, SVID
    /// serials, bundle sequences), so a stream keeps no copy of its SVIDs and
    /// unrelated changes cost no rendering. The stream is polled by the
    /// connection's own task: no task or channel per call.
    fn stream<T, R, P>(
        &self,
        selectors: Selectors,
        render: R,
        fingerprint: P,
    ) -> Result<Stream<T>, Status>
    where
        T: Send + 'static,
        R: Fn(&Snapshot, &[Selector], SystemTime) -> Result<View<T>, Status> + Send + 'static,
        P: Fn(&Snapshot, &[Selector], SystemTime) -> Fingerprint + Send + 'static,
    {
        let mut snapshots = self.source.snapshots();
        let snapshot = snapshots.borrow_and_update().clone();
        let now = SystemTime::now();
        let first = match render(&snapshot, &selectors, now)? {
            View::Ready(message) => Some(message),
            View::Pending => None,
            View::Expired => return Err(all_expired(self.source.issuer_outage(), now)),
        };
        let print = fingerprint(&snapshot, &selectors, now);
        let watch = Watch {
            last: first.as_ref().map(|_| print.hash),
            next_expiry: print.next_expiry,
            first,
            snapshots,
            selectors,
            render,
            fingerprint,
            source: self.source.clone(),
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
struct Watch<S, T, R, P> {
    first: Option<T>,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    selectors: Selectors,
    render: R,
    fingerprint: P,
    /// Asked for the outage when everything has expired.
    source: Arc<S>,
    /// The fingerprint of the last message sent; `None` before the first.
    last: Option<u64>,
    /// When the first SVID in view expires (wall clock).
    next_expiry: Option<SystemTime>,
    started: tokio::time::Instant,
    ended: bool,
}

impl<S, T, R, P> Watch<S, T, R, P>
where
    S: IdentitySource,
    R: Fn(&Snapshot, &[Selector], SystemTime) -> Result<View<T>, Status>,
    P: Fn(&Snapshot, &[Selector], SystemTime) -> Fingerprint,
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
            // Expiry is a wall-clock time; the sleep is monotonic and
            // capped, so a clock that jumps forward is noticed promptly.
            let expiry_in = self.next_expiry.map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(EXPIRY_POLL)
            });
            let changed = tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    true
                }
                _ = tokio::time::sleep_until(self.started + MINT_WAIT), if self.last.is_none() => true,
                _ = tokio::time::sleep(expiry_in.unwrap_or_default()), if expiry_in.is_some() => false,
            };
            let now = SystemTime::now();
            if !changed && self.next_expiry.is_some_and(|at| now < at) {
                continue;
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(reason) = &snapshot.refused {
                self.ended = true;
                return Some(Err(Status::permission_denied(reason.to_string())));
            }
            let print = (self.fingerprint)(&snapshot, &self.selectors, now);
            self.next_expiry = print.next_expiry;
            if self.last == Some(print.hash) {
                continue;
            }
            match (self.render)(&snapshot, &self.selectors, now) {
                Ok(View::Ready(message)) => {
                    self.last = Some(print.hash);
                    return Some(Ok(message));
                }
                Ok(View::Pending) if self.last.is_none() && self.started.elapsed() >= MINT_WAIT => {
                    self.ended = true;
                    return Some(Err(Status::unavailable("SVIDs are not minted yet; retry")));
                }
                Ok(View::Pending) => {}
                Ok(View::Expired) => {
                    self.ended = true;
                    return Some(Err(all_expired(self.source.issuer_outage(), now)));
                }
                Err(status) => {
                    self.ended = true;
                    return Some(Err(status));
                }
            }
        }
    }
}

/// The answer when every credential a workload could be served has expired.
fn all_expired(outage: Option<IssuerOutage>, now: SystemTime) -> Status {
    match outage {
        Some(outage) => Status::unavailable(format!(
            "every SVID for this workload has expired; the issuer has been unreachable for {}: {}",
            format_lasted(outage.lasted(now)),
            outage.last_error
        )),
        None => Status::unavailable(
            "every SVID for this workload has expired; new ones are being minted, retry",
        ),
    }
}

/// The answer while the node has not received its registration entries:
/// what a caller is entitled to is not known yet.
fn awaiting_entries(outage: Option<IssuerOutage>, now: SystemTime) -> Status {
    match outage {
        Some(outage) => Status::unavailable(format!(
            "the agent has not received its registration entries yet; the issuer has been unreachable for {}: {}",
            format_lasted(outage.lasted(now)),
            outage.last_error
        )),
        None => Status::unavailable(
            "the agent has not received its registration entries yet; retry",
        ),
    }
}

/// A duration for people, to the second: `45s`, `1m 12s`, `3h 0m 5s`.
fn format_lasted(lasted: Duration) -> String {
    let secs = lasted.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// Sorts the caller's identities by the state of one credential at a
/// moment (`valid`: `None` when not minted, else whether still valid). The
/// view waits while any is not minted, unless none left is valid and some
/// have expired: then nothing can be served now.
fn sort_by_validity<'a>(
    entitled: &[&'a Identity],
    valid: impl Fn(&Identity) -> Option<bool>,
) -> View<Vec<&'a Identity>> {
    let mut ready = Vec::with_capacity(entitled.len());
    let (mut pending, mut expired) = (false, false);
    for identity in entitled {
        match valid(identity) {
            None => pending = true,
            Some(true) => ready.push(*identity),
            Some(false) => expired = true,
        }
    }
    if ready.is_empty() && expired {
        View::Expired
    } else if pending {
        View::Pending
    } else {
        View::Ready(ready)
    }
}

/// Hashes one credential's state at a moment: absent, valid (with its
/// serial, noting its expiry), or expired.
fn credential_into(
    hasher: &mut impl std::hash::Hasher,
    next_expiry: &mut Option<SystemTime>,
    credential: Option<(u64, SystemTime)>,
    now: SystemTime,
) {
    use std::hash::Hash;
    match credential {
        None => 0u8.hash(hasher),
        Some((serial, expires_at)) if now < expires_at => {
            1u8.hash(hasher);
            serial.hash(hasher);
            *next_expiry = Some(next_expiry.map_or(expires_at, |t| t.min(expires_at)));
        }
        Some(_) => 2u8.hash(hasher),
    }
}

/// What a caller's X.509 view depends on at `now`.
fn x509_fingerprint(snapshot: &Snapshot, selectors: &[Selector], now: SystemTime) -> Fingerprint {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut next_expiry = None;
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    for identity in snapshot.entitled(selectors) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        let x509 = identity.x509.as_ref().map(|x| (x.serial, x.expires_at()));
        credential_into(&mut hasher, &mut next_expiry, x509, now);
    }
    Fingerprint {
        next_expiry,
        ..Fingerprint::of(hasher)
    }
}

/// What a caller's bundle view depends on.
fn bundles_fingerprint(snapshot: &Snapshot, selectors: &[Selector], _: SystemTime) -> Fingerprint {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    Fingerprint::of(hasher)
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

/// Audiences one JWT-SVID request may name. Each is signed into the token
/// and cached by the agent, so both are bounded.
pub const MAX_AUDIENCES: usize = 32;
/// Bytes of one audience.
pub const MAX_AUDIENCE_BYTES: usize = 2048;
/// Bytes of a JWT-SVID given to ValidateJWTSVID: room for every audience.
pub const MAX_JWT_BYTES: usize = 128 * 1024;

/// Refuses audience lists that are empty, too long or too large.
pub fn check_audiences(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "audience: {} audiences; at most {MAX_AUDIENCES}",
            audience.len()
        )));
    }
    if let Some(long) = audience.iter().find(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(Status::invalid_argument(format!(
            "audience: {} bytes; at most {MAX_AUDIENCE_BYTES} per audience",
            long.len()
        )));
    }
    Ok(())
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// The caller's X509-SVIDs valid at `now`, once all are minted. Expired ones
/// are left out (X509-SVID.md section 4.3 has validators reject them anyway).
fn x509_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
) -> Result<View<pb::X509svidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let ready = match sort_by_validity(&entitled, |i| i.x509.as_ref().map(|x| x.valid_at(now))) {
        View::Ready(ready) => ready,
        View::Pending => return Ok(View::Pending),
        View::Expired => return Ok(View::Expired),
    };
    let bundle = snapshot.bundle.x509_der_concat();
    let svids: Vec<pb::X509svid> = ready
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
    let mut federated_bundles = std::collections::HashMap::new();
    for identity in &entitled {
        for td in &identity.federates_with {
            if let Some(b) = snapshot.federated.get(td) {
                federated_bundles.insert(trust_domain_id(td), b.x509_der_concat());
            }
        }
    }
    Ok(View::Ready(pb::X509svidResponse {
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
        let render = |snapshot: &Snapshot, selectors: &[Selector], _: SystemTime| {
            bundle_map(snapshot, selectors, |b| b.x509_der_concat()).map(|bundles| {
                View::Ready(pb::X509BundlesResponse {
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
        check_audiences(&request.audience)?;
        if request.spiffe_id.len() > crate::id::MAX_SPIFFE_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "spiffe_id: {} bytes; at most {}",
                request.spiffe_id.len(),
                crate::id::MAX_SPIFFE_ID_BYTES
            )));
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
        jwt_response(
            &self.source,
            identities,
            request.audience,
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }

    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector], _: SystemTime| {
            bundle_map(snapshot, selectors, |b| b.jwt_only_jwks_json())
                .map(|bundles| View::Ready(pb::JwtBundlesResponse { bundles }))
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
        check_audiences(std::slice::from_ref(&request.audience))?;
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        if request.svid.len() > MAX_JWT_BYTES {
            return Err(Status::invalid_argument(format!(
                "svid: {} bytes; at most {MAX_JWT_BYTES}",
                request.svid.len()
            )));
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
        let render = move |snapshot: &Snapshot, selectors: &[Selector], now: SystemTime| {
            wit_response(snapshot, selectors, now, &filter)
        };
        let fingerprint = move |snapshot: &Snapshot, selectors: &[Selector], now: SystemTime| {
            wit_fingerprint(snapshot, selectors, now, &fingerprint_filter)
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
        let render = |snapshot: &Snapshot, selectors: &[Selector], _: SystemTime| {
            bundle_map(snapshot, selectors, |b| {
                String::from_utf8(b.wit_only_jwks_json()).expect("JSON is UTF-8")
            })
            .map(|bundles| {
                View::Ready(pb::WitBundlesResponse {
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

/// The caller's WIT-SVIDs (those `filter` keeps) valid at `now`, once all
/// are minted.
fn wit_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
    filter: &impl Fn(&Identity) -> bool,
) -> Result<View<pb::WitsvidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).filter(|i| filter(i)).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let ready = match sort_by_validity(&entitled, |i| i.wit.as_ref().map(|w| w.valid_at(now))) {
        View::Ready(ready) => ready,
        View::Pending => return Ok(View::Pending),
        View::Expired => return Ok(View::Expired),
    };
    let svids: Vec<pb::Witsvid> = ready
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
    Ok(View::Ready(pb::WitsvidResponse { svids }))
}

/// What a caller's WIT view depends on at `now`.
fn wit_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
    filter: &impl Fn(&Identity) -> bool,
) -> Fingerprint {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut next_expiry = None;
    for identity in snapshot.entitled(selectors).filter(|i| filter(i)) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        let wit = identity.wit.as_ref().map(|w| (w.serial, w.expires_at()));
        credential_into(&mut hasher, &mut next_expiry, wit, now);
    }
    Fingerprint {
        next_expiry,
        ..Fingerprint::of(hasher)
    }
}

/// JWT-SVIDs for each of `identities`, fetched side by side: those that can
/// be had (cached and unexpired, or freshly signed) are returned, in order;
/// the call fails only if none can.
async fn jwt_response<S: IdentitySource>(
    source: &Arc<S>,
    identities: Vec<Identity>,
    audience: Vec<String>,
    now: SystemTime,
) -> Result<pb::JwtsvidResponse, Status> {
    let audience = Arc::new(audience);
    let mut fetches = tokio::task::JoinSet::new();
    for (index, identity) in identities.iter().cloned().enumerate() {
        let (source, audience) = (source.clone(), audience.clone());
        fetches.spawn(async move {
            let fetched = source.fetch_jwt_svid(&identity, &audience, now).await;
            (index, fetched.and_then(|token| unexpired_jwt(token, now)))
        });
    }
    let mut fetched: Vec<Option<Result<String, Status>>> = vec![None; identities.len()];
    while let Some(joined) = fetches.join_next().await {
        let (index, result) = joined.map_err(|_| Status::internal("JWT-SVID fetch panicked"))?;
        fetched[index] = Some(result);
    }
    let mut svids = Vec::with_capacity(identities.len());
    let mut refusals = Vec::new();
    for (identity, result) in identities.into_iter().zip(fetched) {
        match result.expect("every fetch was joined") {
            Ok(svid) => svids.push(pb::Jwtsvid {
                spiffe_id: identity.spiffe_id,
                svid,
                hint: identity.hint,
            }),
            Err(status) => {
                tracing::debug!(spiffe_id = %identity.spiffe_id, error = %status.message(), "JWT-SVID unavailable");
                refusals.push(status);
            }
        }
    }
    if svids.is_empty() {
        return Err(no_jwt_svid(refusals, source.issuer_outage(), now));
    }
    Ok(pb::JwtsvidResponse { svids })
}

/// `token` if its `exp` is after `now` (RFC 7519 section 4.1.4).
fn unexpired_jwt(token: String, now: SystemTime) -> Result<String, Status> {
    let exp = crate::jws::parse(&token)
        .ok()
        .and_then(|jws| jws.numeric_date("exp").ok().flatten())
        .ok_or_else(|| Status::internal("the JWT-SVID has no valid exp claim"))?;
    if now < crate::source::unix_time(i64::try_from(exp).unwrap_or(i64::MAX)) {
        Ok(token)
    } else {
        Err(Status::unavailable(
            "the JWT-SVID expired before it could be served",
        ))
    }
}

/// Why no JWT-SVID could be had. Refusals that are the caller's to fix
/// (audience, entitlement) are passed on; otherwise the issuer is at fault,
/// and the answer says for how long it has been.
fn no_jwt_svid(refusals: Vec<Status>, outage: Option<IssuerOutage>, now: SystemTime) -> Status {
    let unavailable = refusals
        .iter()
        .position(|s| s.code() == tonic::Code::Unavailable);
    match (unavailable, outage) {
        (None, _) => refusals
            .into_iter()
            .next()
            .unwrap_or_else(|| Status::internal("no JWT-SVID and no reason")),
        (Some(_), Some(outage)) => Status::unavailable(format!(
            "no JWT-SVID can be served for this workload; the issuer has been unreachable for {}: {}",
            format_lasted(outage.lasted(now)),
            outage.last_error
        )),
        (Some(index), None) => refusals.into_iter().nth(index).expect("found above"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{unix_time, WitMaterial, X509Material};
    use crate::Bundle;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    use std::time::UNIX_EPOCH;
    use tokio::sync::watch;

    const T: i64 = 1_700_000_000;

    fn at(secs: i64) -> SystemTime {
        unix_time(T + secs)
    }

    fn caller() -> Vec<Selector> {
        vec![Selector::new("unix", "uid:1000")]
    }

    /// An identity for the caller; `x509` and `wit` are expiries, relative to T.
    fn identity(name: &str, x509: Option<i64>, wit: Option<i64>) -> Identity {
        Identity {
            entry_id: name.into(),
            spiffe_id: format!("spiffe://example.org/{name}"),
            hint: String::new(),
            selectors: caller(),
            federates_with: Vec::new(),
            x509: x509.map(|exp| {
                Arc::new(X509Material::new(
                    name.as_bytes().to_vec(),
                    Default::default(),
                    T + exp,
                ))
            }),
            wit: wit.map(|exp| {
                Arc::new(WitMaterial::new(
                    format!("wit-{name}"),
                    Default::default(),
                    T + exp,
                ))
            }),
        }
    }

    fn snapshot(identities: Vec<Identity>) -> Snapshot {
        Snapshot {
            identities,
            ..Snapshot::empty(Bundle::new(
                crate::id::TrustDomain::new("example.org").unwrap(),
            ))
        }
    }

    fn x509_ids(view: View<pb::X509svidResponse>) -> Vec<String> {
        match view {
            View::Ready(r) => r.svids.into_iter().map(|s| s.spiffe_id).collect(),
            other => panic!("not ready: {other:?}"),
        }
    }

    fn outage() -> IssuerOutage {
        IssuerOutage {
            since: at(0),
            last_error: "Unavailable: tcp connect error".into(),
        }
    }

    #[test]
    fn expired_x509_svids_are_left_out_at_serve_time() {
        let snap = snapshot(vec![
            identity("a", Some(10), None),
            identity("b", Some(100), None),
        ]);
        let ids = |now| x509_ids(x509_response(&snap, &caller(), now).unwrap());
        let both = vec!["spiffe://example.org/a", "spiffe://example.org/b"];
        assert_eq!(ids(at(0)), both);
        assert_eq!(ids(at(10) - Duration::from_millis(1)), both);
        assert_eq!(
            ids(at(10)),
            vec!["spiffe://example.org/b"],
            "at notAfter: gone"
        );
        assert_eq!(ids(at(99)), vec!["spiffe://example.org/b"]);
        for now in [at(100), at(101), at(86_400)] {
            assert!(matches!(
                x509_response(&snap, &caller(), now),
                Ok(View::Expired)
            ));
        }
    }

    #[test]
    fn pending_and_expired_identities_are_told_apart() {
        // (X509-SVID expiry or none, name) per identity; the view expected.
        type Held<'a> = &'a [(Option<i64>, &'a str)];
        let cases: &[(Held, &str)] = &[
            (&[(None, "a")], "pending"),
            (&[(None, "a"), (Some(100), "b")], "pending"),
            (&[(None, "a"), (Some(5), "b")], "expired"),
            (&[(Some(5), "a"), (Some(100), "b")], "ready"),
            (&[(Some(5), "a"), (Some(6), "b")], "expired"),
        ];
        for (held, expected) in cases {
            let snap = snapshot(held.iter().map(|(x, n)| identity(n, *x, None)).collect());
            let view = match x509_response(&snap, &caller(), at(50)).unwrap() {
                View::Ready(_) => "ready",
                View::Pending => "pending",
                View::Expired => "expired",
            };
            assert_eq!(view, *expected, "{held:?}");
        }
        let nobody = x509_response(&snapshot(vec![]), &caller(), at(0)).unwrap_err();
        assert_eq!(nobody.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn the_fingerprint_changes_when_an_svid_expires() {
        let snap = snapshot(vec![
            identity("a", Some(10), None),
            identity("b", Some(100), None),
        ]);
        let early = x509_fingerprint(&snap, &caller(), at(0));
        assert_eq!(early.next_expiry, Some(at(10)));
        assert_eq!(
            early,
            x509_fingerprint(&snap, &caller(), at(9)),
            "nothing changed"
        );
        let later = x509_fingerprint(&snap, &caller(), at(10));
        assert_ne!(later.hash, early.hash);
        assert_eq!(later.next_expiry, Some(at(100)));
        let gone = x509_fingerprint(&snap, &caller(), at(100));
        assert_ne!(gone.hash, later.hash);
        assert_eq!(gone.next_expiry, None);
    }

    #[test]
    fn expired_wits_are_left_out_at_serve_time() {
        let snap = snapshot(vec![
            identity("a", None, Some(10)),
            identity("b", None, Some(100)),
        ]);
        let all = |_: &Identity| true;
        let ids = |now| match wit_response(&snap, &caller(), now, &all).unwrap() {
            View::Ready(r) => r.svids.into_iter().map(|s| s.wit_svid).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ids(at(9)), vec!["wit-a", "wit-b"]);
        assert_eq!(ids(at(10)), vec!["wit-b"]);
        assert!(matches!(
            wit_response(&snap, &caller(), at(100), &all),
            Ok(View::Expired)
        ));
        let print = wit_fingerprint(&snap, &caller(), at(10), &all);
        assert_eq!(print.next_expiry, Some(at(100)));
        assert_ne!(
            print.hash,
            wit_fingerprint(&snap, &caller(), at(9), &all).hash
        );
    }

    #[test]
    fn everything_expired_names_the_outage() {
        let status = all_expired(Some(outage()), at(72));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.message(),
            "every SVID for this workload has expired; the issuer has been unreachable for 1m 12s: \
             Unavailable: tcp connect error"
        );
        let status = all_expired(None, at(72));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("being minted"), "{status:?}");
    }

    #[test]
    fn outage_durations_read_like_a_clock() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m 0s"),
            (72, "1m 12s"),
            (3599, "59m 59s"),
            (3600, "1h 0m 0s"),
            (90_061, "25h 1m 1s"),
        ] {
            assert_eq!(format_lasted(Duration::from_secs(secs)), text);
        }
    }

    /// A compact JWS whose claims are only `exp` (relative to T).
    fn token(exp: i64) -> String {
        let part = |json: &str| B64URL.encode(json);
        format!(
            "{}.{}.{}",
            part(r#"{"alg":"ES256"}"#),
            part(&format!(r#"{{"exp":{}}}"#, T + exp)),
            part("sig")
        )
    }

    /// An identity source with fixed answers.
    struct Fake {
        snapshots: watch::Sender<Arc<Snapshot>>,
        /// JWT-SVID answers by SPIFFE ID.
        jwt: std::collections::HashMap<String, Result<String, Status>>,
        outage: Option<IssuerOutage>,
    }

    impl Fake {
        fn new(snapshot: Snapshot) -> Self {
            Fake {
                snapshots: watch::channel(Arc::new(snapshot)).0,
                jwt: Default::default(),
                outage: None,
            }
        }
    }

    #[tonic::async_trait]
    impl IdentitySource for Fake {
        fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
            self.snapshots.subscribe()
        }

        async fn attest(&self, _: Caller) -> Result<Selectors, Status> {
            Ok(caller().into())
        }

        async fn fetch_jwt_svid(
            &self,
            identity: &Identity,
            _: &[String],
            _: SystemTime,
        ) -> Result<String, Status> {
            self.jwt[&identity.spiffe_id].clone()
        }

        fn issuer_outage(&self) -> Option<IssuerOutage> {
            self.outage.clone()
        }
    }

    fn jwt_fake(answers: Vec<(&str, Result<String, Status>)>) -> (Arc<Fake>, Vec<Identity>) {
        let identities: Vec<_> = answers
            .iter()
            .map(|(n, _)| identity(n, None, None))
            .collect();
        let mut fake = Fake::new(snapshot(identities.clone()));
        fake.jwt = answers
            .into_iter()
            .map(|(n, answer)| (format!("spiffe://example.org/{n}"), answer))
            .collect();
        fake.outage = Some(outage());
        (Arc::new(fake), identities)
    }

    #[tokio::test]
    async fn jwt_svids_are_returned_for_the_identities_that_have_one() {
        let (fake, identities) = jwt_fake(vec![
            ("expired", Ok(token(10))),
            (
                "down",
                Err(Status::unavailable("JWT-SVID cannot be signed right now")),
            ),
            ("valid", Ok(token(300))),
            ("denied", Err(Status::permission_denied("not authorized"))),
            ("valid-too", Ok(token(11))),
        ]);
        let response = jwt_response(&fake, identities, vec!["db".into()], at(10))
            .await
            .unwrap();
        let ids: Vec<_> = response
            .svids
            .iter()
            .map(|s| s.spiffe_id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/valid",
                "spiffe://example.org/valid-too"
            ]
        );
        assert_eq!(response.svids[0].svid, token(300));
    }

    #[tokio::test]
    async fn jwt_svids_fail_only_when_none_can_be_had() {
        let (fake, identities) = jwt_fake(vec![
            ("expired", Ok(token(10))),
            (
                "down",
                Err(Status::unavailable("JWT-SVID cannot be signed right now")),
            ),
        ]);
        let status = jwt_response(&fake, identities, vec!["db".into()], at(72))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status
                .message()
                .contains("unreachable for 1m 12s: Unavailable: tcp connect error"),
            "{status:?}"
        );
        // A refusal on the merits is passed on as it is.
        let (fake, identities) = jwt_fake(vec![(
            "denied",
            Err(Status::permission_denied("not authorized")),
        )]);
        let status = jwt_response(&fake, identities, vec!["db".into()], at(0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_jwt_svid_is_served_strictly_before_its_exp() {
        assert!(unexpired_jwt(token(10), at(9)).is_ok());
        let at_exp = unexpired_jwt(token(10), at(10)).unwrap_err();
        assert_eq!(at_exp.code(), tonic::Code::Unavailable);
        assert!(unexpired_jwt(token(10), UNIX_EPOCH).is_ok());
        assert_eq!(
            unexpired_jwt("not.a.jwt".into(), at(0)).unwrap_err().code(),
            tonic::Code::Internal
        );
    }

    /// Real time: an open stream drops an SVID when it expires, without any
    /// new snapshot, then ends with UNAVAILABLE once none is left.
    #[tokio::test]
    async fn an_open_stream_drops_svids_as_they_expire() {
        use tokio_stream::StreamExt;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut short = identity("short", None, None);
        short.x509 = Some(Arc::new(X509Material::new(
            vec![1],
            Default::default(),
            now + 2,
        )));
        let mut long = identity("long", None, None);
        long.x509 = Some(Arc::new(X509Material::new(
            vec![2],
            Default::default(),
            now + 4,
        )));
        let mut fake = Fake::new(snapshot(vec![short, long]));
        fake.outage = Some(outage());
        let api = WorkloadApi::new(Arc::new(fake));
        let mut stream = api
            .stream(caller().into(), x509_response, x509_fingerprint)
            .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.svids.len(), 2);
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an update when the first SVID expires")
            .unwrap()
            .unwrap();
        let ids: Vec<_> = next.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/long"]);
        assert!(SystemTime::now() >= unix_time(now + 2));
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends when the last SVID expires")
            .unwrap()
            .unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(
            end.message()
                .contains("the issuer has been unreachable for"),
            "{end:?}"
        );
        assert!(stream.next().await.is_none());
        // A new call is refused at once.
        let refused = api
            .stream(caller().into(), x509_response, x509_fingerprint)
            .err()
            .expect("refused");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
    }
}
