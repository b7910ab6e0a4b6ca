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
//! - `GET /.well-known/openid-configuration` and `GET /keys`: OpenID Connect
//!   Discovery 1.0 for JWT-SVIDs, when `oidc_issuer` is set: cloud providers
//!   then trust JWT-SVIDs as tokens of that issuer (workload identity
//!   federation). `/keys` holds the JWT-SVID keys only.
//! - `/log/...`: the signed event log (see [`super::log_http`]).
//! - `/live`, `/ready`, `/metrics`: health and Prometheus metrics (see
//!   [`super::health_http`]).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use workload_api::jwk::{Curve, PublicKey};

use super::web::{numbers, problem, reply};
use crate::state::IssuerState;

/// The longest a `?after=` request waits for news.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// The endpoint's routes.
pub fn router(state: IssuerState) -> Router {
    Router::new()
        .route("/v1/revocations", get(revocations))
        .route("/v1/crl", get(crls_pem))
        .route("/v1/crl/{authority}", get(crl_der))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/keys", get(oidc_keys))
        .merge(super::log_http::routes())
        .merge(super::health_http::routes())
        .with_state(state)
}

/// `after=SEQ` from the query string; other parameters are refused.
fn after(query: Option<&str>) -> Result<Option<u64>, String> {
    Ok(numbers(query, &["after"])?.get("after").copied())
}

async fn revocations(State(state): State<IssuerState>, RawQuery(query): RawQuery) -> Response {
    let after = match after(query.as_deref()) {
        Ok(after) => after,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    let mut changes = state.revocations.subscribe();
    if let Some(after) = after {
        // Whatever the outcome, answer with the current list.
        let _ = tokio::time::timeout(LONG_POLL, changes.wait_for(|p| p.list_seq() > after)).await;
    }
    match &state.revocations.current().list {
        Some(list) => reply("application/jwt", list.jws.clone()),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no revocation list is published yet".into(),
        ),
    }
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

/// The answer while OIDC discovery is off.
fn oidc_off() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "OIDC discovery is off: set oidc_issuer in the issuer's configuration".into(),
    )
}

async fn openid_configuration(State(state): State<IssuerState>) -> Response {
    let Some(issuer) = state.config.oidc_issuer.as_deref() else {
        return oidc_off();
    };
    let document = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        // No authorization endpoint: tokens come from the Workload API.
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
    });
    reply("application/json", document.to_string())
}

async fn oidc_keys(State(state): State<IssuerState>) -> Response {
    if state.config.oidc_issuer.is_none() {
        return oidc_off();
    }
    let bundle = state.ca.bundle();
    let keys: Vec<serde_json::Value> = bundle
        .jwt_authorities()
        .iter()
        .map(|authority| {
            let mut jwk = authority.key.to_jwk();
            jwk.kid = Some(authority.kid.clone());
            // OIDC clients take keys whose use is `sig` (or unset).
            jwk.use_ = Some("sig".into());
            // What the issuer's JWT keys sign with (ca_key types ec-p256,
            // ec-p384, rsa-2048).
            jwk.alg = Some(
                match &authority.key {
                    PublicKey::Ec {
                        curve: Curve::P384, ..
                    } => "ES384",
                    PublicKey::Ec { .. } => "ES256",
                    _ => "RS256",
                }
                .into(),
            );
            serde_json::to_value(jwk).expect("a JWK serializes")
        })
        .collect();
    reply(
        "application/json",
        serde_json::json!({ "keys": keys }).to_string(),
    )
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
            Err("after: \"after=x\" is not a whole number".into())
        );
        assert_eq!(
            after(Some("after=1&after=2")),
            Err("after is given twice".into())
        );
        assert!(after(Some("before=1"))
            .unwrap_err()
            .starts_with("unknown query"));
    }
}
