use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use tokio::io::{AsyncReadExt, DuplexStream};

use super::resolve::tests::Table;
use super::*;

fn at(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Random numbers from a fixed list, repeated.
fn fixed(values: &[u32]) -> RandomSource {
    let values = values.to_vec();
    let mut next = 0;
    Box::new(move || {
        next += 1;
        values[(next - 1) % values.len()]
    })
}

fn pool(addresses: &str, table: Table, random: &[u32]) -> Arc<IssuerPool> {
    IssuerPool::with(addresses.parse().unwrap(), Arc::new(table), fixed(random))
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
}

/// Replicas in memory: the live ones accept, handing this side's stream
/// back and keeping the replica's end so a test can close it.
#[derive(Default)]
struct Replicas {
    live: StdMutex<Vec<SocketAddr>>,
    tried: StdMutex<Vec<SocketAddr>>,
    accepted: StdMutex<Vec<(SocketAddr, DuplexStream)>>,
}

impl Replicas {
    fn with_live(live: &[SocketAddr]) -> Arc<Self> {
        let replicas = Arc::new(Replicas::default());
        *replicas.live.lock().unwrap() = live.to_vec();
        replicas
    }

    fn connect(self: &Arc<Self>) -> impl Fn(SocketAddr) -> BoxedConnect {
        let replicas = self.clone();
        move |address| {
            let replicas = replicas.clone();
            Box::pin(async move {
                replicas.tried.lock().unwrap().push(address);
                if !replicas.live.lock().unwrap().contains(&address) {
                    return Err(refused());
                }
                let (agent_side, replica_side) = tokio::io::duplex(64);
                replicas
                    .accepted
                    .lock()
                    .unwrap()
                    .push((address, replica_side));
                Ok(agent_side)
            })
        }
    }

    fn tried(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *self.tried.lock().unwrap())
    }

    /// The replica at `address` dies: it stops accepting and its
    /// connections close.
    fn kill(&self, address: SocketAddr) {
        self.live.lock().unwrap().retain(|a| *a != address);
        self.accepted.lock().unwrap().retain(|(a, _)| *a != address);
    }
}

type BoxedConnect =
    std::pin::Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send + 'static>>;

fn two_replicas() -> (SocketAddr, SocketAddr, Table) {
    let (a, b) = (at("10.0.0.1:8081"), at("10.0.0.2:8081"));
    let table = Table(HashMap::from([
        ("10.0.0.1:8081", vec![a]),
        ("10.0.0.2:8081", vec![b]),
        ("issuer.example:8081", vec![a, b]),
    ]));
    (a, b, table)
}

#[tokio::test]
async fn a_dead_replica_is_passed_over_and_an_ended_connection_moves_on() {
    let (a, b, table) = two_replicas();
    // Random 0: start at the first candidate, and no delay.
    let pool = pool("10.0.0.1:8081,10.0.0.2:8081", table, &[0]);
    let replicas = Replicas::with_live(&[a, b]);
    let mut first = pool.dial(replicas.connect()).await.unwrap();
    assert_eq!(first.address(), a);
    assert_eq!(replicas.tried(), [a]);
    assert!(pool.is_up());

    // Replica a dies: reading finds the end, and the next attempt tries b
    // first and a last.
    replicas.kill(a);
    let mut byte = [0u8; 1];
    assert_eq!(first.read(&mut byte).await.unwrap(), 0);
    assert_eq!(pool.link(), Link::Ended { address: a });
    let second = pool.dial(replicas.connect()).await.unwrap();
    assert_eq!(second.address(), b);
    assert_eq!(replicas.tried(), [b]);

    // A fresh channel (after renewal, say) stays on the replica in use.
    let third = pool.dial(replicas.connect()).await.unwrap();
    assert_eq!(third.address(), b);
    assert_eq!(replicas.tried(), [b]);
    // Only the newest connection's end counts: the older one closing is a
    // replaced channel, not a failure.
    let mut second = second;
    replicas.accepted.lock().unwrap().remove(0);
    assert_eq!(second.read(&mut byte).await.unwrap(), 0);
    assert_eq!(
        pool.link(),
        Link::Up {
            address: b,
            generation: 3
        }
    );
    assert_eq!(pool.retry_in(), None);
}

#[tokio::test]
async fn a_name_with_two_records_is_two_replicas() {
    let (a, b, table) = two_replicas();
    let pool = pool("issuer.example:8081", table, &[0]);
    let replicas = Replicas::with_live(&[b]);
    let connected = pool.dial(replicas.connect()).await.unwrap();
    assert_eq!(connected.address(), b);
    assert_eq!(replicas.tried(), [a, b]);
}

