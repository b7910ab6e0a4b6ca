//! A tower [`Layer`] that lets through only requests that prove a workload
//! identity: a WIT with a WPT, or a WIT with an HTTP Message Signature.
//! The WPT comes in `Authorization: WPT <jwt>` (draft-ietf-wimse-wpt-02) or
//! in `Workload-Proof-Token` (wpt-01); [`WimseLayer::accepting`] picks which,
//! both by default, and a request with both is refused.
//!
//! Refusals carry an RFC 9457 problem naming the failed check. Their status
//! follows the form: wpt-02 section 2.1, "a recipient that rejects the
//! request for a reason related to the WPT SHOULD use the HTTP status code
//! 401 (Unauthorized)" with "a challenge with the WPT scheme" and "no
//! authentication parameters", i.e. `WWW-Authenticate: WPT`; the header form
//! and HTTP signatures keep 400. Tokens never reach logs, errors or problem
//! bodies (wpt-02 section 3.1.5: "MUST NOT log raw WPTs by default").
//! Accepted requests carry the [`Verified`] sender in their extensions, and
//! its [`OwnerBinding`](crate::owner::OwnerBinding) when its WIT has one
//! (format in [`crate::owner`]).
//! [`WimseLayer::accepting_owners`] restricts a route to some owners: other
//! requests are refused 403, check `owner`.
//! [`WimseLayer::following_revocations`] points the layer at the issuer's
//! revocation list (`GET /v1/revocations`), which it then keeps current by
//! itself: a WIT whose owner is revoked is refused 403, check
//! `wit.owner_revoked`, and, while no current list is held, every
//! owner-bound WIT 403, check `revocations` (see [`super::revocations`]).
//! Both are decided once the proof holds, like the route's owner list, so
//! they get its status, 403, whatever the WPT form: the sender proved who it
//! is, and a new proof with the same WIT would not change the answer
//! (401 asks for other credentials, 400 says the request is malformed).
//! Audiences come from the verifier's configuration and the request path,
//! never from `Host` or `X-Forwarded-Host`. When a signed request asks for
//! a signed response, the layer signs it with the service's own WIT.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::http::{
    header_text, presented_form, request_tokens_for, single, AcceptedForms, WptForm, WPT_SCHEME,
};
use super::httpsig::{self, RequestView};
use super::revocations::{self, FollowError};
use super::usage::{self, UsageReporter};
use super::{Presented, Proof, SignedRequest, Verified, Verifier, WimseError, WIT_HEADER};
use crate::keypair::KeyPair;

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The largest request or response body the layer reads to check or make a
/// Content-Digest.
pub const MAX_SIGNED_BODY: usize = 4 << 20;
/// How long a response signature is valid.
const RESPONSE_SIGNATURE_SECS: u64 = 60;
/// The problem `check` of a request refused for its owner.
const OWNER_CHECK: &str = "owner";

