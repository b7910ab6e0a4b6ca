//! Failover between issuer replicas. Every call the agent makes to the
//! issuer goes through one [`IssuerPool`]: at each connection attempt it
//! resolves the configured addresses into candidates, tries them in turn
//! from the replica in use (or a random one), and hands back a stream that
//! reports when the replica ends it.
//!
//! After a failed attempt or an ended connection the pool sets a jittered
//! delay ([`backoff`]) that the loops reacting at once to a broken
//! connection (the entry stream) wait out with [`IssuerPool::ready`], so a
//! fleet that loses a replica does not reconnect in step. Other calls dial
//! when they come, paced by their own retry loops: a workload's request or a
//! due rotation is not held back while a replica is already back.
//!
//! With one address that resolves to one socket address, this is the single
//! connection it always was, with its errors unchanged.

pub mod address;
pub mod backoff;
mod connection;
pub mod resolve;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use address::IssuerAddresses;
use backoff::Backoff;
pub use connection::Watched;
use resolve::{resolve_all, Resolve, SystemResolver};

/// How long one replica of several may take to accept a connection (TCP and
/// TLS), so that a silent one leaves time to reach the next within 5 s. A
/// lone replica is given the connection's whole timeout.
pub const CANDIDATE_TIMEOUT: Duration = Duration::from_secs(2);

/// A random `u32`, for jitter and the first replica tried.
pub type RandomSource = Box<dyn FnMut() -> u32 + Send>;

/// Every replica tried in one attempt failed; each is named with its error.
#[derive(Debug)]
pub struct Unreachable {
    attempts: Vec<(String, io::Error)>,
}

impl Unreachable {
    /// The addresses tried, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.attempts.iter().map(|(address, _)| address.as_str())
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no issuer address answered: {}",
            describe(&self.attempts)
        )
    }
}

impl std::error::Error for Unreachable {
    /// A failure that carries a cause (a TLS error: the one that calls for
    /// re-bootstrap) before a plain refusal.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let errors = || self.attempts.iter().map(|(_, error)| error);
        errors()
            .find(|error| error.get_ref().is_some())
            .or_else(|| errors().next_back())
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

fn describe(attempts: &[(String, io::Error)]) -> String {
    attempts
        .iter()
        .map(|(address, error)| format!("{address}: {error}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The issuer's replicas as the agent knows them.
pub struct IssuerPool {
    addresses: IssuerAddresses,
    resolver: Arc<dyn Resolve>,
    state: Mutex<State>,
    /// Wakes those waiting out the delay when a connection is made.
    connected: tokio::sync::Notify,
}

impl std::fmt::Debug for IssuerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerPool")
            .field("addresses", &self.addresses.to_string())
            .finish_non_exhaustive()
    }
}

/// Where the pool stands with the issuer; logged when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No attempt yet.
    Untried,
    /// Connection `generation` to `address` is open.
    Up {
        address: SocketAddr,
        generation: u64,
    },
    /// The replica at `address` ended the newest connection.
    Ended { address: SocketAddr },
    /// The last attempt reached no replica.
    Down,
}

/// The pool's memory between attempts. Time is passed in.
struct State {
    link: Link,
    /// The replica whose connection ended: tried last next time.
    avoid: Option<SocketAddr>,
    /// No attempt before this.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Numbers connections, so that only the newest one's end counts (a
    /// channel replaced at renewal closes its old connection quietly).
    generation: u64,
    random: RandomSource,
}

impl State {
    fn new(random: RandomSource) -> Self {
        State {
            link: Link::Untried,
            avoid: None,
            retry_at: None,
            backoff: Backoff::default(),
            generation: 0,
            random,
        }
    }

    /// How long before the next attempt may be made.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .map(|at| at.saturating_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }

    fn order(&mut self, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
        let prefer = match self.link {
            Link::Up { address, .. } => Some(address),
            _ => None,
        };
        let random = (self.random)();
        backoff::rotation(candidates, prefer, self.avoid, random)
    }

    /// A connection to `address` was made; returns its generation.
    fn connected(&mut self, address: SocketAddr) -> u64 {
        match self.link {
            Link::Up { address: held, .. } if held == address => {}
            Link::Down => tracing::info!(%address, "issuer reachable again"),
            _ => tracing::info!(%address, "connected to the issuer"),
        }
        self.generation += 1;
        self.link = Link::Up {
            address,
            generation: self.generation,
        };
        self.avoid = None;
        self.retry_at = None;
        self.backoff.reset();
        self.generation
    }

