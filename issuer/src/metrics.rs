//! The issuer's Prometheus metrics, served at `GET /metrics` on its HTTP
//! endpoint (the recorder is [`workload_api::metrics`]'s, process-wide).
//!
//! - `sigil_issuer_svids_issued_total{kind}`: X509-SVIDs (`x509`, agents'
//!   included), JWT-SVIDs (`jwt`) and WITs (`wit`) handed out.
//! - `sigil_issuer_connected_agents`: open entry streams.
//! - `sigil_issuer_key_rotations_total`: rotation steps of CA, JWT and WIT keys.
//! - `sigil_issuer_event_log_size`: leaves in the signed event log.

pub const SVIDS_ISSUED: &str = "sigil_issuer_svids_issued_total";
pub const CONNECTED_AGENTS: &str = "sigil_issuer_connected_agents";
pub const KEY_ROTATIONS: &str = "sigil_issuer_key_rotations_total";
pub const EVENT_LOG_SIZE: &str = "sigil_issuer_event_log_size";

/// The process's Prometheus handle, with the issuer's metrics described.
pub fn handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    let handle = workload_api::metrics::handle();
    DESCRIBED.call_once(describe);
    handle
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
