//! Reports what a service verified to its local Sigil agent, which signs
//! and forwards them to the issuer's event log: who proved what to whom.
//! The WIMSE layer reports its proofs by itself
//! ([`super::layer::WimseLayer::reporting_usage`]); a service checking
//! JWT-SVIDs with [`crate::jwtsvid::validate`] reports each result with
//! [`UsageReporter::jwt_svid`].
//!
//! Acceptances are aggregated per sender, credential (the WIT's `jti`),
//! proof form and route over a [`WINDOW`] of ten seconds, with a count and
//! the first and last time seen; every refusal is reported on its own,
//! naming the failed check. A refused request's sender is only what its
//! WIT claims, and is reported as such. Memory is bounded: at most
//! [`MAX_ACCEPTED_KEYS`] aggregates and [`MAX_REFUSALS`] refusals wait per
//! window; beyond that they are counted in one refusal line with check
//! `usage.dropped`. A report the agent did not take is kept for the next
//! window, within the same bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::agent::usage_client::UsageClient;
use proto::agent::{ReportVerificationsRequest, VerificationReport};

use super::{Proof, Verified};
use crate::client::{channel, EndpointAddress, SecurityHeader};
use crate::jwtsvid::{JwtSvidError, ValidatedJwtSvid};

/// How long acceptances are aggregated before they are reported.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct (sender, credential, proof, route) aggregates per window.
pub const MAX_ACCEPTED_KEYS: usize = 4096;
/// Refusals held per window.
pub const MAX_REFUSALS: usize = 1024;
/// The longest route reported; longer ones are cut.
pub const MAX_ROUTE_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sender: String,
    jti: String,
    proof: &'static str,
    route: String,
}

#[derive(Debug, Default)]
struct Window {
    accepted: HashMap<Key, (u64, i64, i64)>,
    refused: Vec<VerificationReport>,
    dropped: u64,
}

/// The reporter a [`super::layer::WimseLayer`] feeds.
#[derive(Debug, Default)]
pub struct UsageReporter {
    window: Mutex<Window>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `METHOD /path`, without the query, cut to [`MAX_ROUTE_BYTES`].
pub fn route(method: &str, path: &str) -> String {
    let mut route = format!("{method} {path}");
    if route.len() > MAX_ROUTE_BYTES {
        let mut end = MAX_ROUTE_BYTES;
        while !route.is_char_boundary(end) {
            end -= 1;
        }
        route.truncate(end);
    }
    route
}

/// The proof forms a report names.
pub const WPT: &str = "wpt";
pub const HTTP_SIGNATURE: &str = "http_signature";
pub const JWT_SVID: &str = "jwt_svid";

fn proof_name(proof: &Proof) -> &'static str {
    match proof {
        Proof::Wpt(_) => WPT,
        Proof::HttpSignature(_) => HTTP_SIGNATURE,
    }
}

/// The proof form named `name`, as the reporter keeps it.
fn known_proof(name: &str) -> &'static str {
    match name {
        WPT => WPT,
        JWT_SVID => JWT_SVID,
        _ => HTTP_SIGNATURE,
    }
}

impl UsageReporter {
    /// A reporter sending to the agent at `address` every [`WINDOW`], from
    /// a task on the current tokio runtime. The task ends with the reporter.
    pub fn start(address: EndpointAddress) -> Result<Arc<Self>, tokio::runtime::TryCurrentError> {
        Self::start_every(address, WINDOW)
    }

