//! The store on a real PostgreSQL server (a throwaway cluster from Debian's
//! package, see `sigil_tests::postgres`), shared by several stores as
//! replicas share it: changes reach the other replicas by LISTEN/NOTIFY, a
//! dropped notification connection catches up, writers from two replicas
//! queue rather than clash, and an issuer on PostgreSQL serves agents
//! without its database password reaching its logs.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigil_issuer::store::{EntryFields, ForeignBundle, Selector, Store};
use sigil_tests::postgres::Postgres;
use sigil_tests::{free_port, TestNode};

fn entry(spiffe_id: &str) -> EntryFields {
    EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: "spiffe://example.org/agent/x".into(),
        selectors: vec![Selector::new("unix", "uid:1000")],
        ..EntryFields::default()
    }
}

/// Waits for the next change `changes` sees, and says how long it took.
async fn next_change(changes: &mut tokio::sync::watch::Receiver<u64>, what: &str) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap_or_else(|_| panic!("{what}: no change seen within 5 s"))
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_on_one_replica_reaches_another_without_polling() {
    let pg = Postgres::start();
    let url = pg.create_database("push");
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    let mut b_changes = b.subscribe();
    // A store is handed out already listening: nothing has changed yet.
    assert!(!b_changes.has_changed().unwrap());

    let start = Instant::now();
    let created = a
        .create_entry(&entry("spiffe://example.org/web"), 1)
        .await
        .unwrap();
    next_change(&mut b_changes, "an entry created on a").await;
    println!(
        "an entry created on a was seen by b {:?} after the create began",
        start.elapsed()
    );
    assert_eq!(b.get_entry(&created.id).await.unwrap(), created);

    let version = b.foreign_bundles_version();
    a.put_foreign_bundle(
        &ForeignBundle {
            trust_domain: "partner.example".into(),
            bundle: r#"{"keys":[]}"#.into(),
            sequence: 1,
            origin: sigil_issuer::store::BundleOrigin::Operator,
            updated_at: 1,
        },
        false,
    )
    .await
    .unwrap();
    next_change(&mut b_changes, "a foreign bundle stored on a").await;
    assert!(b.foreign_bundles_version() > version);

    // A write that changes nothing is not announced.
    b_changes.mark_unchanged();
    let clash = a.create_entry(&entry("spiffe://example.org/web"), 2).await;
    assert!(clash.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_changes.has_changed().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_notification_connection_catches_up() {
    let pg = Postgres::start();
    let url = pg.create_database("catch_up");
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    let mut b_changes = b.subscribe();

    // Cut every listening session (a's and b's) from the server side.
    let cut = pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%'",
    );
    assert_eq!(cut, "2", "both replicas were listening");
    // Nothing was written, yet b's streams are told to read again: what
    // was committed while it was not listening is not lost.
    let took = next_change(&mut b_changes, "catch-up after the cut").await;
    println!("b caught up {took:?} after its listener was cut");

    b_changes.mark_unchanged();
    a.create_entry(&entry("spiffe://example.org/after"), 1)
        .await
        .unwrap();
    next_change(&mut b_changes, "an entry created after the cut").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_on_two_replicas_queue_rather_than_clash() {
    let pg = Postgres::start();
    let url = pg.create_database("writers");
    let a = Arc::new(Store::open(&url).await.unwrap());
    let b = Arc::new(Store::open(&url).await.unwrap());
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.spawn(async move {
            store
                .create_entry(&entry(&format!("spiffe://example.org/w/{i}")), i)
                .await
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap().unwrap();
    }
    let entries = a.list_entries(None, None).await.unwrap();
    assert_eq!(entries.len(), 40);
    // Registration order is one sequence with no repeats or gaps.
    let sequences: Vec<i64> = entries.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_on_postgres_serves_an_agent() {
    let pg = Postgres::start();
    let url = pg.create_database("issuer");
    let node = TestNode::start_with(|config| config.database_url = url).await;
    let entry = node
        .register("spiffe://example.org/on-postgres", 0, "")
        .await;
    node.wait_for_entry(&entry.id).await;
    let held = pg.psql_in(
        &pg.url().replace("/postgres", "/issuer"),
        "SELECT spiffe_id FROM entries",
    );
    assert_eq!(held, "spiffe://example.org/on-postgres");
}

/// Runs `sigil-issuer run` on `database_url` until it logs `needle` or
/// exits; returns (still running, stderr so far).
fn run_issuer_until(database_url: &str, needle: &str) -> (bool, String) {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child =
        sigil_tests::issuer_process::issuer_run(dir.path(), "127.0.0.1:0", "127.0.0.1:0")
            .args(["--log-format", "text"])
            .env("SIGIL_DATABASE_URL", database_url)
            .env("SIGIL_LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
            let _ = tx.send(text.clone());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(text) = rx.recv_timeout(Duration::from_millis(100)) {
            seen = text;
        }
        if seen.contains(needle) {
            let _ = child.kill();
            let _ = child.wait();
            return (true, seen);
        }
        if child.try_wait().unwrap().is_some() {
            while let Ok(text) = rx.recv_timeout(Duration::from_millis(200)) {
                seen = text;
            }
            return (false, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the issuer neither logged {needle:?} nor exited: {seen}");
}

#[test]
fn the_database_password_never_reaches_the_logs() {
    let pg = Postgres::start();
    pg.create_database("secret");
    // The cluster trusts local connections, so any password gets in.
    let with_password = pg
        .url()
        .replace("sigil@", "sigil:hunter2@")
        .replace("/postgres", "/secret");
    let (running, log) = run_issuer_until(&with_password, "store open");
    assert!(running, "{log}");
    assert!(log.contains("sigil:***@"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");

    // Unreachable: the error names the database, redacted, and exits.
    let nowhere = format!("postgres://sigil:hunter2@127.0.0.1:{}/secret", free_port());
    let (running, log) = run_issuer_until(&nowhere, "never logged");
    assert!(!running);
    assert!(
        log.contains(&nowhere.replace("hunter2", "***")),
        "the error names the database: {log}"
    );
    assert!(!log.contains("hunter2"), "{log}");

    // A URL the issuer cannot use is refused by key, without echoing it.
    let (running, log) = run_issuer_until("mysql://root:hunter2@db/sigil", "never logged");
    assert!(!running);
    assert!(log.contains("database_url"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}
