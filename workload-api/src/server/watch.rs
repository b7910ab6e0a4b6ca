//! A Workload API stream between messages: what it last sent (as a
//! fingerprint, not a copy), and when it must look again (a new snapshot,
//! or one of its SVIDs expiring).

use super::*;

/// What a caller would be sent at one moment.
#[derive(Debug)]
pub(super) enum View<T> {
    /// This message.
    Ready(T),
    /// Entitled SVIDs are still being minted.
    Pending,
    /// Every SVID the caller is entitled to has expired and none is being
    /// minted: nothing may be served.
    Expired,
}

/// What a caller's view depends on at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    /// A hash of what the caller sees: entries, serials of the SVIDs still
    /// valid, bundle sequences.
    pub(super) hash: u64,
    /// When the first SVID in view expires, which changes the view.
    pub(super) next_expiry: Option<SystemTime>,
}

impl Fingerprint {
    pub(super) fn of(hasher: impl std::hash::Hasher) -> Self {
        Fingerprint {
            hash: hasher.finish(),
            next_expiry: None,
        }
    }
}

/// A stream's state between messages.
pub(super) struct Watch<S, T, R, P, D> {
    pub(super) first: Option<T>,
    pub(super) snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub(super) selectors: Selectors,
    pub(super) render: R,
    pub(super) fingerprint: P,
    /// Names the credentials a Ready view hands over.
    pub(super) deliver: D,
    pub(super) caller: Admitted,
    /// Asked for the outage when everything has expired.
    pub(super) source: Arc<S>,
    /// The fingerprint of the last message sent; `None` before the first.
    pub(super) last: Option<u64>,
    /// When the first SVID in view expires (wall clock).
    pub(super) next_expiry: Option<SystemTime>,
    pub(super) started: tokio::time::Instant,
    pub(super) ended: bool,
}

impl<S, T, R, P, D> Watch<S, T, R, P, D>
where
    S: IdentitySource,
    R: Fn(&Snapshot, &[Selector], SystemTime) -> Result<View<T>, Status>,
    P: Fn(&Snapshot, &[Selector], SystemTime) -> Fingerprint,
    D: Fn(&Snapshot, &[Selector], SystemTime) -> Vec<Delivered>,
{
    /// The next message: at once for the first, then on the next change the
    /// caller can see. `None` ends the stream.
    pub(super) async fn next(&mut self) -> Option<Result<T, Status>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        loop {
            // Expiry is a wall-clock time; the sleep is monotonic and
            // capped, so a clock that jumps forward is noticed promptly.
            let expiry_in = self.next_expiry.map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(EXPIRY_POLL)
            });
            let changed = tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    true
                }
                _ = tokio::time::sleep_until(self.started + MINT_WAIT), if self.last.is_none() => true,
                _ = tokio::time::sleep(expiry_in.unwrap_or_default()), if expiry_in.is_some() => false,
            };
            let now = SystemTime::now();
            if !changed && self.next_expiry.is_some_and(|at| now < at) {
                continue;
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(reason) = &snapshot.refused {
                self.ended = true;
                return Some(Err(Status::permission_denied(reason.to_string())));
            }
            let print = (self.fingerprint)(&snapshot, &self.selectors, now);
            self.next_expiry = print.next_expiry;
            if self.last == Some(print.hash) {
                continue;
            }
            match (self.render)(&snapshot, &self.selectors, now) {
                Ok(View::Ready(message)) => {
                    self.last = Some(print.hash);
                    let delivered = (self.deliver)(&snapshot, &self.selectors, now);
                    self.caller.report(self.source.as_ref(), delivered);
                    return Some(Ok(message));
                }
                Ok(View::Pending) if self.last.is_none() && self.started.elapsed() >= MINT_WAIT => {
                    self.ended = true;
                    return Some(Err(Status::unavailable("SVIDs are not minted yet; retry")));
                }
                Ok(View::Pending) => {}
                Ok(View::Expired) => {
                    self.ended = true;
                    return Some(Err(all_expired(self.source.issuer_outage(), now)));
                }
                Err(status) => {
                    self.ended = true;
                    return Some(Err(status));
                }
            }
        }
    }
}
