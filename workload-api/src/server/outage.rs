//! The answers that say why nothing can be served: every SVID expired, or
//! the entries not received yet, with how long the issuer has been gone.

use super::*;

/// UNAVAILABLE saying `what` is wrong and, during an outage, for how long
/// the issuer has been gone and why; otherwise `meanwhile`.
fn unavailable(
    what: &str,
    meanwhile: &str,
    outage: Option<IssuerOutage>,
    now: SystemTime,
) -> Status {
    match outage {
        Some(outage) => Status::unavailable(format!("{what}; {}", unreachable_for(&outage, now))),
        None => Status::unavailable(format!("{what}; {meanwhile}")),
    }
}

/// `the issuer has been unreachable for 1m 12s: <last error>`.
pub(super) fn unreachable_for(outage: &IssuerOutage, now: SystemTime) -> String {
    format!(
        "the issuer has been unreachable for {}: {}",
        format_lasted(outage.lasted(now)),
        outage.last_error
    )
}

/// The answer when every credential a workload could be served has expired.
pub(super) fn all_expired(outage: Option<IssuerOutage>, now: SystemTime) -> Status {
    unavailable(
        "every SVID for this workload has expired",
        "new ones are being minted, retry",
        outage,
        now,
    )
}

/// The answer while the node has not received its registration entries:
/// what a caller is entitled to is not known yet.
pub(super) fn awaiting_entries(outage: Option<IssuerOutage>, now: SystemTime) -> Status {
    unavailable(
        "the agent has not received its registration entries yet",
        "retry",
        outage,
        now,
    )
}

/// A duration for people, to the second: `45s`, `1m 12s`, `3h 0m 5s`.
pub(super) fn format_lasted(lasted: Duration) -> String {
    let secs = lasted.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}