    /// No candidate answered at `now`.
    fn failed(&mut self, failure: String, now: Instant) {
        let delay = self.backoff.next_delay((self.random)());
        if self.link != Link::Down {
            tracing::warn!(tried = %failure, "the issuer is unreachable; retrying with backoff");
        } else {
            tracing::debug!(tried = %failure, retry_in = ?delay, "the issuer is still unreachable");
        }
        self.link = Link::Down;
        self.retry_at = Some(now + delay);
    }

    /// The replica at `address` ended connection `generation` at `now`.
    fn ended(&mut self, address: SocketAddr, generation: u64, error: String, now: Instant) {
        if self.link
            != (Link::Up {
                address,
                generation,
            })
        {
            return;
        }
        let delay = self.backoff.next_delay((self.random)());
        tracing::info!(%address, %error, retry_in = ?delay, "the issuer connection ended; reconnecting");
        self.link = Link::Ended { address };
        self.avoid = Some(address);
        self.retry_at = Some(now + delay);
    }
}

impl IssuerPool {
    /// A pool over `addresses`, resolved by the system and jittered by the
    /// system's random numbers.
    pub fn new(addresses: IssuerAddresses) -> Arc<Self> {
        Self::with(addresses, Arc::new(SystemResolver), Box::new(system_random))
    }

    /// A pool with its resolver and random source given.
    pub fn with(
        addresses: IssuerAddresses,
        resolver: Arc<dyn Resolve>,
        random: RandomSource,
    ) -> Arc<Self> {
        Arc::new(IssuerPool {
            addresses,
            resolver,
            state: Mutex::new(State::new(random)),
            connected: tokio::sync::Notify::new(),
        })
    }

    pub fn addresses(&self) -> &IssuerAddresses {
        &self.addresses
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("issuer pool state")
    }

    pub fn link(&self) -> Link {
        self.state().link
    }

    /// Whether a connection to some replica is open: a call failing now is
    /// the issuer's answer, not an outage.
    pub fn is_up(&self) -> bool {
        matches!(self.link(), Link::Up { .. })
    }

    /// How long until the delay after the last failure is over.
    pub fn retry_in(&self) -> Option<Duration> {
        self.state().wait(Instant::now())
    }

    /// Waits out the delay after the last failure, or until some call has
    /// made a connection meanwhile.
    pub async fn ready(&self) {
        let connected = self.connected.notified();
        if let Some(wait) = self.retry_in() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = connected => {}
            }
        }
    }

    /// Connects to a replica with `connect` (TCP and TLS to one socket
    /// address): the candidates in turn until one answers.
    pub async fn dial<S, F, Fut>(self: &Arc<Self>, connect: F) -> io::Result<Watched<S>>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<S>>,
    {
        let resolved = resolve_all(&self.addresses, &*self.resolver).await;
        let order = self.state().order(&resolved.candidates);
        let timeout = (order.len() > 1).then_some(CANDIDATE_TIMEOUT);
        let mut attempts: Vec<(String, io::Error)> = resolved
            .failures
            .into_iter()
            .map(|(address, error)| (address.to_string(), error))
            .collect();
        for address in order {
            let connected = match timeout {
                Some(limit) => tokio::time::timeout(limit, connect(address))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no answer within {limit:?}"),
                        ))
                    }),
                None => connect(address).await,
            };
            match connected {
                Ok(stream) => {
                    let generation = self.state().connected(address);
                    self.connected.notify_waiters();
                    return Ok(Watched::new(stream, self.clone(), address, generation));
                }
                Err(error) => attempts.push((address.to_string(), error)),
            }
        }
        self.state().failed(describe(&attempts), Instant::now());
        match attempts.len() {
            // One address, one error: as it always read.
            1 => Err(attempts.pop().expect("one attempt").1),
            _ => Err(io::Error::other(Unreachable { attempts })),
        }
    }

    fn ended(&self, address: SocketAddr, generation: u64, error: Option<&io::Error>) {
        let error = error.map_or_else(|| "closed by the issuer".to_owned(), ToString::to_string);
        self.state()
            .ended(address, generation, error, Instant::now());
    }
}

fn system_random() -> u32 {
    let mut bytes = [0u8; 4];
    // On failure the zeros still make a valid (unjittered) delay.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests;
