//! Sends queued events to the issuer: syncs them to disk, signs each with
//! the agent's current SVID key, and drops them only once the issuer says
//! it holds them. Failures back off and retry; nothing is dropped for an
//! outage.

use std::sync::Arc;
use std::time::Duration;

use proto::issuer as pb;
use tokio::sync::watch;
use workload_api::events::signed;
use workload_api::jwk::Algorithm;
use workload_api::keypair::KeyPair;

use super::AgentEvents;
use crate::node::Node;

/// Events per SubmitEvents call (the issuer takes at most 256).
const BATCH: usize = 256;
/// How long queued events may wait for company before they are sent.
const LINGER: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until `stop`, then syncs what is queued to disk.
pub async fn run(events: Arc<AgentEvents>, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let delay = match send_some(&events, &node).await {
            Ok(None) => None,
            Ok(Some(_)) => {
                backoff = Duration::from_secs(1);
                Some(Duration::ZERO)
            }
            Err(error) => {
                if node.issuer.is_up() {
                    tracing::warn!(%error, retry_in = ?backoff, "sending events to the issuer failed");
                } else {
                    // The pool logs the outage once; each retry is detail.
                    tracing::debug!(%error, retry_in = ?backoff, "sending events to the issuer failed");
                }
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(wait)
            }
        };
        let stopped = tokio::select! {
            _ = async {
                match delay {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => {
                        events.queued.notified().await;
                        tokio::time::sleep(LINGER).await;
                    }
                }
            } => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            if let Err(error) = events.with_queue(|q| q.sync()) {
                tracing::error!(%error, "syncing the event queue at shutdown failed");
            }
            return;
        }
    }
}

/// Sends one batch; returns how many events the issuer took, None when
/// nothing waits.
async fn send_some(events: &AgentEvents, node: &Node) -> Result<Option<usize>, String> {
    let svid = node.svid();
    let agent_id = svid.spiffe_id.to_string();
    let batch = events.with_queue(|queue| {
        if queue.agent_id() != agent_id {
            let dropped = queue.pending_len();
            queue.restart_numbering(&agent_id, dropped)?;
        }
        queue.sync()?;
        Ok::<_, super::queue::QueueError>(queue.unsent(BATCH))
    });
    let batch = batch.map_err(|e| e.to_string())?;
    if batch.is_empty() {
        return Ok(None);
    }
    let key = KeyPair::from_pkcs8(Algorithm::ES256, &svid.key_pkcs8)
        .map_err(|e| format!("the agent key cannot sign: {e}"))?;
    let records = batch
        .iter()
        .map(|queued| signed::sign(&queued.event, queued.seq, &key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let answer = node
        .client()
        .submit_events(pb::SubmitEventsRequest { records })
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    // Counted by the acknowledgement itself: events queued meanwhile must
    // not be taken for ones the issuer did not take.
    let taken = events
        .with_queue(|queue| queue.ack(answer.acknowledged_through))
        .map_err(|e| e.to_string())?;
    match taken {
        0 => Err(format!(
            "the issuer acknowledged events up to {}, none of those sent",
            answer.acknowledged_through
        )),
        taken => Ok(Some(taken)),
    }
}
