//! When to try the issuer again and in which order: pure rules, with the
//! random numbers passed in.
//!
//! A replica's death drops all its agents at the same instant. The first
//! retry is therefore spread uniformly over [`FIRST_WINDOW`]; each further
//! failed attempt doubles the window ("full jitter": the delay is uniform in
//! the window) up to [`MAX_WINDOW`], which stays below the 5 s within which an
//! agent must be back on a live replica. The first replica tried is random,
//! so agents spread across replicas.

use std::net::SocketAddr;
use std::time::Duration;

/// The window of the first retry after a connection ends.
pub const FIRST_WINDOW: Duration = Duration::from_secs(1);
/// The largest window: once some replica answers, an agent reaches it
/// within this, plus the time one attempt takes.
pub const MAX_WINDOW: Duration = Duration::from_secs(4);

/// Exponential backoff with full jitter.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    /// Failed attempts since the last success.
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, `random` being uniform over `u32`;
    /// each call counts one more failure.
    pub fn next_delay(&mut self, random: u32) -> Duration {
        let window = self.window();
        self.failures = self.failures.saturating_add(1);
        uniform_below(window, random)
    }

    /// The window the next delay is drawn from.
    pub fn window(&self) -> Duration {
        FIRST_WINDOW
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_WINDOW)
    }

    /// A connection was made: the next failure starts from the first window.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `random / 2^32` of `window`: in `[0, window)`.
fn uniform_below(window: Duration, random: u32) -> Duration {
    let nanos = (window.as_nanos() * u128::from(random)) >> 32;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The order to try `candidates` in: from `prefer` (the replica in use) when
/// it is still a candidate, else from the one after `avoid` (the replica
/// whose connection just ended, which so comes last), else from a random one.
pub fn rotation(
    candidates: &[SocketAddr],
    prefer: Option<SocketAddr>,
    avoid: Option<SocketAddr>,
    random: u32,
) -> Vec<SocketAddr> {
    let count = candidates.len();
    if count == 0 {
        return Vec::new();
    }
    let position = |wanted: Option<SocketAddr>| {
        wanted.and_then(|wanted| candidates.iter().position(|c| *c == wanted))
    };
    let start = position(prefer)
        .or_else(|| position(avoid).map(|i| i + 1))
        .unwrap_or(random as usize % count);
    (0..count)
        .map(|i| candidates[(start + i) % count])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_a_doubling_window_capped_below_five_seconds() {
        let mut lowest = Backoff::default();
        let mut highest = Backoff::default();
        let windows = [1000, 2000, 4000, 4000, 4000];
        for window_ms in windows {
            let window = Duration::from_millis(window_ms);
            assert_eq!(highest.window(), window);
            assert_eq!(lowest.next_delay(0), Duration::ZERO);
            let top = highest.next_delay(u32::MAX);
            assert!(top < window, "{top:?} < {window:?}");
            assert!(window - top < Duration::from_micros(1), "{top:?}");
        }
        let mut many = Backoff::default();
        for _ in 0..100 {
            assert!(many.next_delay(u32::MAX) < MAX_WINDOW);
        }
        assert!(MAX_WINDOW < Duration::from_secs(5));
        many.reset();
        assert_eq!(many.window(), FIRST_WINDOW);
        assert_eq!(
            many.next_delay(u32::MAX / 2 + 1),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn rotation_prefers_the_replica_in_use_and_puts_the_failed_one_last() {
        let [a, b, c]: [SocketAddr; 3] = [
            "10.0.0.1:8081".parse().unwrap(),
            "10.0.0.2:8081".parse().unwrap(),
            "10.0.0.3:8081".parse().unwrap(),
        ];
        let all = [a, b, c];
        let cases = [
            (None, None, 0, [a, b, c]),
            (None, None, 1, [b, c, a]),
            (None, None, 5, [c, a, b]),
            (Some(b), None, 0, [b, c, a]),
            (None, Some(a), 2, [b, c, a]),
            (None, Some(c), 1, [a, b, c]),
            // Gone from DNS: a random start.
            (Some("10.0.0.9:8081".parse().unwrap()), None, 1, [b, c, a]),
        ];
        for (prefer, avoid, random, expected) in cases {
            assert_eq!(
                rotation(&all, prefer, avoid, random),
                expected,
                "prefer {prefer:?} avoid {avoid:?} random {random}"
            );
        }
        assert!(rotation(&[], Some(a), None, 0).is_empty());
        assert_eq!(rotation(&[a], None, Some(a), 7), [a]);
    }

    #[test]
    fn random_starts_spread_agents_over_every_replica() {
        let all: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:8081").parse().unwrap())
            .collect();
        let mut firsts = std::collections::HashSet::new();
        for random in 0..3 {
            firsts.insert(rotation(&all, None, None, random)[0]);
        }
        assert_eq!(firsts.len(), 3);
    }
}
