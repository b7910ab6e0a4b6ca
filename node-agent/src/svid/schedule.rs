//! The SVID cache's timetable, as pure functions of what the cache holds and
//! the time: which credentials to mint now, when to rotate, and how long the
//! cache loop may sleep.
//!
//! Two rules keep rotation from stalling. An overdue rotation is due now (a
//! rotation time already past, however long ago, never turns into "nothing
//! scheduled"). And no sleep is longer than [`MAX_SLEEP`]: rotation and
//! expiry times are wall-clock times, while sleeps run on the monotonic
//! clock, which stands still while a host is suspended; on resume the wall
//! clock jumps and the loop must notice within seconds.

use std::time::{Duration, SystemTime};

/// The longest the cache loop sleeps before looking at the clock again.
pub const MAX_SLEEP: Duration = Duration::from_secs(2);

/// The shortest time between receiving a credential and replacing it. A
/// credential that arrives with almost no life left (a 1 s TTL cut to whole
/// seconds by the issuer, or an issuer clock behind ours) would otherwise be
/// re-minted in a tight loop.
pub const MIN_REMINT: Duration = Duration::from_millis(100);

/// Rotation happens between 40% and 50% of a credential's life.
const JITTER_PERCENT: u32 = 10;

/// A credential the cache holds, as far as timing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The entry revision it was minted for.
    pub revision: i64,
    pub rotate_at: SystemTime,
    pub expires_at: SystemTime,
}

/// What the cache loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// Credentials to mint now: missing, minted for an older revision, or at
    /// or past their rotation time.
    pub due: Vec<K>,
    /// The earliest rotation time among the credentials not due (so always
    /// after `now`).
    pub next_rotation: Option<SystemTime>,
    /// The earliest expiry among the credentials still valid; when it passes
    /// the Workload API's view changes.
    pub next_expiry: Option<SystemTime>,
    /// How long the loop may sleep: zero when something is due, otherwise
    /// until the next rotation or expiry, and never more than [`MAX_SLEEP`].
    pub wake_after: Duration,
}

/// Plans the cache at `now`. `wanted` lists, for each credential the cache
/// should hold, its key, the entry's current revision and what is held for
/// it.
pub fn plan<K>(
    wanted: impl IntoIterator<Item = (K, i64, Option<Held>)>,
    now: SystemTime,
) -> Plan<K> {
    let mut due = Vec::new();
    let mut next_rotation: Option<SystemTime> = None;
    let mut next_expiry: Option<SystemTime> = None;
    for (key, revision, held) in wanted {
        let Some(held) = held else {
            due.push(key);
            continue;
        };
        if now < held.expires_at {
            next_expiry = Some(next_expiry.map_or(held.expires_at, |t| t.min(held.expires_at)));
        }
        // Expiry needs no rule of its own: rotation comes first, and a
        // credential received already expired waits out MIN_REMINT.
        if held.revision != revision || now >= held.rotate_at {
            due.push(key);
        } else {
            next_rotation = Some(next_rotation.map_or(held.rotate_at, |t| t.min(held.rotate_at)));
        }
    }
    let wake_after = if due.is_empty() {
        [next_rotation, next_expiry]
            .into_iter()
            .flatten()
            .map(|t| t.duration_since(now).unwrap_or_default())
            .fold(MAX_SLEEP, Duration::min)
    } else {
        Duration::ZERO
    };
    Plan {
        due,
        next_rotation,
        next_expiry,
        wake_after,
    }
}

/// How long the loop sleeps after planning `plan`: while minting is held
/// back after a failure (`retry_in`), due credentials wait for the retry,
/// but an expiry still wakes the loop so the Workload API hears of it.
pub fn sleep_for<K>(plan: &Plan<K>, now: SystemTime, retry_in: Option<Duration>) -> Duration {
    match retry_in {
        Some(retry) if !plan.due.is_empty() => {
            let until_expiry = plan
                .next_expiry
                .map_or(MAX_SLEEP, |t| t.duration_since(now).unwrap_or_default());
            retry.min(until_expiry).min(MAX_SLEEP)
        }
        _ => plan.wake_after,
    }
}

