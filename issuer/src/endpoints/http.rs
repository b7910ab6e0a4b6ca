//! The issuer's public HTTP endpoint, for relying parties that do not talk
//! to an agent: the CRLs and the signed revocation list. Everything served
//! is signed by the CA, so the endpoint needs no authentication.
//!
//! - `GET /v1/revocations`: the revocation list (compact JWS,
//!   `application/jwt`). With `?after=SEQ` the answer waits, up to
//!   [`LONG_POLL`], for a list newer than SEQ: followers learn of a
//!   revocation at once without polling hard.
//! - `GET /v1/crl`: every current CRL, PEM.
//! - `GET /v1/crl/{authority}`: one authority's CRL, DER (`application/pkix-crl`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::IssuerState;

/// The longest a `?after=` request waits for news.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// The endpoint's routes.
pub fn router(state: IssuerState) -> Router {
    Router::new()
        .route("/v1/revocations", get(revocations))
        .route("/v1/crl", get(crls_pem))
        .route("/v1/crl/{authority}", get(crl_der))
        .with_state(state)
}

fn reply(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Always fetch anew: these change the moment something is revoked.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn problem(status: StatusCode, detail: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        detail,
    )
        .into_response()
}

/// `after=SEQ` from the query string; other parameters are refused.
fn after(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    match query.split_once('=') {
        Some(("after", seq)) => seq
            .parse()
            .map(Some)
            .map_err(|_| format!("after: {seq:?} is not a sequence number")),
        _ => Err(format!(
            "unknown query {query:?}; only after=SEQ is understood"
        )),
    }
}

async fn revocations(State(state): State<IssuerState>, RawQuery(query): RawQuery) -> Response {
    let after = match after(query.as_deref()) {
        Ok(after) => after,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    let mut changes = state.revocations.subscribe();
    if let Some(after) = after {
        // Whatever the outcome, answer with the current list.
        let _ = tokio::time::timeout(LONG_POLL, changes.wait_for(|p| p.seq > after)).await;
    }
    let current = state.revocations.current();
    if current.list.is_empty() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no revocation list is published yet".into(),
        );
    }
    reply("application/jwt", current.list.clone())
}

async fn crls_pem(State(state): State<IssuerState>) -> Response {
    let current = state.revocations.current();
    let pem: String = current
        .crls
        .iter()
        .map(|crl| workload_api::pem::encode("X509 CRL", &crl.der))
        .collect();
    reply("application/x-pem-file", pem)
}

async fn crl_der(State(state): State<IssuerState>, Path(authority): Path<String>) -> Response {
    let current = state.revocations.current();
    match current.crls.iter().find(|c| c.authority_id == authority) {
        Some(crl) => reply("application/pkix-crl", crl.der.clone()),
        None => problem(
            StatusCode::NOT_FOUND,
            format!(
                "no current CRL for authority {}",
                crate::registration::shown(&authority)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_after_is_understood() {
        assert_eq!(after(None), Ok(None));
        assert_eq!(after(Some("after=7")), Ok(Some(7)));
        assert_eq!(
            after(Some("after=x")),
            Err("after: \"x\" is not a sequence number".into())
        );
        assert!(after(Some("before=1"))
            .unwrap_err()
            .starts_with("unknown query"));
    }
}
