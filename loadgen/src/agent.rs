//! One simulated agent, doing against the issuer what `sigil-agent` does:
//! attest with a join token, hold the entry stream over mTLS with its agent
//! SVID (reopened with jittered backoff), sign an X509-SVID for every entry
//! it receives, and renew its SVID at half its life, after which new calls
//! go over a new connection with the new certificate while the open stream
//! stays on the old one, as in the agent's `Node::renew`.
//!
//! Workloads are not simulated: each SVID's key is made, used for its CSR,
//! and dropped once the signed chain has been verified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use proto::issuer as pb;
use proto::issuer::agent_api_client::AgentApiClient;
use sigil_agent::issuer_client;
use sigil_agent::keys::new_key_and_csr;
use sigil_agent::node::identity::AgentSvid;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;
use workload_api::bundle::split_der_concat;
use workload_api::display::error_chain;
use workload_api::{x509svid, Bundle};

use crate::events::Event;

/// What every simulated agent shares.
#[derive(Debug)]
pub struct Fleet {
    pub bundle: Arc<Bundle>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Bounds the agents attaching at once; a permit is held from the
    /// start of attestation to the first complete snapshot.
    pub attach_gate: Arc<Semaphore>,
    pub attach_timeout: Duration,
}

/// One agent to simulate.
#[derive(Debug)]
pub struct SimulatedAgent {
    pub index: usize,
    pub address: String,
    pub join_token: String,
}

/// An agent still attaching: its place at the gate and its deadline.
struct Attaching {
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
}

/// Why one run of the entry stream ended.
enum StreamEnd {
    Failed(String),
    /// The first snapshot did not arrive in time.
    AttachTimedOut,
}

/// Reopening a broken stream waits this long at first, doubling to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_STREAM_BACKOFF: Duration = Duration::from_secs(5);
const MAX_RENEW_BACKOFF: Duration = Duration::from_secs(30);

/// The agent once attested: its SVID and the client that presents it.
struct Attested {
    index: usize,
    address: String,
    fleet: Arc<Fleet>,
    svid: watch::Sender<Arc<AgentSvid>>,
    client: watch::Sender<AgentApiClient<Channel>>,
}

impl SimulatedAgent {
    /// Runs until the task is dropped, or until attaching fails.
    pub async fn run(self, fleet: Arc<Fleet>) {
        let permit = fleet
            .attach_gate
            .clone()
            .acquire_owned()
            .await
            .expect("the gate is never closed");
        let attaching = Attaching {
            _permit: permit,
            deadline: Instant::now() + fleet.attach_timeout,
        };
        let attested = match tokio::time::timeout_at(
            attaching.deadline.into(),
            attest(
                &self.address,
                &fleet.bundle,
                &self.join_token,
                attaching.deadline,
            ),
        )
        .await
        {
            Ok(Ok(svid)) => svid,
            Ok(Err(error)) => return fleet.attach_failed(self.index, error),
            Err(_) => return fleet.attach_failed(self.index, "AttestAgent timed out".into()),
        };
        let client = match connect(&self.address, &fleet.bundle, &attested) {
            Ok(client) => client,
            Err(error) => return fleet.attach_failed(self.index, error),
        };
        let agent = Attested {
            index: self.index,
            address: self.address,
            fleet,
            svid: watch::channel(Arc::new(attested)).0,
            client: watch::channel(client).0,
        };
        tokio::select! {
            () = agent.sync(attaching) => {}
            () = agent.renew_forever() => {}
        }
    }
}

impl Fleet {
    fn send(&self, event: Event) {
        // The run stops listening only when it is over.
        let _ = self.events.send(event);
    }

    fn attach_failed(&self, agent: usize, error: String) {
        self.send(Event::AttachFailed { agent, error });
    }
}

/// Attests with a join token over server-authenticated TLS, retrying while
/// the issuer cannot be reached until `deadline` (a refusal is final: the
/// token is spent).
async fn attest(
    address: &str,
    bundle: &Bundle,
    token: &str,
    deadline: Instant,
) -> Result<AgentSvid, String> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attest_once(address, bundle, token).await {
            Err(Attempt::Unreachable(error)) => {
                let pause = with_jitter(backoff);
                if Instant::now() + pause >= deadline {
                    return Err(format!("issuer unreachable: {error}"));
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_STREAM_BACKOFF);
            }
            Err(Attempt::Refused(error)) => return Err(error),
            Ok(svid) => return Ok(svid),
        }
    }
}