#[tokio::test]
async fn when_all_are_down_the_error_names_every_address_until_one_answers() {
    let (a, b, table) = two_replicas();
    // Random u32::MAX: the longest delay, and start at the second candidate.
    let pool = pool("10.0.0.1:8081,10.0.0.2:8081", table, &[u32::MAX]);
    let replicas = Replicas::with_live(&[]);
    let error = pool.dial(replicas.connect()).await.err().unwrap();
    let message = error.to_string();
    assert!(
        message.starts_with("no issuer address answered: 10.0.0.2:8081: connection refused; 10.0.0.1:8081: connection refused"),
        "{message}"
    );
    let unreachable = error
        .get_ref()
        .unwrap()
        .downcast_ref::<Unreachable>()
        .unwrap();
    assert_eq!(
        unreachable.addresses().collect::<Vec<_>>(),
        ["10.0.0.2:8081", "10.0.0.1:8081"]
    );
    assert_eq!(replicas.tried(), [b, a]);
    assert_eq!(pool.link(), Link::Down);

    // The entry stream waits out the delay; a call made meanwhile still
    // dials, and its success ends the wait.
    let wait = pool.retry_in().expect("a delay");
    assert!(wait <= backoff::FIRST_WINDOW, "{wait:?}");
    replicas.live.lock().unwrap().push(a);
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move {
            let started = Instant::now();
            pool.ready().await;
            started.elapsed()
        }
    });
    tokio::task::yield_now().await;
    let connected = pool.dial(replicas.connect()).await.unwrap();
    assert_eq!(connected.address(), a);
    assert_eq!(replicas.tried(), [b, a]);
    let waited = waiting.await.unwrap();
    assert!(waited < wait, "{waited:?} < {wait:?}");
    assert!(pool.is_up());
}

#[tokio::test]
async fn one_address_fails_with_its_own_error() {
    let table = Table(HashMap::from([(
        "127.0.0.1:8081",
        vec![at("127.0.0.1:8081")],
    )]));
    let pool = pool("127.0.0.1:8081", table, &[0]);
    let replicas = Replicas::with_live(&[]);
    let error = pool.dial(replicas.connect()).await.err().unwrap();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(error.to_string(), "connection refused");
}

#[tokio::test]
async fn an_unresolvable_name_is_named() {
    let (a, _, table) = two_replicas();
    let pool = pool("gone.example:8081,10.0.0.1:8081", table, &[0]);
    let replicas = Replicas::with_live(&[]);
    let message = pool
        .dial(replicas.connect())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("gone.example:8081: no such host") && message.contains("10.0.0.1:8081"),
        "{message}"
    );
    assert_eq!(replicas.tried(), [a]);
}

#[test]
fn delays_follow_the_backoff_and_a_connection_resets_it() {
    let t0 = Instant::now();
    let (a, b) = (at("10.0.0.1:8081"), at("10.0.0.2:8081"));
    let mut state = State::new(fixed(&[u32::MAX]));
    assert_eq!(state.wait(t0), None, "the first attempt is immediate");
    let generation = state.connected(a);

    // The replica ends the connection: the first retry within 1 s.
    state.ended(a, generation, "reset".into(), t0);
    let first = state.wait(t0).unwrap();
    assert!(first < Duration::from_secs(1) && first > Duration::from_millis(999));
    assert_eq!(state.order(&[a, b]), [b, a]);

    // Then every attempt fails: windows double up to the cap.
    let mut now = t0 + first;
    for window_ms in [2000, 4000, 4000, 4000] {
        assert_eq!(state.wait(now), None);
        state.failed("all refused".into(), now);
        let wait = state.wait(now).unwrap();
        assert!(wait < Duration::from_millis(window_ms), "{wait:?}");
        assert!(wait > Duration::from_millis(window_ms - 1), "{wait:?}");
        now += wait;
    }
    assert_eq!(state.link, Link::Down);

    // A replica answers: no delay, and the next end starts from 1 s again.
    let generation = state.connected(b);
    assert_eq!(state.wait(now), None);
    state.ended(b, generation, "closed".into(), now);
    assert!(state.wait(now).unwrap() < Duration::from_secs(1));
    // An end reported twice, or for an older connection, changes nothing.
    let before = state.retry_at;
    state.ended(b, generation, "closed".into(), now + Duration::from_secs(3));
    state.ended(a, 1, "closed".into(), now + Duration::from_secs(3));
    assert_eq!(state.retry_at, before);
}
