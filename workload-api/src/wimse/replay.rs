//! The per-sender replay window: each WPT `jti` is accepted once until the
//! WPT expires. Memory is bounded: a sender holds at most `per_sender`
//! unexpired `jti`s and at most `senders` senders are tracked; past either
//! bound new proofs are refused rather than old ones forgotten, so a replay
//! can never slip through an eviction.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Bounds of a [`ReplayWindow`].
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub per_sender: usize,
    pub senders: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            per_sender: 100_000,
            senders: 10_000,
        }
    }
}

/// What the window said about a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First use: recorded.
    Fresh,
    /// Seen before and not yet expired.
    Replayed,
    /// The sender (or the window) is full of unexpired proofs.
    Full,
}

/// `jti`s seen per sender, each kept until its expiry. `jti`s are stored as
/// 64-bit keyed hashes: a collision costs one legitimate proof a refusal
/// with odds near 2^-64 per pair, never a replay let through.
#[derive(Debug)]
pub struct ReplayWindow {
    limits: ReplayLimits,
    hasher: RandomState,
    senders: Mutex<HashMap<String, Sender>>,
}

#[derive(Debug, Default)]
struct Sender {
    seen: HashMap<u64, u64>,
    /// (expiry, jti hash) in arrival order, for pruning.
    expiries: VecDeque<(u64, u64)>,
}

impl Sender {
    fn prune(&mut self, now: u64) {
        // Arrival order is close to expiry order for one sender; anything
        // out of order is pruned on a later pass.
        while let Some(&(exp, hash)) = self.expiries.front() {
            if exp > now {
                break;
            }
            self.expiries.pop_front();
            if self.seen.get(&hash) == Some(&exp) {
                self.seen.remove(&hash);
            }
        }
    }
}

impl ReplayWindow {
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayWindow {
            limits,
            hasher: RandomState::new(),
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// Records `jti` from `sender`, valid until `expires` (Unix seconds,
    /// skew included), unless it was seen before.
    pub fn admit(&self, sender: &str, jti: &str, expires: u64, now: u64) -> Admission {
        let hash = self.hasher.hash_one(jti);
        let mut senders = self.senders.lock().expect("replay window");
        if !senders.contains_key(sender) {
            if senders.len() >= self.limits.senders {
                senders.retain(|_, s| {
                    s.prune(now);
                    !s.seen.is_empty()
                });
            }
            if senders.len() >= self.limits.senders {
                return Admission::Full;
            }
            senders.insert(sender.to_owned(), Sender::default());
        }
        let entry = senders.get_mut(sender).expect("inserted above");
        entry.prune(now);
        if let Some(&exp) = entry.seen.get(&hash) {
            if exp > now {
                return Admission::Replayed;
            }
        }
        if entry.seen.len() >= self.limits.per_sender {
            return Admission::Full;
        }
        entry.seen.insert(hash, expires);
        entry.expiries.push_back((expires, hash));
        Admission::Fresh
    }

    /// How many `jti`s are held, over all senders.
    pub fn len(&self) -> usize {
        let senders = self.senders.lock().expect("replay window");
        senders.values().map(|s| s.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_per_sender_until_it_expires() {
        let window = ReplayWindow::new(ReplayLimits::default());
        assert_eq!(window.admit("a", "j1", 110, 100), Admission::Fresh);
        assert_eq!(window.admit("a", "j1", 110, 105), Admission::Replayed);
        // Another sender's jti space is its own.
        assert_eq!(window.admit("b", "j1", 110, 105), Admission::Fresh);
        // Past its expiry the entry is gone (the WPT itself is refused as
        // expired before the window is asked).
        assert_eq!(window.admit("a", "j2", 130, 111), Admission::Fresh);
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn memory_is_bounded_and_full_means_refused() {
        let window = ReplayWindow::new(ReplayLimits {
            per_sender: 3,
            senders: 2,
        });
        for jti in ["1", "2", "3"] {
            assert_eq!(window.admit("a", jti, 200, 100), Admission::Fresh);
        }
        assert_eq!(window.admit("a", "4", 200, 100), Admission::Full);
        assert_eq!(window.admit("b", "1", 150, 100), Admission::Fresh);
        assert_eq!(window.admit("c", "1", 200, 100), Admission::Full);
        // Once b's proofs expire, its slot is reclaimed for c.
        assert_eq!(window.admit("c", "1", 300, 160), Admission::Fresh);
        assert_eq!(window.admit("a", "1", 300, 201), Admission::Fresh);
        assert!(window.len() <= 3 + 3);
    }
}