/// When to replace a credential received at `received` that expires at
/// `expires_at`: between 40% and 50% of the life it had left then (the
/// jitter byte picks where, so a fleet does not rotate in step), but not
/// sooner than [`MIN_REMINT`] after receipt. (An X509-SVID's notBefore is
/// backdated for clock skew, so the receipt time is the honest start.)
pub fn rotate_at(received: SystemTime, expires_at: SystemTime, jitter: u8) -> SystemTime {
    let life = expires_at.duration_since(received).unwrap_or_default();
    let jitter = u32::from(jitter) * JITTER_PERCENT / 255;
    let point = received + life * (50 - jitter) / 100;
    point.max(received + MIN_REMINT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn held(rotate_at: u64, expires_at: u64) -> Option<Held> {
        Some(Held {
            revision: 1,
            rotate_at: at(rotate_at),
            expires_at: at(expires_at),
        })
    }

    #[test]
    fn rotation_times_in_the_future_are_waited_for() {
        let plan = plan([("a", 1, held(100, 200))], at(40));
        assert!(plan.due.is_empty());
        assert_eq!(plan.next_rotation, Some(at(100)));
        assert_eq!(plan.next_expiry, Some(at(200)));
        assert_eq!(
            plan.wake_after, MAX_SLEEP,
            "a far rotation is slept towards in short steps"
        );

        let soon = plan_near(Duration::from_millis(300));
        assert_eq!(soon.wake_after, Duration::from_millis(300));
    }

    fn plan_near(before: Duration) -> Plan<&'static str> {
        let now = at(100) - before;
        plan([("a", 1, held(100, 200))], now)
    }

    #[test]
    fn a_rotation_time_reached_exactly_is_due() {
        let plan = plan([("a", 1, held(100, 200))], at(100));
        assert_eq!(plan.due, vec!["a"]);
        assert_eq!(plan.wake_after, Duration::ZERO);
        assert_eq!(plan.next_rotation, None);
    }

    #[test]
    fn an_overdue_rotation_is_due_now_however_late() {
        for late in [1, 50, 99, 100, 3600, 86_400 * 30] {
            let plan = plan(
                [("a", 1, held(100, 200)), ("b", 1, held(500, 900))],
                at(100 + late),
            );
            assert!(plan.due.contains(&"a"), "{late} s late: {plan:?}");
            assert_eq!(plan.wake_after, Duration::ZERO, "{late} s late");
        }
    }

    #[test]
    fn a_short_lived_credential_does_not_stall_the_others() {
        // The 1 s SVID is long past; the 10 s one rotates on its own time.
        let wanted = [("short", 1, held(0, 1)), ("long", 1, held(5, 10))];
        let plan = plan(wanted, at(3));
        assert_eq!(plan.due, vec!["short"]);
        assert_eq!(plan.next_rotation, Some(at(5)));
        // The short one, re-minted since, waits; the long one's time came.
        let later = super::plan([("short", 1, held(6, 7)), ("long", 1, held(5, 10))], at(5));
        assert_eq!(later.due, vec!["long"]);
    }

    #[test]
    fn a_clock_step_forward_makes_rotation_due_at_the_next_wake() {
        let wanted = || [("a", 1, held(1800, 3600)), ("b", 1, held(1900, 3600))];
        let before = plan(wanted(), at(0));
        assert!(before.due.is_empty());
        assert!(before.wake_after <= MAX_SLEEP, "{before:?}");
        // The host slept for two hours: the monotonic sleep ended after at
        // most MAX_SLEEP, and the wall clock now reads two hours later.
        let after = plan(wanted(), at(7200) + before.wake_after);
        assert_eq!(after.due, vec!["a", "b"]);
        assert_eq!(after.next_expiry, None, "both have expired");
        assert_eq!(after.wake_after, Duration::ZERO);
    }

    #[test]
    fn missing_and_outdated_credentials_are_due() {
        let plan = plan(
            [
                ("new", 1, None),
                ("changed", 2, held(100, 200)),
                ("kept", 1, held(100, 200)),
            ],
            at(10),
        );
        assert_eq!(plan.due, vec!["new", "changed"]);
        assert_eq!(plan.next_rotation, Some(at(100)));
    }

    #[test]
    fn the_next_expiry_wakes_the_loop_before_the_next_rotation() {
        // "a" is due but held back by a retry; "b" expires in 700 ms.
        let now = at(10);
        let wanted = [
            ("a", 1, held(5, 8)),
            (
                "b",
                1,
                Some(Held {
                    revision: 1,
                    rotate_at: at(9),
                    expires_at: now + Duration::from_millis(700),
                }),
            ),
        ];
        let plan = plan(wanted, now);
        assert_eq!(plan.due, vec!["a", "b"]);
        assert_eq!(plan.next_expiry, Some(now + Duration::from_millis(700)));
        assert_eq!(
            sleep_for(&plan, now, Some(Duration::from_secs(4))),
            Duration::from_millis(700)
        );
        assert_eq!(sleep_for(&plan, now, None), Duration::ZERO);
        let far = super::plan([("a", 1, held(5, 8))], now);
        assert_eq!(
            sleep_for(&far, now, Some(Duration::from_secs(4))),
            MAX_SLEEP
        );
        assert_eq!(
            sleep_for(&far, now, Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn nothing_held_sleeps_the_longest_step() {
        let plan: Plan<&str> = plan([], at(0));
        assert_eq!(plan.wake_after, MAX_SLEEP);
        assert_eq!(plan.next_rotation, None);
    }

    #[test]
    fn rotation_is_between_40_and_50_percent_of_the_remaining_life() {
        let received = at(0);
        assert_eq!(rotate_at(received, at(100), 0), at(50));
        assert_eq!(rotate_at(received, at(100), 255), at(40));
        let mid = rotate_at(received, at(100), 128);
        assert!(mid > at(40) && mid < at(50), "{mid:?}");
    }

    #[test]
    fn rotation_waits_at_least_the_minimum_after_receipt() {
        let received = at(0);
        // Half a second of life: the 40-50% point is further than the floor.
        assert_eq!(
            rotate_at(received, received + Duration::from_millis(500), 0),
            received + Duration::from_millis(250)
        );
        // 50 ms of life, or none, or an expiry already past: the floor.
        for expires in [
            received + Duration::from_millis(50),
            received,
            at(0) - Duration::from_secs(5),
        ] {
            assert_eq!(rotate_at(received, expires, 0), received + MIN_REMINT);
        }
    }
}