/// The owner ids a route accepts; `None` accepts any WIT, owned or not.
type AcceptedOwners = Option<Arc<[String]>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the layer could not read a body or sign a response (refused proofs
/// are [`WimseError`]s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    #[error("the message body could not be read (limit {limit} bytes): {source}")]
    Body { limit: usize, source: BoxError },
    /// The value (the service's WIT, or a digest) is not left in the message.
    #[error("the {header} response header value is invalid: {source}")]
    HeaderValue {
        header: &'static str,
        source: http::header::InvalidHeaderValue,
    },
    #[error("the response could not be signed: {0}")]
    Signature(#[source] httpsig::HttpSigError),
}

/// The service's own WIT and key, for signing responses. The service keeps
/// it current (from its FetchWITSVID stream).
#[derive(Debug, Default)]
pub struct ServiceIdentity {
    current: RwLock<Option<(String, Arc<KeyPair>)>>,
}

impl ServiceIdentity {
    pub fn set(&self, wit: String, key: KeyPair) {
        *self.current.write().expect("service identity") = Some((wit, Arc::new(key)));
    }

    fn get(&self) -> Option<(String, Arc<KeyPair>)> {
        self.current.read().expect("service identity").clone()
    }
}

/// Wraps services with WIMSE proof verification.
#[derive(Debug, Clone)]
pub struct WimseLayer {
    verifier: Arc<Verifier>,
    identity: Option<Arc<ServiceIdentity>>,
    forms: AcceptedForms,
    owners: AcceptedOwners,
    usage: Option<Arc<UsageReporter>>,
}

impl WimseLayer {
    /// Accepts both WPT forms; see [`WimseLayer::accepting`].
    pub fn new(verifier: Arc<Verifier>) -> Self {
        WimseLayer {
            verifier,
            identity: None,
            forms: AcceptedForms::Both,
            owners: None,
            usage: None,
        }
    }

    /// Reports every verification, accepted or refused, to `reporter` (see
    /// [`super::usage`]), for the agent to log.
    pub fn reporting_usage(mut self, reporter: Arc<UsageReporter>) -> Self {
        self.usage = Some(reporter);
        self
    }

    /// Accepts the WPT only in `forms`; others are refused (`wpt.form`).
    pub fn accepting(mut self, forms: AcceptedForms) -> Self {
        self.forms = forms;
        self
    }

    /// Lets through only requests whose WIT is bound to one of `owners`
    /// (owner ids, compared exactly); a WIT without an owner, or with
    /// another, is refused 403 (`owner`). Each layer, so each route, has its
    /// own list; without one, the owner is not looked at.
    pub fn accepting_owners(mut self, owners: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.owners = Some(owners.into_iter().map(Into::into).collect());
        self
    }

    /// Follows the issuer's revocation list at `url` (its
    /// `GET /v1/revocations`, plain `http:`; the list is signed): from now
    /// on the verifier refuses owner-bound WITs whose owner is revoked, or
    /// while it holds no current list, and a task spawned on the current
    /// tokio runtime keeps the list current (see [`revocations::follow`]).
    /// The verifier is shared: every layer over it is affected. Errors when
    /// `url` is not a plain-HTTP URL without a query, or when called outside
    /// a tokio runtime; nothing is changed then.
    pub fn following_revocations(self, url: &str) -> Result<Self, FollowError> {
        revocations::follow(url, self.verifier.clone())?;
        Ok(self)
    }

    /// Signs responses with `identity` when a signed request asks for it.
    /// Without one, such requests are answered 501.
    pub fn signing_responses_as(mut self, identity: Arc<ServiceIdentity>) -> Self {
        self.identity = Some(identity);
        self
    }
}

impl<S> Layer<S> for WimseLayer {
    type Service = WimseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseService {
            inner,
            verifier: self.verifier.clone(),
            identity: self.identity.clone(),
            forms: self.forms,
            owners: self.owners.clone(),
            usage: self.usage.clone(),
        }
    }
}

/// The service [`WimseLayer`] makes.
#[derive(Debug, Clone)]
pub struct WimseService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    identity: Option<Arc<ServiceIdentity>>,
    forms: AcceptedForms,
    owners: AcceptedOwners,
    usage: Option<Arc<UsageReporter>>,
}

impl<S, B, ResBody> Service<Request<B>> for WimseService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: http_body::Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: http_body::Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is the one made ready; the one kept waits for the next
        // poll_ready (tower's usual hand-over).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let identity = self.identity.clone();
        let forms = self.forms;
        let owners = self.owners.clone();
        let signed = request.headers().contains_key("signature-input")
            && presented_form(request.headers()).is_none();
        let usage = self.usage.clone().map(|reporter| Usage {
            reporter,
            route: usage::route(request.method().as_str(), request.uri().path()),
            wit: single(request.headers(), WIT_HEADER)
                .ok()
                .flatten()
                .map(str::to_owned),
            proof: if signed {
                usage::HTTP_SIGNATURE
            } else {
                usage::WPT
            },
        });
        if signed {
            Box::pin(handle_signed(
                inner, verifier, identity, owners, usage, request,
            ))
        } else {
            Box::pin(handle_wpt(inner, verifier, forms, owners, usage, request))
        }
    }
}

