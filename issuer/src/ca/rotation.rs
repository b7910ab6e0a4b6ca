//! When to prepare, activate and retire signing keys, as pure functions of time.
//!
//! The scheme follows SPIRE: a key is *prepared* (created and published in the
//! bundle, so every verifier learns it early) once the active key has lived half
//! its lifetime, *activated* once the active key has lived five sixths of it,
//! and the previous key is kept in the bundle until its own expiry, which is
//! after everything it signed has expired because nothing outlives its signer.
//! Publishing well ahead of use follows SPIFFE_Trust_Domain_and_Bundle.md
//! section 6.2 and appendix A: consumers only refresh every refresh hint.

use std::time::{Duration, SystemTime};

/// Lifetime of one key or CA certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Lifetime {
    fn fraction(&self, numerator: u32, denominator: u32) -> SystemTime {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + total * numerator / denominator
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The moment a successor to `active` should be prepared.
pub fn prepare_at(active: &Lifetime) -> SystemTime {
    active.fraction(1, 2)
}

/// The moment the prepared successor should replace `active`.
pub fn activate_at(active: &Lifetime) -> SystemTime {
    active.fraction(5, 6)
}

/// How long before its first use a key is published: from preparation (half
/// the active key's lifetime) to activation (five sixths), a third of the
/// lifetime.
pub fn publication_lead(lifetime: Duration) -> Duration {
    lifetime / 3
}

/// How many refresh hints at least must pass between a key's publication and
/// its first use, so a relying party that refreshes at the hint, and misses
/// a fetch or two, still holds the key before anything it signed arrives.
pub const HINTS_BEFORE_USE: u32 = 3;

/// What a slot of keys needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No usable active key: make one and use it at once.
    Bootstrap,
    /// Make the successor and publish it.
    Prepare,
    /// Switch to the prepared successor.
    Activate,
    /// Nothing to do.
    Idle,
}

/// Decides the next step for a slot with `active` and maybe a `prepared` key.
pub fn next_step(now: SystemTime, active: Option<&Lifetime>, prepared: Option<&Lifetime>) -> Step {
    let Some(active) = active else {
        return match prepared {
            Some(_) => Step::Activate,
            None => Step::Bootstrap,
        };
    };
    match prepared {
        None if active.expired(now) => Step::Bootstrap,
        None if now >= prepare_at(active) => Step::Prepare,
        Some(_) if now >= activate_at(active) => Step::Activate,
        _ => Step::Idle,
    }
}

/// Caps a requested certificate or token lifetime so it ends no later than its
/// signer. Returns the expiry and whether it was shortened.
pub fn capped_expiry(
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> (SystemTime, bool) {
    let wanted = now + ttl;
    if wanted > signer_not_after {
        (signer_not_after, true)
    } else {
        (wanted, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn life(start: u64, secs: u64) -> Lifetime {
        Lifetime {
            not_before: UNIX_EPOCH + Duration::from_secs(start),
            not_after: UNIX_EPOCH + Duration::from_secs(start + secs),
        }
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn steps_over_a_lifetime() {
        let active = life(0, 600);
        let next = life(300, 600);
        assert_eq!(next_step(t(0), None, None), Step::Bootstrap);
        assert_eq!(next_step(t(0), Some(&active), None), Step::Idle);
        assert_eq!(next_step(t(299), Some(&active), None), Step::Idle);
        assert_eq!(next_step(t(300), Some(&active), None), Step::Prepare);
        assert_eq!(next_step(t(499), Some(&active), Some(&next)), Step::Idle);
        assert_eq!(
            next_step(t(500), Some(&active), Some(&next)),
            Step::Activate
        );
        assert_eq!(next_step(t(600), Some(&active), None), Step::Bootstrap);
        assert_eq!(next_step(t(700), None, Some(&next)), Step::Activate);
    }

    #[test]
    fn expiry_is_capped_by_the_signer() {
        assert_eq!(
            capped_expiry(t(0), Duration::from_secs(10), t(100)),
            (t(10), false)
        );
        assert_eq!(
            capped_expiry(t(95), Duration::from_secs(10), t(100)),
            (t(100), true)
        );
    }
}
