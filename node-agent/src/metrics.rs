//! The agent's Prometheus metrics, served at `GET /metrics` on its health
//! address (the recorder is [`workload_api::metrics`]'s, process-wide).
//!
//! - `sigil_agent_workload_api_calls_total{method}` and
//!   `sigil_agent_workload_api_call_seconds{method}` (a summary): every call
//!   on the Workload API socket, by gRPC method, timed to its answer (the
//!   first message, for streams).
//! - `sigil_agent_svids_minted_total{kind}`: X509-SVIDs (`x509`) and WITs
//!   (`wit`) minted, first ones and rotations.
//! - `sigil_agent_last_sync_timestamp_seconds`: when the issuer's entry
//!   stream last delivered; `time() -` it is the sync lag.
//! - `sigil_agent_issuer_unreachable_seconds`: how long the issuer has not
//!   answered (0 while it does).
//! - `sigil_agent_events_pending`: events waiting for the issuer's log.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const CALLS: &str = "sigil_agent_workload_api_calls_total";
pub const CALL_SECONDS: &str = "sigil_agent_workload_api_call_seconds";
pub const SVIDS_MINTED: &str = "sigil_agent_svids_minted_total";
pub const LAST_SYNC: &str = "sigil_agent_last_sync_timestamp_seconds";
pub const ISSUER_UNREACHABLE: &str = "sigil_agent_issuer_unreachable_seconds";
pub const EVENTS_PENDING: &str = "sigil_agent_events_pending";

/// The process's Prometheus handle, with the agent's metrics described.
pub fn handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    let handle = workload_api::metrics::handle();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(CALLS, "Workload API calls, by gRPC method");
        metrics::describe_histogram!(
            CALL_SECONDS,
            "Workload API call time to answer, by gRPC method"
        );
        metrics::describe_counter!(
            SVIDS_MINTED,
            "SVIDs minted, first ones and rotations, by kind"
        );
        metrics::describe_gauge!(LAST_SYNC, "When the issuer's entry stream last delivered");
        metrics::describe_gauge!(ISSUER_UNREACHABLE, "Seconds the issuer has not answered");
        metrics::describe_gauge!(EVENTS_PENDING, "Events waiting for the issuer's log");
    });
    handle
}

/// Counts `count` SVIDs of `kind` minted.
pub fn minted(kind: &'static str, count: usize) {
    metrics::counter!(SVIDS_MINTED, "kind" => kind).increment(count as u64);
}

/// Notes that the issuer's entry stream delivered now.
pub fn synced() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(LAST_SYNC).set(now);
}

/// The gRPC method of a request path (`/package.Service/Method`), bounded:
/// only the Workload API socket's own services are named, anything else
/// is `other`, so a caller cannot grow the label set.
fn method_of(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
        "FetchWITSVID",
        "FetchWITBundles",
        "Check",
        "RegisterChild",
        "ListChildren",
        "DeleteChild",
        "ReportVerifications",
    ];
    let method = path.rsplit('/').next().unwrap_or_default();
    KNOWN
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

/// A tower layer timing every call on the socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallMetricsLayer;

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics { inner }
    }
}

/// The service [`CallMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct CallMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            metrics::counter!(CALLS, "method" => method).increment(1);
            metrics::histogram!(CALL_SECONDS, "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(
            method_of("/SpiffeWorkloadAPI/FetchX509SVID"),
            "FetchX509SVID"
        );
        assert_eq!(method_of("/x/AnythingAtAll"), "other");
        assert_eq!(method_of(""), "other");
    }
}