enum Attempt {
    Unreachable(String),
    Refused(String),
}

async fn attest_once(address: &str, bundle: &Bundle, token: &str) -> Result<AgentSvid, Attempt> {
    let (key, csr) = new_key_and_csr(None).map_err(|e| Attempt::Refused(e.to_string()))?;
    let mut client = issuer_client::connect(address, bundle, None)
        .await
        .map_err(|e| Attempt::Unreachable(error_chain(&e)))?;
    let response = client
        .attest_agent(pb::AttestAgentRequest {
            method: Some(pb::attest_agent_request::Method::JoinToken(
                pb::JoinTokenAttestation {
                    token: token.to_owned(),
                },
            )),
            csr,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => Attempt::Unreachable(status.message().to_owned()),
            code => Attempt::Refused(format!("AttestAgent {code:?}: {}", status.message())),
        })?
        .into_inner();
    let svid = response
        .svid
        .ok_or(Attempt::Refused("AttestAgent carried no SVID".into()))?;
    let chain = split_der_concat(&svid.cert_chain)
        .map_err(|e| Attempt::Refused(format!("agent SVID chain: {e}")))?;
    AgentSvid::new(chain, key, bundle, SystemTime::now())
        .map_err(|e| Attempt::Refused(format!("agent SVID: {e}")))
}

/// A client presenting `svid`, connected on first use like the agent's.
fn connect(
    address: &str,
    bundle: &Bundle,
    svid: &AgentSvid,
) -> Result<AgentApiClient<Channel>, String> {
    let addresses = address
        .parse()
        .map_err(|e| format!("issuer address {address:?}: {e}"))?;
    let pool = sigil_agent::failover::IssuerPool::new(addresses);
    issuer_client::connect_lazy(&pool, bundle, Some(&svid.client_identity()))
        .map_err(|e| error_chain(&e))
}

impl Attested {
    fn client(&self) -> AgentApiClient<Channel> {
        self.client.borrow().clone()
    }

    /// Holds the entry stream, reopening it when it breaks. Returns only if
    /// the first snapshot did not arrive in time.
    async fn sync(&self, attaching: Attaching) {
        let mut attaching = Some(attaching);
        let mut signed: HashMap<String, i64> = HashMap::new();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.follow(&mut signed, &mut attaching).await {
                Err(StreamEnd::AttachTimedOut) => {
                    return self
                        .fleet
                        .attach_failed(self.index, "no complete snapshot in time".into())
                }
                Err(StreamEnd::Failed(error)) => error,
                Ok(()) => "the issuer ended the stream".into(),
            };
            self.fleet.send(Event::StreamBroken {
                error,
                at: Instant::now(),
            });
            let pause = with_jitter(backoff);
            if let Some(attaching) = &attaching {
                if Instant::now() + pause >= attaching.deadline {
                    return self
                        .fleet
                        .attach_failed(self.index, "no complete snapshot in time".into());
                }
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_STREAM_BACKOFF);
        }
    }

    /// One run of the entry stream: signs for new or changed entries and
    /// reports the foreign bundles it delivers.
    async fn follow(
        &self,
        signed: &mut HashMap<String, i64>,
        attaching: &mut Option<Attaching>,
    ) -> Result<(), StreamEnd> {
        let deadline = attaching.as_ref().map(|a| a.deadline);
        let mut stream = within(
            deadline,
            self.client().sync_entries(pb::SyncEntriesRequest {}),
        )
        .await?
        .map_err(|status| StreamEnd::Failed(status_text("SyncEntries", &status)))?
        .into_inner();
        loop {
            let deadline = attaching.as_ref().map(|a| a.deadline);
            let message = match within(deadline, stream.message()).await? {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(status) => return Err(StreamEnd::Failed(status_text("stream", &status))),
            };
            let at = Instant::now();
            for trust_domain in message.federated_bundles.into_keys() {
                self.fleet.send(Event::FederatedBundle {
                    agent: self.index,
                    trust_domain,
                    at,
                });
            }
            for id in &message.removed_ids {
                signed.remove(id);
            }
            let to_sign: Vec<pb::Entry> = message
                .upserted
                .into_iter()
                .filter(|e| signed.get(&e.id) != Some(&e.revision))
                .collect();
            if !to_sign.is_empty() {
                for entry in &to_sign {
                    signed.insert(entry.id.clone(), entry.revision);
                }
                // Signing must not hold up the stream.
                tokio::spawn(sign(
                    self.client(),
                    self.fleet.bundle.clone(),
                    self.fleet.events.clone(),
                    to_sign,
                ));
            }
            if message.snapshot_complete {
                if let Some(_attached) = attaching.take() {
                    self.fleet.send(Event::Attached {
                        agent: self.index,
                        spiffe_id: self.svid.borrow().spiffe_id.to_string(),
                        at: Instant::now(),
                    });
                }
            }
        }
    }

    /// Renews the agent SVID at half its life, for as long as the agent runs.
    async fn renew_forever(&self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let renew_at = self.svid.borrow().renew_at();
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match self.renew().await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    self.fleet.send(Event::Renewed { at: Instant::now() });
                }
                Err(error) => {
                    self.fleet.send(Event::RenewFailed { error });
                    tokio::time::sleep(with_jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_RENEW_BACKOFF);
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), String> {
        let (key, csr) = new_key_and_csr(None).map_err(|e| e.to_string())?;
        let response = self
            .client()
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .map_err(|status| status_text("RenewAgent", &status))?
            .into_inner();
        let svid = response.svid.ok_or("RenewAgent carried no SVID")?;
        let chain =
            split_der_concat(&svid.cert_chain).map_err(|e| format!("renewed chain: {e}"))?;
        let svid = AgentSvid::new(chain, key, &self.fleet.bundle, SystemTime::now())
            .map_err(|e| format!("renewed SVID: {e}"))?;
        let client = connect(&self.address, &self.fleet.bundle, &svid)?;
        self.svid.send_replace(Arc::new(svid));
        self.client.send_replace(client);
        Ok(())
    }
}