/// Where a service reports its verifications, and what it knows of the
/// request before verifying it.
struct Usage {
    reporter: Arc<UsageReporter>,
    route: String,
    wit: Option<String>,
    proof: &'static str,
}

impl Usage {
    fn accepted(this: &Option<Usage>, verified: &Verified) {
        if let Some(usage) = this {
            usage.reporter.accepted(verified, &usage.route);
        }
    }

    fn refused(this: &Option<Usage>, check: &str) {
        if let Some(usage) = this {
            usage
                .reporter
                .refused(usage.wit.as_deref(), usage.proof, check, &usage.route);
        }
    }
}

async fn handle_wpt<S, B, ResBody>(
    mut inner: S,
    verifier: Arc<Verifier>,
    forms: AcceptedForms,
    owners: AcceptedOwners,
    usage: Option<Usage>,
    mut request: Request<B>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    match verify_request_with(&verifier, &request, forms) {
        Ok(verified) => {
            if let Some(detail) = owner_refusal(owners.as_deref(), &verified) {
                Usage::refused(&usage, OWNER_CHECK);
                return Ok(refused_owner(&detail));
            }
            Usage::accepted(&usage, &verified);
            admit(&mut request, verified);
            inner.call(request).await
        }
        Err(error) => {
            Usage::refused(&usage, error.check());
            if error.is_owner_refusal() {
                return Ok(refused_owner_revoked(&error));
            }
            let form = presented_form(request.headers());
            Ok(refused_wpt(&error, form, forms))
        }
    }
}

async fn handle_signed<S, B, ResBody>(
    mut inner: S,
    verifier: Arc<Verifier>,
    identity: Option<Arc<ServiceIdentity>>,
    owners: AcceptedOwners,
    usage: Option<Usage>,
    request: Request<B>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: http_body::Body + From<Bytes>,
    B::Error: Into<BoxError>,
    ResBody: http_body::Body + From<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let content = match read_body(body).await {
        Ok(content) => content,
        Err(error) => {
            Usage::refused(&usage, "body");
            return Ok(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                &error.to_string(),
            ));
        }
    };
    let wit = match single(&parts.headers, WIT_HEADER) {
        Ok(Some(wit)) => wit.to_owned(),
        Ok(None) => {
            let error = WimseError::MissingHeader {
                header: "Workload-Identity-Token",
            };
            Usage::refused(&usage, error.check());
            return Ok(refused(&error));
        }
        Err(error) => {
            Usage::refused(&usage, error.check());
            return Ok(refused(&error));
        }
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let view = RequestView {
        method: parts.method.as_str(),
        target: &target,
        headers: &parts.headers,
    };
    let signed = SignedRequest {
        wit: &wit,
        request: view,
        content: &content,
    };
    let verified = match verifier.verify_signed(&signed, SystemTime::now()) {
        Ok(verified) => verified,
        Err(error) => {
            Usage::refused(&usage, error.check());
            if error.is_owner_refusal() {
                return Ok(refused_owner_revoked(&error));
            }
            return Ok(refused(&error));
        }
    };
    if let Some(detail) = owner_refusal(owners.as_deref(), &verified) {
        Usage::refused(&usage, OWNER_CHECK);
        return Ok(refused_owner(&detail));
    }
    Usage::accepted(&usage, &verified);
    let respond_signed = match &verified.proof {
        Proof::HttpSignature(checked) if checked.sign_response => Some(checked.nonce.clone()),
        _ => None,
    };
    let signer =
        match (&respond_signed, identity.as_ref().and_then(|i| i.get())) {
            (None, _) => None,
            (Some(nonce), Some((wit, key))) => Some((nonce.clone(), wit, key)),
            (Some(_), None) => return Ok(problem(
                StatusCode::NOT_IMPLEMENTED,
                "httpsig.response",
                "the request asks for a signed response, but this service has no WIT to sign with",
            )),
        };
    let method = parts.method.to_string();
    let request_headers = parts.headers.clone();
    let mut request = Request::from_parts(parts, B::from(content));
    admit(&mut request, verified);
    let response = inner.call(request).await?;
    let Some((nonce, wit, key)) = signer else {
        return Ok(response);
    };
    let view = RequestView {
        method: &method,
        target: &target,
        headers: &request_headers,
    };
    Ok(sign_response(response, view, &nonce, &wit, &key)
        .await
        .unwrap_or_else(|error| {
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "httpsig.response",
                &error.to_string(),
            )
        }))
}

