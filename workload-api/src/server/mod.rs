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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::ConnectionInfo;
use proto::workload as pb;
use proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tonic::{Request, Response, Status};

use crate::id::trust_domain_id;
use crate::jwtsvid;
use crate::selector::{Selector, Selectors};
use crate::source::{
    Caller, CredentialKind, Delivered, Delivery, Identity, IdentitySource, IssuerOutage, JwtSvid,
    Snapshot,
};

/// The metadata key every Workload API request carries.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// How long a call waits for SVIDs that are entitled but not yet minted.
const MINT_WAIT: Duration = Duration::from_secs(10);
/// The longest a stream sleeps before re-reading the wall clock while one of
/// its SVIDs is due to expire. Sleeps run on the monotonic clock, which
/// stands still while a host is suspended; the wall clock jumps on resume.
const EXPIRY_POLL: Duration = Duration::from_secs(2);

mod jwt;
mod outage;
#[cfg(test)]
mod tests;
mod view;
mod watch;

use jwt::{jwt_response, to_struct};
use outage::{all_expired, awaiting_entries};
use view::*;
use watch::{Fingerprint, View, Watch};

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
    async fn admit<T>(&self, request: &Request<T>) -> Result<Admitted, Status> {
        admit_caller(self.source.as_ref(), request).await
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
    /// `deliver` names the credentials a Ready view hands over, which the
    /// source is told of (for the event log).
    fn stream<T, R, P, D>(
        &self,
        caller: Admitted,
        render: R,
        fingerprint: P,
        deliver: D,
    ) -> Result<Stream<T>, Status>
    where
        T: Send + 'static,
        R: Fn(&Snapshot, &[Selector], SystemTime) -> Result<View<T>, Status> + Send + 'static,
        P: Fn(&Snapshot, &[Selector], SystemTime) -> Fingerprint + Send + 'static,
        D: Fn(&Snapshot, &[Selector], SystemTime) -> Vec<Delivered> + Send + 'static,
    {
        let mut snapshots = self.source.snapshots();
        let snapshot = snapshots.borrow_and_update().clone();
        let now = SystemTime::now();
        let selectors = caller.selectors.clone();
        let first = match render(&snapshot, &selectors, now)? {
            View::Ready(message) => {
                caller.report(self.source.as_ref(), deliver(&snapshot, &selectors, now));
                Some(message)
            }
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
            deliver,
            caller,
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
/// A caller admitted to the socket: who it is and what it may see.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub selectors: Selectors,
    pub pid: Option<i32>,
    pub uid: u32,
}

impl Admitted {
    /// Tells `source` what this caller was just sent.
    fn report<S: IdentitySource + ?Sized>(&self, source: &S, credentials: Vec<Delivered>) {
        if !credentials.is_empty() {
            source.delivered(Delivery {
                pid: self.pid,
                uid: self.uid,
                selectors: &self.selectors,
                credentials,
            });
        }
    }
}

/// Admits a caller of a service on the Workload API socket: checks the
/// security header, attests the caller through `source`, and refuses while
/// the node serves nothing (refused by its issuer, or awaiting its entries).
/// Returns the caller's selectors. Sigil's own services on the socket admit
/// their callers the same way.
pub async fn admit<S: IdentitySource + ?Sized, T>(
    source: &S,
    request: &Request<T>,
) -> Result<Selectors, Status> {
    Ok(admit_caller(source, request).await?.selectors)
}

/// [`admit`], keeping who the caller is beside its selectors.
pub async fn admit_caller<S: IdentitySource + ?Sized, T>(
    source: &S,
    request: &Request<T>,
) -> Result<Admitted, Status> {
    check_header(request)?;
    let info = request
        .extensions()
        .get::<ConnectionInfo>()
        .ok_or_else(|| Status::internal("connection information is unavailable"))?;
    let cred = info
        .peer
        .ok_or_else(|| Status::internal("peer credentials are unavailable on this connection"))?;
    let selectors = source
        .attest(Caller {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            cache: info.cache.clone(),
        })
        .await?;
    let snapshot = source.snapshots().borrow().clone();
    if let Some(reason) = &snapshot.refused {
        return Err(Status::permission_denied(reason.to_string()));
    }
    if snapshot.awaiting_entries {
        return Err(awaiting_entries(source.issuer_outage(), SystemTime::now()));
    }
    Ok(Admitted {
        selectors,
        pid: cred.pid(),
        uid: cred.uid(),
    })
}

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

#[tonic::async_trait]
impl<S: IdentitySource> SpiffeWorkloadApi for WorkloadApi<S> {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.admit(&request).await?;
        Ok(Response::new(self.stream(
            caller,
            x509_response,
            x509_fingerprint,
            x509_delivered,
        )?))
    }

    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector], _: SystemTime| {
            bundle_map(snapshot, selectors, |b| b.x509_der_concat()).map(|bundles| {
                View::Ready(pb::X509BundlesResponse {
                    crl: snapshot.revocations.crls.clone(),
                    bundles,
                })
            })
        };
        Ok(Response::new(self.stream(
            caller,
            render,
            x509_bundles_fingerprint,
            no_credentials,
        )?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let caller = self.admit(&request).await?;
        let selectors = caller.selectors.clone();
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
        let (response, delivered) = jwt_response(
            &self.source,
            identities,
            request.audience,
            SystemTime::now(),
        )
        .await?;
        caller.report(self.source.as_ref(), delivered);
        Ok(Response::new(response))
    }

    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.admit(&request).await?;
        let render = |snapshot: &Snapshot, selectors: &[Selector], _: SystemTime| {
            bundle_map(snapshot, selectors, |b| b.jwt_only_jwks_json())
                .map(|bundles| View::Ready(pb::JwtBundlesResponse { bundles }))
        };
        Ok(Response::new(self.stream(
            caller,
            render,
            bundles_fingerprint,
            no_credentials,
        )?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        let body = request.get_ref();
        check_audiences(std::slice::from_ref(&body.audience))?;
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        if body.svid.len() > MAX_JWT_BYTES {
            return Err(Status::invalid_argument(format!(
                "svid: {} bytes; at most {MAX_JWT_BYTES}",
                body.svid.len()
            )));
        }
        // A foreign trust domain's token is validated only for a caller one
        // of whose identities federates with that domain, so the caller is
        // attested for those; local tokens are validated for anyone.
        let local = self
            .source
            .snapshots()
            .borrow()
            .bundle
            .trust_domain()
            .clone();
        let foreign = token_trust_domain(&body.svid).filter(|td| *td != local);
        if let Some(td) = &foreign {
            let caller = self.admit(&request).await?;
            let snapshot = self.source.snapshots().borrow().clone();
            if !federates_with(&snapshot, &caller.selectors, td) {
                return Err(Status::permission_denied(format!(
                    "the JWT-SVID is from trust domain {td}, which none of the caller's \
                     identities federates with"
                )));
            }
        }
        let request = request.into_inner();
        let snapshot = self.source.snapshots().borrow().clone();
        let now = SystemTime::now();
        let validated = jwtsvid::validate(
            &request.svid,
            &request.audience,
            |td| {
                if td == snapshot.bundle.trust_domain() {
                    Some(snapshot.bundle.as_ref())
                } else if foreign.as_ref() == Some(td) {
                    snapshot.federated.get(td).map(|b| b.as_ref())
                } else {
                    None
                }
            },
            now,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A token bound to an owner is only as good as its owner.
        if let Some(owner) = &validated.owner {
            let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if let Some(reason) = snapshot.revocations.refusal(owner, now_secs) {
                return Err(Status::invalid_argument(format!(
                    "the JWT-SVID is refused: {reason}"
                )));
            }
        }
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
        let caller = self.admit(&request).await?;
        let wanted = request.into_inner().spiffe_id;
        let filter = move |identity: &Identity| wanted.is_empty() || identity.spiffe_id == wanted;
        let fingerprint_filter = filter.clone();
        let deliver_filter = filter.clone();
        let render = move |snapshot: &Snapshot, selectors: &[Selector], now: SystemTime| {
            wit_response(snapshot, selectors, now, &filter)
        };
        let fingerprint = move |snapshot: &Snapshot, selectors: &[Selector], now: SystemTime| {
            wit_fingerprint(snapshot, selectors, now, &fingerprint_filter)
        };
        let deliver = move |snapshot: &Snapshot, selectors: &[Selector], now: SystemTime| {
            wit_delivered(snapshot, selectors, now, &deliver_filter)
        };
        Ok(Response::new(self.stream(
            caller,
            render,
            fingerprint,
            deliver,
        )?))
    }

    type FetchWITBundlesStream = Stream<pb::WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        request: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let caller = self.admit(&request).await?;
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
            caller,
            render,
            bundles_fingerprint,
            no_credentials,
        )?))
    }
}
