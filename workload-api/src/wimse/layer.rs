//! A tower [`Layer`] that lets through only requests whose WIT and WPT
//! verify. Refusals are 400 with an RFC 9457 problem naming the failed
//! check; accepted requests carry the [`Verified`] sender in their
//! extensions. Audiences come from the verifier's configuration and the
//! request path, never from `Host` or `X-Forwarded-Host`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::{Either, Ready};
use http::{header, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::http::{header_text, request_tokens};
use super::{Presented, Verified, Verifier, WimseError};

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Wraps services with WIMSE proof verification.
#[derive(Debug, Clone)]
pub struct WimseLayer {
    verifier: Arc<Verifier>,
}

impl WimseLayer {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        WimseLayer { verifier }
    }
}

impl<S> Layer<S> for WimseLayer {
    type Service = WimseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`WimseLayer`] makes.
#[derive(Debug, Clone)]
pub struct WimseService<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S, B, ResBody> Service<Request<B>> for WimseService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match verify_request(&self.verifier, &request) {
            Ok(verified) => {
                request.extensions_mut().insert(verified);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                tracing::info!(check = error.check(), %error, "WIMSE proof refused");
                Either::Left(futures_util::future::ready(Ok(problem(&error))))
            }
        }
    }
}

/// Verifies the WIT and WPT a request carries.
pub fn verify_request<B>(
    verifier: &Verifier,
    request: &Request<B>,
) -> Result<Verified, WimseError> {
    let headers = request.headers();
    let tokens = request_tokens(headers)?;
    let lookup = |name: &str| header_text(headers, name);
    let presented = Presented {
        wit: tokens.wit,
        wpt: tokens.wpt,
        path: Some(request.uri().path()),
        authorization: tokens.authorization,
        txn_token: tokens.txn_token,
        header: &lookup,
    };
    verifier.verify(&presented, SystemTime::now())
}

/// The 400 answer for `error` (draft-ietf-wimse-workload-creds: 400, not
/// 401), as problem details with the failed check in `check`.
pub fn problem<ResBody: From<Bytes>>(error: &WimseError) -> Response<ResBody> {
    let body = serde_json::json!({
        "type": format!("urn:sigil:wimse:{}", error.check()),
        "title": "WIMSE proof rejected",
        "status": 400,
        "detail": error.to_string(),
        "check": error.check(),
    });
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header(header::CONTENT_TYPE, PROBLEM_JSON)
        .body(ResBody::from(Bytes::from(body.to_string())))
        .expect("a static response builds")
}
