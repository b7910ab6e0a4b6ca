//! The agent's health as `sigil-agent healthcheck` and orchestrator probes
//! see it, served beside the Workload API on its socket: healthy, degraded
//! (the issuer is unreachable but SVIDs still valid are served) or failed
//! (banned, evicted with no way back, or nothing valid left to serve).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::agent::agent_health_server::AgentHealth;
use proto::agent::health_response::State;
use proto::agent::{HealthRequest, HealthResponse};
use tokio::sync::watch;
use workload_api::source::{IssuerOutage, Snapshot};

use crate::issuer_health::IssuerHealth;
use crate::node::{Node, Standing};

/// What the health answer is made of, read at one moment.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub standing: Standing,
    pub outage: Option<IssuerOutage>,
    pub snapshot: &'a Snapshot,
    pub agent_id: String,
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The health answer at `now`.
pub fn assess(inputs: Inputs<'_>, now: SystemTime) -> HealthResponse {
    let held = inputs
        .snapshot
        .identities
        .iter()
        .filter_map(|i| i.x509.as_ref());
    let (valid, expired) = held.fold((0u32, 0u32), |(v, e), x509| {
        if x509.valid_at(now) {
            (v + 1, e)
        } else {
            (v, e + 1)
        }
    });
    let outage_for = |outage: &IssuerOutage| {
        format!(
            "the issuer has been unreachable for {}s: {}",
            outage.lasted(now).as_secs(),
            outage.last_error
        )
    };
    let (state, reason) = match (&inputs.standing, &inputs.outage) {
        (Standing::Refused { reason, .. }, _) => (State::Failed, reason.clone()),
        (Standing::Good, Some(outage)) if inputs.snapshot.awaiting_entries => (
            State::Failed,
            format!(
                "no registration entries received yet; {}",
                outage_for(outage)
            ),
        ),
        (Standing::Good, Some(outage)) if valid == 0 && expired > 0 => (
            State::Failed,
            format!("every SVID has expired; {}", outage_for(outage)),
        ),
        (Standing::Good, Some(outage)) => (
            State::Degraded,
            format!("serving the SVIDs still valid; {}", outage_for(outage)),
        ),
        (Standing::Good, None) => (State::Healthy, String::new()),
    };
    HealthResponse {
        state: state.into(),
        reason,
        issuer_unreachable_since: inputs.outage.as_ref().map_or(0, |o| secs(o.since)),
        svids: valid,
        agent_id: inputs.agent_id,
    }
}

/// The health service.
#[derive(Debug)]
pub struct Probe {
    pub node: Arc<Node>,
    pub health: Arc<IssuerHealth>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
}

#[tonic::async_trait]
impl AgentHealth for Probe {
    async fn check(
        &self,
        _: tonic::Request<HealthRequest>,
    ) -> Result<tonic::Response<HealthResponse>, tonic::Status> {
        let snapshot = self.snapshots.borrow().clone();
        let inputs = Inputs {
            standing: self.node.standing(),
            outage: self.health.outage(),
            snapshot: &snapshot,
            agent_id: self.node.svid().spiffe_id.to_string(),
        };
        Ok(tonic::Response::new(assess(inputs, SystemTime::now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use workload_api::source::{Identity, X509Material};

    fn snapshot(not_afters: &[i64], awaiting_entries: bool) -> Snapshot {
        let mut snapshot = Snapshot::empty(workload_api::Bundle::new(
            workload_api::TrustDomain::new("example.org").unwrap(),
        ));
        snapshot.awaiting_entries = awaiting_entries;
        snapshot.identities = not_afters
            .iter()
            .map(|&not_after| Identity {
                entry_id: "e".into(),
                spiffe_id: "spiffe://example.org/w".into(),
                hint: String::new(),
                selectors: Default::default(),
                federates_with: Vec::new(),
                x509: Some(Arc::new(X509Material::new(
                    Vec::new(),
                    Default::default(),
                    not_after,
                ))),
                wit: None,
            })
            .collect();
        snapshot
    }

    fn check(standing: Standing, outage: bool, snapshot: &Snapshot) -> (State, String) {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let outage = outage.then(|| IssuerOutage {
            since: now - Duration::from_secs(72),
            last_error: "Unavailable: connection refused".into(),
        });
        let answer = assess(
            Inputs {
                standing,
                outage,
                snapshot,
                agent_id: "spiffe://example.org/agent/x".into(),
            },
            now,
        );
        (answer.state(), answer.reason)
    }

    #[test]
    fn healthy_degraded_and_failed() {
        let valid = snapshot(&[2_000], false);
        assert_eq!(check(Standing::Good, false, &valid).0, State::Healthy);

        let (state, reason) = check(Standing::Good, true, &valid);
        assert_eq!(state, State::Degraded);
        assert!(reason.contains("unreachable for 72s"), "{reason}");

        let expired = snapshot(&[900, 999], false);
        let (state, reason) = check(Standing::Good, true, &expired);
        assert_eq!(state, State::Failed);
        assert!(reason.contains("every SVID has expired"), "{reason}");

        let waiting = snapshot(&[], true);
        let (state, reason) = check(Standing::Good, true, &waiting);
        assert_eq!(state, State::Failed);
        assert!(reason.contains("no registration entries"), "{reason}");

        let banned = Standing::Refused {
            banned: true,
            reason: "agent spiffe://example.org/agent/x is banned by the issuer".into(),
        };
        let (state, reason) = check(banned, false, &valid);
        assert_eq!(state, State::Failed);
        assert!(reason.contains("banned"), "{reason}");
    }
}
