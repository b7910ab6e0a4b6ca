//! The Usage service on the Workload API socket: services that verify
//! WIMSE proofs with Sigil's library report what they accepted (aggregated
//! per sender, credential and route) and refused; the agent records each
//! report line as an event, naming the reporting process, and sends it to
//! the issuer's log signed with its own key.

use std::sync::Arc;
use std::time::SystemTime;

use proto::agent::usage_server::Usage;
use proto::agent::{ReportVerificationsRequest, ReportVerificationsResponse, VerificationReport};
use tonic::{Request, Response, Status};
use workload_api::events::{Event, EventKind};
use workload_api::server::{admit_caller, Admitted};
use workload_api::wimse::usage::{MAX_ACCEPTED_KEYS, MAX_REFUSALS, MAX_ROUTE_BYTES};

use crate::events::AgentEvents;
use crate::node::Node;
use crate::source::AgentSource;

/// The most lines one report may hold: a full window and its overflow line.
const MAX_REPORTS: usize = MAX_ACCEPTED_KEYS + MAX_REFUSALS + 1;
/// The longest credential id and check name taken.
const MAX_JTI_BYTES: usize = 256;
const MAX_CHECK_BYTES: usize = 64;

/// The Usage service.
#[derive(Debug, Clone)]
pub struct UsageService {
    source: Arc<AgentSource>,
    node: Arc<Node>,
    events: Arc<AgentEvents>,
}

impl UsageService {
    pub fn new(source: Arc<AgentSource>, node: Arc<Node>, events: Arc<AgentEvents>) -> Self {
        UsageService {
            source,
            node,
            events,
        }
    }
}

/// INVALID_ARGUMENT naming the line and field over its bound.
fn check_line(i: usize, report: &VerificationReport) -> Result<(), Status> {
    let bounds = [
        (
            "sender",
            report.sender.len(),
            workload_api::id::MAX_SPIFFE_ID_BYTES,
        ),
        ("credential_jti", report.credential_jti.len(), MAX_JTI_BYTES),
        ("route", report.route.len(), MAX_ROUTE_BYTES),
        ("check", report.check.len(), MAX_CHECK_BYTES),
    ];
    for (field, len, max) in bounds {
        if len > max {
            return Err(Status::invalid_argument(format!(
                "reports[{i}].{field}: {len} bytes; at most {max}"
            )));
        }
    }
    if !matches!(
        report.proof.as_str(),
        "" | "wpt" | "http_signature" | "jwt_svid"
    ) {
        return Err(Status::invalid_argument(format!(
            "reports[{i}].proof: {:?} is not wpt, http_signature or jwt_svid",
            workload_api::display::shown(&report.proof)
        )));
    }
    if report.accepted && (report.sender.is_empty() || report.count == 0) {
        return Err(Status::invalid_argument(format!(
            "reports[{i}]: an acceptance names its sender and counts at least one request"
        )));
    }
    Ok(())
}

/// The event a report line becomes. An accepted sender was verified, so
/// it is the event's subject; a refused request's sender and credential
/// are only what it claimed.
fn event_of(agent_id: &str, caller: &Admitted, report: VerificationReport) -> Event {
    let kind = if report.accepted {
        EventKind::ProofVerified
    } else {
        EventKind::ProofRejected
    };
    let selectors: Vec<String> = caller.selectors.iter().map(|s| s.to_string()).collect();
    let mut event = Event::new(kind, agent_id, SystemTime::now())
        .detail("route", report.route)
        .detail(
            "count",
            report
                .count
                .min(workload_api::events::canonical::MAX_SAFE_INTEGER),
        )
        .detail("first_seen", report.first_seen)
        .detail("last_seen", report.last_seen)
        .detail("verifier_uid", caller.uid)
        .bounded_list("verifier_selectors", &selectors);
    if let Some(pid) = caller.pid {
        event = event.detail("verifier_pid", pid);
    }
    if !report.proof.is_empty() {
        event = event.detail("proof", report.proof);
    }
    if report.accepted {
        event = event.subject(report.sender);
        if !report.credential_jti.is_empty() {
            event = event.jti(report.credential_jti);
        }
    } else {
        event = event.detail("check", report.check);
        if !report.sender.is_empty() {
            event = event.detail("claimed_sender", report.sender);
        }
        if !report.credential_jti.is_empty() {
            event = event.detail("claimed_jti", report.credential_jti);
        }
    }
    event
}

#[tonic::async_trait]
impl Usage for UsageService {
    async fn report_verifications(
        &self,
        request: Request<ReportVerificationsRequest>,
    ) -> Result<Response<ReportVerificationsResponse>, Status> {
        let caller = admit_caller(self.source.as_ref(), &request).await?;
        let reports = request.into_inner().reports;
        if reports.len() > MAX_REPORTS {
            return Err(Status::invalid_argument(format!(
                "reports: {} lines; at most {MAX_REPORTS}",
                reports.len()
            )));
        }
        for (i, report) in reports.iter().enumerate() {
            check_line(i, report)?;
        }
        let agent_id = self.node.svid().spiffe_id.to_string();
        for report in reports {
            self.events.record(event_of(&agent_id, &caller, report));
        }
        Ok(Response::new(ReportVerificationsResponse {}))
    }
}
