//! SubmitEvents: events an agent witnessed (credentials it delivered,
//! proofs its workloads verified), each signed by the agent. The issuer
//! checks every record (the agent's own key, its own SPIFFE ID as actor, a
//! kind agents may report) and logs it as sent, never rewritten.

use proto::issuer as pb;
use tonic::{Request, Status};
use workload_api::events::signed;
use workload_api::events::EventKind;

use super::agent::AgentService;
use super::store_status;

/// The most records one call may carry.
pub const MAX_EVENTS_PER_CALL: usize = 256;

/// What agents may report: what they and their workloads saw, never what
/// only the issuer can witness.
fn agents_may_report(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::CredentialDelivered | EventKind::ProofVerified | EventKind::ProofRejected
    )
}

/// The RFC 7638 thumbprint of the key in the caller's TLS client certificate.
fn client_key_thumbprint<T>(request: &Request<T>) -> Result<String, Status> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| Status::unauthenticated("an agent X509-SVID is required"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    let key = workload_api::jwk::PublicKey::from_spki_der(cert.public_key().raw)
        .map_err(|e| Status::unauthenticated(format!("client certificate key: {e}")))?;
    Ok(key.thumbprint())
}

impl AgentService {
    pub(super) async fn submit_events_for(
        &self,
        agent_id: &str,
        request: Request<pb::SubmitEventsRequest>,
    ) -> Result<pb::SubmitEventsResponse, Status> {
        let jkt = client_key_thumbprint(&request)?;
        let records = request.into_inner().records;
        if records.len() > MAX_EVENTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} records in one call; at most {MAX_EVENTS_PER_CALL}",
                records.len()
            )));
        }
        let mut checked = Vec::with_capacity(records.len());
        for (i, record) in records.into_iter().enumerate() {
            let refuse = |why: String| Status::invalid_argument(format!("records[{i}]: {why}"));
            if record.len() > crate::eventlog::leaf::MAX_RECORD_BYTES {
                return Err(refuse(format!(
                    "{} bytes; at most {}",
                    record.len(),
                    crate::eventlog::leaf::MAX_RECORD_BYTES
                )));
            }
            let signed = signed::verify(record.as_bytes()).map_err(|e| refuse(e.to_string()))?;
            if signed.event.actor != agent_id {
                return Err(refuse(format!(
                    "the event's actor {} is not the calling agent {agent_id}",
                    workload_api::display::shown(&signed.event.actor)
                )));
            }
            if signed.jkt != jkt {
                return Err(refuse(
                    "signed with a key other than the agent's current SVID key".into(),
                ));
            }
            if !agents_may_report(signed.event.kind) {
                return Err(refuse(format!(
                    "agents may not report {} events",
                    signed.event.kind.name()
                )));
            }
            checked.push((signed.seq, record));
        }
        checked.sort_by_key(|(seq, _)| *seq);
        let last = self
            .state
            .events
            .append_agent_records(agent_id, checked)
            .await
            .map_err(store_status)?;
        Ok(pb::SubmitEventsResponse {
            acknowledged_through: last,
        })
    }
}
