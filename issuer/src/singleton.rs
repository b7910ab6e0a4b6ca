//! Jobs that must run on one replica at a time (pruning, and whatever else
//! replicas would otherwise do twice): a database lease, renewed often so
//! that another replica takes over within seconds of its holder's death.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// How long a lease lasts unless renewed.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it, and how often others try to take it:
/// a dead holder's job moves within `LEASE_TTL + RENEW_EVERY`.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Holds the lease `name` for `holder` whenever it can, until shutdown.
/// The receiver says whether this process holds it now.
pub fn hold(
    store: Store,
    name: &'static str,
    holder: String,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (holds, receiver) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let now_ms = crate::clock::unix_millis_now();
            let held = match store
                .hold_lease(name, &holder, now_ms, now_ms + LEASE_TTL.as_millis() as i64)
                .await
            {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, lease = name, "cannot renew a lease; giving up the job");
                    false
                }
            };
            holds.send_if_modified(|current| {
                let changed = *current != held;
                if changed {
                    tracing::info!(lease = name, holds = held, "singleton lease");
                }
                *current = held;
                changed
            });
            let stop = tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stop {
                let held = *holds.borrow();
                if held {
                    let _ = store.release_lease(name, &holder).await;
                }
                return;
            }
        }
    });
    receiver
}

/// A job [`run_while_held`] starts and stops.
pub type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs the jobs `make` makes while this replica holds the lease `name`:
/// they stop when the lease is lost and are made anew when it is taken
/// back, so two replicas never run them at once for longer than a lease.
pub async fn run_while_held(
    store: Store,
    name: &'static str,
    holder: String,
    make: impl Fn() -> Vec<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut holds = hold(store, name, holder, shutdown.clone());
    loop {
        let take = tokio::select! {
            held = holds.wait_for(|held| *held) => held.is_ok(),
            _ = shutdown.wait_for(|stop| *stop) => false,
        };
        if !take {
            return;
        }
        let mut jobs = tokio::task::JoinSet::new();
        for job in make() {
            jobs.spawn(job);
        }
        let stop = tokio::select! {
            _ = holds.wait_for(|held| !*held) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        jobs.shutdown().await;
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A job that counts itself running while it runs.
    fn counting(running: Arc<AtomicUsize>) -> impl Fn() -> Vec<Job> {
        move || {
            let running = running.clone();
            let job: Job = Box::pin(async move {
                running.fetch_add(1, Ordering::SeqCst);
                let _undo = scopeguard(running);
                std::future::pending::<()>().await;
            });
            vec![job]
        }
    }

    /// Counts the job down when it is stopped (dropped).
    fn scopeguard(running: Arc<AtomicUsize>) -> impl Drop {
        struct Undo(Arc<AtomicUsize>);
        impl Drop for Undo {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Undo(running)
    }

    #[tokio::test]
    async fn one_replica_runs_the_jobs_and_another_takes_over_when_it_stops() {
        let (_dir, store) = crate::store::temp_store().await;
        let running = Arc::new(AtomicUsize::new(0));
        let (stop_a, shutdown_a) = watch::channel(false);
        let (_stop_b, shutdown_b) = watch::channel(false);
        let a = tokio::spawn(run_while_held(
            store.clone(),
            "job",
            "a".into(),
            counting(running.clone()),
            shutdown_a,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::spawn(run_while_held(
            store.clone(),
            "job",
            "b".into(),
            counting(running.clone()),
            shutdown_b,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "one holder runs the job");
        stop_a.send(true).unwrap();
        a.await.unwrap();
        // a gave the lease up; b takes it at its next try.
        let deadline = tokio::time::Instant::now() + LEASE_TTL + RENEW_EVERY;
        while running.load(Ordering::SeqCst) != 1 || !b_holds(&store).await {
            assert!(tokio::time::Instant::now() < deadline, "b never took over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn b_holds(store: &Store) -> bool {
        let now = crate::clock::unix_millis_now();
        // Asking as a third holder fails while b holds a live lease.
        !store.hold_lease("job", "c", now, now + 1).await.unwrap()
    }
}