/// Hands the sender to the inner service: [`Verified`], and the
/// [`OwnerBinding`](crate::owner::OwnerBinding) on its own, so handlers need
/// not know where it came from.
fn admit<B>(request: &mut Request<B>, verified: Verified) {
    if let Some(owner) = verified.owner().cloned() {
        request.extensions_mut().insert(owner);
    }
    request.extensions_mut().insert(verified);
}

/// Why a route restricted to `owners` refuses `verified`'s sender, if it
/// does.
fn owner_refusal(owners: Option<&[String]>, verified: &Verified) -> Option<String> {
    let owners = owners?;
    let Some(owner) = verified.owner() else {
        return Some(
            "the WIT carries no owner binding, and this route accepts only workloads bound to an accepted owner"
                .into(),
        );
    };
    if owners.contains(&owner.owner_id) {
        return None;
    }
    Some(format!(
        "the WIT's owner {:?} is not an owner this route accepts",
        owner.owner_id
    ))
}

/// 403: the proof held, but the route does not take this owner.
fn refused_owner<ResBody: From<Bytes>>(detail: &str) -> Response<ResBody> {
    tracing::info!(check = OWNER_CHECK, detail, "WIMSE request refused");
    problem(StatusCode::FORBIDDEN, OWNER_CHECK, detail)
}

/// 403: the proof held, but the WIT's owner is revoked, or there is no
/// current revocation list to tell (see the module documentation).
fn refused_owner_revoked<ResBody: From<Bytes>>(error: &WimseError) -> Response<ResBody> {
    tracing::info!(check = error.check(), %error, "WIMSE request refused");
    problem(StatusCode::FORBIDDEN, error.check(), &error.to_string())
}

/// The whole body, up to [`MAX_SIGNED_BODY`].
async fn read_body<B>(body: B) -> Result<Bytes, LayerError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    http_body_util::Limited::new(body, MAX_SIGNED_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|source| LayerError::Body {
            limit: MAX_SIGNED_BODY,
            source,
        })
}

