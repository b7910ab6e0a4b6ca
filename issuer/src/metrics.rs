//! The issuer's Prometheus metrics, served at `GET /metrics` on its HTTP
//! endpoint. The recorder is process-wide (an issuer embedded in
//! `sigil-agent up` shares it with the agent), installed once.
//!
//! - `sigil_issuer_svids_issued_total{kind}`: X509-SVIDs (`x509`, agents'
//!   included), JWT-SVIDs (`jwt`) and WITs (`wit`) handed out.
//! - `sigil_issuer_connected_agents`: open entry streams.
//! - `sigil_issuer_key_rotations_total`: rotation steps of CA, JWT and WIT keys.
//! - `sigil_issuer_event_log_size`: leaves in the signed event log.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SVIDS_ISSUED: &str = "sigil_issuer_svids_issued_total";
pub const CONNECTED_AGENTS: &str = "sigil_issuer_connected_agents";
pub const KEY_ROTATIONS: &str = "sigil_issuer_key_rotations_total";
pub const EVENT_LOG_SIZE: &str = "sigil_issuer_event_log_size";

/// The process's Prometheus handle, installing the recorder on first use.
/// When another recorder was installed first, metrics go there and this
/// handle renders what it has (nothing).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(SVIDS_ISSUED, "Credentials handed out, by kind");
    metrics::describe_gauge!(CONNECTED_AGENTS, "Agents holding an entry stream");
    metrics::describe_counter!(KEY_ROTATIONS, "Rotation steps of CA, JWT and WIT keys");
    metrics::describe_gauge!(EVENT_LOG_SIZE, "Leaves in the signed event log");
}

/// Counts `count` credentials of `kind` issued.
pub fn issued(kind: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(SVIDS_ISSUED, "kind" => kind).increment(count as u64);
    }
}

/// Counts an agent's entry stream while it is held.
#[derive(Debug)]
pub struct ConnectedAgent;

impl ConnectedAgent {
    pub fn start() -> Self {
        metrics::gauge!(CONNECTED_AGENTS).increment(1.0);
        ConnectedAgent
    }
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTED_AGENTS).decrement(1.0);
    }
}
