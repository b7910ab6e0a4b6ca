//! The agent's health and metrics over HTTP, for orchestrator probes and
//! Prometheus, on `health_address` (off unless configured).
//!
//! - `GET /live`: 200 while the agent serves HTTP at all.
//! - `GET /ready`: 200 when the agent serves workloads: it holds its
//!   entries and the issuer has not refused it; else 503 naming why.
//! - `GET /metrics`: the Prometheus text format (see [`crate::metrics`]).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use workload_api::source::Snapshot;

use crate::events::AgentEvents;
use crate::issuer_health::IssuerHealth;

/// What the health routes read.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub health: Arc<IssuerHealth>,
    pub events: Arc<AgentEvents>,
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn live() -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", "live\n".into())
}

async fn ready(State(state): State<HealthState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    let reason = if let Some(refused) = &snapshot.refused {
        Some(format!("refused by the issuer: {refused}"))
    } else if snapshot.awaiting_entries {
        Some("the agent has not received its registration entries yet".to_string())
    } else {
        None
    };
    match reason {
        None => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ready\n".into(),
        ),
        Some(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            reason,
        ),
    }
}

async fn metrics(State(state): State<HealthState>) -> Response {
    // Gauges read at scrape time.
    let unreachable = state
        .health
        .outage()
        .map_or(0.0, |outage| outage.lasted(SystemTime::now()).as_secs_f64());
    metrics::gauge!(crate::metrics::ISSUER_UNREACHABLE).set(unreachable);
    metrics::gauge!(crate::metrics::EVENTS_PENDING).set(state.events.pending() as f64);
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::metrics::handle().render(),
    )
}