    /// [`UsageReporter::start`] with another window.
    pub fn start_every(
        address: EndpointAddress,
        window: Duration,
    ) -> Result<Arc<Self>, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let reporter = Arc::new(UsageReporter::default());
        runtime.spawn(run(Arc::downgrade(&reporter), address, window));
        Ok(reporter)
    }

    /// Counts a request the WIMSE layer accepted.
    pub fn accepted(&self, verified: &Verified, route: &str) {
        self.accepted_from(
            &verified.wit.subject,
            verified.wit.jti.as_deref().unwrap_or_default(),
            proof_name(&verified.proof),
            route,
        );
    }

    /// Reports a JWT-SVID check made with [`crate::jwtsvid::validate`]:
    /// `token` is the JWT-SVID presented, `route` what it was presented for.
    pub fn jwt_svid(
        &self,
        token: &str,
        result: &Result<ValidatedJwtSvid, JwtSvidError>,
        route: &str,
    ) {
        match result {
            Ok(validated) => {
                let jti = validated.claims.get("jti").and_then(|j| j.as_str());
                self.accepted_from(
                    &validated.spiffe_id.to_string(),
                    jti.unwrap_or_default(),
                    JWT_SVID,
                    route,
                );
            }
            Err(error) => self.refused(Some(token), JWT_SVID, error.check(), route),
        }
    }

    /// Counts an accepted request from `sender` with credential `jti`.
    fn accepted_from(&self, sender: &str, jti: &str, proof: &'static str, route: &str) {
        let key = Key {
            sender: sender.to_string(),
            jti: jti.to_string(),
            proof,
            route: route.to_string(),
        };
        let now = unix_now();
        let mut window = self.window.lock().expect("usage window");
        let full = window.accepted.len() >= MAX_ACCEPTED_KEYS;
        match window.accepted.get_mut(&key) {
            Some((count, _, last)) => {
                *count += 1;
                *last = now;
            }
            None if full => window.dropped += 1,
            None => {
                window.accepted.insert(key, (1, now, now));
            }
        }
    }

    /// Records a refused request that failed `check` (a problem's
    /// `check`). `wit` is the token presented, if any: its claimed subject
    /// and `jti` are reported, unverified.
    pub fn refused(&self, wit: Option<&str>, proof: &'static str, check: &str, route: &str) {
        let claims = wit.and_then(|token| crate::jws::parse(token).ok());
        let claim = |name: &str| {
            claims
                .as_ref()
                .and_then(|c| c.str_claim(name))
                .map(crate::display::shown)
                .unwrap_or_default()
        };
        let now = unix_now();
        let report = VerificationReport {
            sender: claim("sub"),
            credential_jti: claim("jti"),
            proof: proof.to_string(),
            route: route.to_string(),
            accepted: false,
            check: check.to_string(),
            count: 1,
            first_seen: now,
            last_seen: now,
        };
        let mut window = self.window.lock().expect("usage window");
        if window.refused.len() >= MAX_REFUSALS {
            window.dropped += 1;
        } else {
            window.refused.push(report);
        }
    }

    /// Everything held, as report lines, leaving the window empty.
    fn take(&self) -> Vec<VerificationReport> {
        let window = std::mem::take(&mut *self.window.lock().expect("usage window"));
        let mut reports: Vec<VerificationReport> = window
            .accepted
            .into_iter()
            .map(|(key, (count, first, last))| VerificationReport {
                sender: key.sender,
                credential_jti: key.jti,
                proof: key.proof.to_string(),
                route: key.route,
                accepted: true,
                check: String::new(),
                count,
                first_seen: first,
                last_seen: last,
            })
            .collect();
        reports.extend(window.refused);
        if window.dropped > 0 {
            let now = unix_now();
            reports.push(VerificationReport {
                check: "usage.dropped".into(),
                count: window.dropped,
                first_seen: now,
                last_seen: now,
                ..VerificationReport::default()
            });
        }
        reports
    }

    /// Puts back lines the agent did not take, within the bounds.
    fn put_back(&self, reports: Vec<VerificationReport>) {
        let mut window = self.window.lock().expect("usage window");
        for report in reports {
            if report.accepted {
                let key = Key {
                    sender: report.sender,
                    jti: report.credential_jti,
                    proof: known_proof(&report.proof),
                    route: report.route,
                };
                let full = window.accepted.len() >= MAX_ACCEPTED_KEYS;
                match window.accepted.get_mut(&key) {
                    Some((count, first, _)) => {
                        *count += report.count;
                        *first = (*first).min(report.first_seen);
                    }
                    None if full => window.dropped += report.count,
                    None => {
                        window
                            .accepted
                            .insert(key, (report.count, report.first_seen, report.last_seen));
                    }
                }
            } else if report.check == "usage.dropped" {
                window.dropped += report.count;
            } else if window.refused.len() < MAX_REFUSALS {
                window.refused.push(report);
            } else {
                window.dropped += 1;
            }
        }
    }
}

async fn run(reporter: Weak<UsageReporter>, address: EndpointAddress, window: Duration) {
    loop {
        tokio::time::sleep(window).await;
        let Some(reporter) = reporter.upgrade() else {
            return;
        };
        let reports = reporter.take();
        if reports.is_empty() {
            continue;
        }
        let sent = async {
            let channel = channel(&address).await.map_err(|e| e.to_string())?;
            UsageClient::with_interceptor(channel, SecurityHeader)
                .report_verifications(ReportVerificationsRequest {
                    reports: reports.clone(),
                })
                .await
                .map_err(|s| s.message().to_string())
        }
        .await;
        if let Err(error) = sent {
            tracing::warn!(%error, "reporting verifications to the agent failed; kept for the next window");
            reporter.put_back(reports);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_cut_on_a_character_boundary() {
        assert_eq!(route("GET", "/orders"), "GET /orders");
        let long = route("GET", &format!("/{}", "é".repeat(300)));
        assert!(long.len() <= MAX_ROUTE_BYTES && long.starts_with("GET /"));
    }

    #[test]
    fn jwt_svid_checks_are_aggregated_or_reported_one_by_one() {
        let reporter = UsageReporter::default();
        let mut claims = serde_json::Map::new();
        claims.insert("jti".into(), "j1".into());
        let validated = ValidatedJwtSvid {
            spiffe_id: crate::id::parse_spiffe_id("spiffe://example.org/web").unwrap(),
            audience: vec!["db".into()],
            expiry: 0,
            owner: None,
            claims,
        };
        for _ in 0..2 {
            reporter.jwt_svid("t", &Ok(validated.clone()), "query");
        }
        reporter.jwt_svid("not.a.jwt", &Err(JwtSvidError::BadSignature), "query");
        let mut reports = reporter.take();
        reports.sort_by_key(|r| r.accepted);
        assert_eq!(reports.len(), 2);
        let (refused, accepted) = (&reports[0], &reports[1]);
        assert_eq!(
            (
                accepted.sender.as_str(),
                accepted.credential_jti.as_str(),
                accepted.count
            ),
            ("spiffe://example.org/web", "j1", 2)
        );
        assert_eq!(accepted.proof, JWT_SVID);
        assert_eq!(
            (refused.check.as_str(), refused.proof.as_str()),
            ("jwt_svid.signature", JWT_SVID)
        );
    }

    #[test]
    fn refusals_are_bounded_and_the_excess_counted() {
        use crate::wimse::WimseError;
        let reporter = UsageReporter::default();
        let error = WimseError::MissingHeader {
            header: "Workload-Identity-Token",
        };
        for _ in 0..MAX_REFUSALS + 5 {
            reporter.refused(None, "wpt", error.check(), "GET /");
        }
        let reports = reporter.take();
        assert_eq!(reports.len(), MAX_REFUSALS + 1);
        let dropped = reports.last().unwrap();
        assert_eq!(
            (dropped.check.as_str(), dropped.count),
            ("usage.dropped", 5)
        );
        reporter.put_back(reports);
        assert_eq!(reporter.take().len(), MAX_REFUSALS + 1);
        assert!(reporter.take().is_empty());
    }
}