/// Adds Content-Digest, the WIT and the signature to a response.
async fn sign_response<ResBody>(
    response: Response<ResBody>,
    request: RequestView<'_>,
    request_nonce: &str,
    wit: &str,
    key: &KeyPair,
) -> Result<Response<ResBody>, LayerError>
where
    ResBody: http_body::Body + From<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let content = read_body(body).await?;
    let value = |header: &'static str, text: &str| {
        HeaderValue::from_str(text).map_err(|source| LayerError::HeaderValue { header, source })
    };
    parts
        .headers
        .insert(HeaderName::from_static(WIT_HEADER), value(WIT_HEADER, wit)?);
    if !content.is_empty() {
        const CONTENT_DIGEST: &str = "content-digest";
        parts.headers.insert(
            HeaderName::from_static(CONTENT_DIGEST),
            value(CONTENT_DIGEST, &httpsig::content_digest(&content))?,
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    httpsig::sign_response(
        parts.status.as_u16(),
        &mut parts.headers,
        request,
        request_nonce,
        key,
        RESPONSE_SIGNATURE_SECS,
        now,
    )
    .map_err(LayerError::Signature)?;
    Ok(Response::from_parts(parts, ResBody::from(content)))
}

/// Verifies the WIT and WPT a request carries, in either form.
pub fn verify_request<B>(
    verifier: &Verifier,
    request: &Request<B>,
) -> Result<Verified, WimseError> {
    verify_request_with(verifier, request, AcceptedForms::Both)
}

/// Verifies the WIT and the WPT a request carries in one of `forms`.
pub fn verify_request_with<B>(
    verifier: &Verifier,
    request: &Request<B>,
    forms: AcceptedForms,
) -> Result<Verified, WimseError> {
    verify_request_at(verifier, request, forms, SystemTime::now())
}

/// [`verify_request_with`] as of `now`.
pub fn verify_request_at<B>(
    verifier: &Verifier,
    request: &Request<B>,
    forms: AcceptedForms,
    now: SystemTime,
) -> Result<Verified, WimseError> {
    let headers = request.headers();
    let tokens = request_tokens_for(headers, forms)?;
    let lookup = |name: &str| header_text(headers, name);
    let presented = Presented {
        wit: tokens.wit,
        wpt: tokens.wpt,
        path: Some(request.uri().path()),
        authorization: tokens.authorization,
        txn_token: tokens.txn_token,
        header: &lookup,
    };
    verifier.verify_as(&presented, tokens.form, now)
}

/// How a refused WPT request is answered: 401 with `WWW-Authenticate: WPT`
/// when the service accepts the Authorization form and the request used it,
/// used no form, or used a form the service does not take; 400 for a
/// refused header-form proof, and whenever the service does not take the
/// Authorization form (it then offers no `WPT` challenge).
pub fn refusal_status(presented: Option<WptForm>, forms: AcceptedForms) -> StatusCode {
    let challenge = forms.accepts(WptForm::Authorization)
        && !(presented == Some(WptForm::Header) && forms.accepts(WptForm::Header));
    if challenge {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn refused_wpt<ResBody: From<Bytes>>(
    error: &WimseError,
    presented: Option<WptForm>,
    forms: AcceptedForms,
) -> Response<ResBody> {
    let status = refusal_status(presented, forms);
    // The check and the error's text name rules and claims, never tokens.
    tracing::info!(
        check = error.check(),
        form = presented.map_or("none", WptForm::name),
        status = status.as_u16(),
        %error,
        "WIMSE proof refused"
    );
    let mut response = problem(status, error.check(), &error.to_string());
    if status == StatusCode::UNAUTHORIZED {
        // wpt-02 section 2.1: no authentication parameters are defined.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(WPT_SCHEME),
        );
    }
    response
}

fn refused<ResBody: From<Bytes>>(error: &WimseError) -> Response<ResBody> {
    tracing::info!(check = error.check(), %error, "WIMSE proof refused");
    problem(StatusCode::BAD_REQUEST, error.check(), &error.to_string())
}

/// An RFC 9457 problem; `check` names what failed. Refused header-form WPTs
/// and HTTP signatures get 400 (draft-ietf-wimse-wpt-01 section 2.1,
/// draft-ietf-wimse-http-signature); the Authorization form 401; an owner
/// the route does not accept, or a revoked one, 403.
pub fn problem<ResBody: From<Bytes>>(
    status: StatusCode,
    check: &str,
    detail: &str,
) -> Response<ResBody> {
    let body = serde_json::json!({
        "type": format!("urn:sigil:wimse:{check}"),
        "title": "WIMSE proof rejected",
        "status": status.as_u16(),
        "detail": detail,
        "check": check,
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, PROBLEM_JSON)
        .body(ResBody::from(Bytes::from(body.to_string())))
        .expect("a static response builds")
}
