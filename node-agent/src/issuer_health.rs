//! Whether the issuer is answering the agent's minting and signing calls:
//! the outage starts at the first failed call after the last success and
//! ends at the next success. The Workload API reads it to tell a workload
//! whose credentials have all expired how long the issuer has been gone.

use std::sync::Mutex;
use std::time::SystemTime;

use workload_api::source::IssuerOutage;

/// The issuer's state as the agent's calls find it; shared by the SVID cache
/// loop, the JWT-SVID cache and the Workload API.
#[derive(Debug, Default)]
pub struct IssuerHealth {
    outage: Mutex<Option<IssuerOutage>>,
}

impl IssuerHealth {
    /// A call reached the issuer and was answered.
    pub fn succeeded(&self) {
        *self.outage.lock().expect("issuer health") = None;
    }

    /// A call failed at `now` with `error`. The outage keeps its start; the
    /// error is the latest.
    pub fn failed(&self, now: SystemTime, error: &str) {
        let mut outage = self.outage.lock().expect("issuer health");
        match outage.as_mut() {
            Some(outage) => error.clone_into(&mut outage.last_error),
            None => {
                *outage = Some(IssuerOutage {
                    since: now,
                    last_error: error.to_owned(),
                })
            }
        }
    }

    /// The current outage, if any.
    pub fn outage(&self) -> Option<IssuerOutage> {
        self.outage.lock().expect("issuer health").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn an_outage_starts_at_the_first_failure_and_ends_at_a_success() {
        let health = IssuerHealth::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(health.outage(), None);
        health.failed(t0, "Unavailable: connection refused");
        health.failed(t0 + Duration::from_secs(72), "DeadlineExceeded: timeout");
        let outage = health.outage().expect("an outage");
        assert_eq!(outage.since, t0, "the outage keeps its start");
        assert_eq!(outage.last_error, "DeadlineExceeded: timeout");
        assert_eq!(
            outage.lasted(t0 + Duration::from_secs(72)),
            Duration::from_secs(72)
        );
        health.succeeded();
        assert_eq!(health.outage(), None);
        health.failed(t0 + Duration::from_secs(100), "Unavailable: again");
        assert_eq!(
            health.outage().unwrap().since,
            t0 + Duration::from_secs(100)
        );
    }
}
