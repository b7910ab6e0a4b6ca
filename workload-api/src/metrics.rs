//! The process's Prometheus recorder, shared by the issuer and the agent
//! (both run in one process under `sigil-agent up`): installed once, and
//! rendered by whichever serves `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
        handle
    })
}
