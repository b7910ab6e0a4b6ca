//! Health and metrics on the issuer's HTTP endpoint, for orchestrators
//! and Prometheus.
//!
//! - `GET /live`: 200 while the process serves HTTP at all.
//! - `GET /ready`: 200 when the issuer can issue: its database answers, a
//!   CA authority is valid now and the event log has a checkpoint; else
//!   503 naming what is not ready.
//! - `GET /metrics`: the Prometheus text format (see [`crate::metrics`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::web::{problem, reply};
use crate::state::IssuerState;

pub(super) fn routes() -> Router<IssuerState> {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn live() -> Response {
    reply("text/plain; charset=utf-8", "live\n")
}

/// What keeps the issuer from issuing now, if anything.
async fn not_ready(state: &IssuerState) -> Vec<String> {
    let mut reasons = Vec::new();
    match state.store.log_head().await {
        Ok(Some(_)) => {}
        Ok(None) => reasons.push("the event log has no checkpoint yet".to_string()),
        Err(error) => reasons.push(format!("the database does not answer: {error}")),
    }
    if state
        .ca
        .valid_x509_authorities(state.clock.now())
        .is_empty()
    {
        reasons.push("no CA authority is valid now".to_string());
    }
    reasons
}

async fn ready(State(state): State<IssuerState>) -> Response {
    let reasons = not_ready(&state).await;
    if reasons.is_empty() {
        return reply("text/plain; charset=utf-8", "ready\n");
    }
    problem(StatusCode::SERVICE_UNAVAILABLE, reasons.join("; "))
}

async fn metrics() -> Response {
    reply(
        "text/plain; version=0.0.4; charset=utf-8",
        crate::metrics::handle().render(),
    )
}
