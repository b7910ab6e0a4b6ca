//! A TCP forwarder in front of a server, standing in for one replica of it:
//! a test kills it as a replica dies, so that it stops listening (new
//! connections are refused) and resets every connection it forwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running forwarder to one target.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where the proxy listens.
    pub address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    first_accepted_at: Arc<Mutex<Option<Instant>>>,
    kill: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let first_accepted_at = Arc::new(Mutex::new(None));
        let (kill, killed) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            target,
            accepted.clone(),
            first_accepted_at.clone(),
            killed,
        ));
        TcpProxy {
            address,
            accepted,
            first_accepted_at,
            kill,
            task: Mutex::new(Some(task)),
        }
    }

    /// How many connections the proxy has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// When the proxy accepted its first connection, if it has.
    pub fn first_accepted_at(&self) -> Option<Instant> {
        *self.first_accepted_at.lock().unwrap()
    }

    /// Dies: the port is closed and every forwarded connection is reset
    /// (RST, not a graceful close) on the client's side. Returns once done.
    pub async fn kill(&self) {
        self.kill.send_replace(true);
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.await.unwrap();
        }
    }
}

async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    accepted: Arc<AtomicUsize>,
    first_accepted_at: Arc<Mutex<Option<Instant>>>,
    mut killed: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let inbound = tokio::select! {
            inbound = listener.accept() => inbound,
            _ = killed.wait_for(|k| *k) => break,
        };
        let Ok((inbound, _)) = inbound else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        first_accepted_at
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        connections.spawn(forward(inbound, target, killed.clone()));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Copies both ways until either side closes or the proxy is killed; when
/// killed, resets the client's connection.
async fn forward(mut inbound: TcpStream, target: SocketAddr, mut killed: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = killed.wait_for(|k| *k) => {
            // A zero linger makes closing send RST, as a dead peer's kernel would.
            let _ = inbound.set_zero_linger();
        }
    }
}