/// Awaits `future`, bounded by `deadline` when there is one.
async fn within<F: std::future::Future>(
    deadline: Option<Instant>,
    future: F,
) -> Result<F::Output, StreamEnd> {
    match deadline {
        None => Ok(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline.into(), future)
            .await
            .map_err(|_| StreamEnd::AttachTimedOut),
    }
}

/// Signs an X509-SVID for each entry with a fresh key, and reports each
/// one whose chain verifies against the bundle and names the entry's ID.
async fn sign(
    mut client: AgentApiClient<Channel>,
    bundle: Arc<Bundle>,
    events: mpsc::UnboundedSender<Event>,
    entries: Vec<pb::Entry>,
) {
    let mut params = Vec::with_capacity(entries.len());
    for entry in &entries {
        match new_key_and_csr(Some(&entry.spiffe_id)) {
            Ok((_key, csr)) => params.push(pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr,
            }),
            Err(e) => {
                let _ = events.send(Event::SignFailed {
                    error: e.to_string(),
                });
            }
        }
    }
    let results = match client
        .batch_sign_x509_svids(pb::BatchSignX509SvidsRequest { params })
        .await
    {
        Ok(response) => response.into_inner().results,
        Err(status) => {
            let _ = events.send(Event::SignFailed {
                error: status_text("BatchSignX509Svids", &status),
            });
            return;
        }
    };
    let expected: HashMap<&str, &str> = entries
        .iter()
        .map(|e| (e.id.as_str(), e.spiffe_id.as_str()))
        .collect();
    for result in results {
        let event = match verify_result(&result, &bundle, expected.get(result.entry_id.as_str())) {
            Ok(()) => Event::SvidSigned {
                entry_id: result.entry_id,
                at: Instant::now(),
            },
            Err(error) => Event::SignFailed { error },
        };
        let _ = events.send(event);
    }
}

fn verify_result(
    result: &pb::X509SvidResult,
    bundle: &Bundle,
    expected_id: Option<&&str>,
) -> Result<(), String> {
    if result.code != 0 {
        return Err(format!("code {}: {}", result.code, result.message));
    }
    let chain = split_der_concat(&result.cert_chain).map_err(|e| format!("SVID chain: {e}"))?;
    let leaf = x509svid::verify_chain(
        &chain,
        |td| (td == bundle.trust_domain()).then_some(bundle),
        SystemTime::now(),
    )
    .map_err(|e| format!("SVID: {e}"))?;
    match expected_id {
        Some(id) if leaf.spiffe_id.to_string() == **id => Ok(()),
        _ => Err(format!(
            "SVID for {} names {}, not the entry's ID",
            result.entry_id, leaf.spiffe_id
        )),
    }
}

fn status_text(call: &str, status: &tonic::Status) -> String {
    format!("{call} {:?}: {}", status.code(), status.message())
}

/// `base` plus up to half of it again, so agents retrying together spread out.
fn with_jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    base + base * u32::from(byte[0]) / 510
}
