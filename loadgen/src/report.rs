//! The measurements of one run, as text for people and JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::queries::CountSource;
use crate::stats::Summary;

/// SPIRE's reported database load: 47,000 queries per second at 3,500 agents.
pub const SPIRE_QUERIES_PER_SECOND: f64 = 47_000.0;
pub const SPIRE_AGENTS: f64 = 3_500.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every agent attached, every entry's SVID and the bundle reached every agent.
    pub pass: bool,
    pub agents: usize,
    pub issuer_addresses: Vec<String>,
    pub trust_domain: String,
    pub attach: Attach,
    pub entry_to_svid: EntryToSvid,
    pub bundle_to_agents: BundleToAgents,
    pub steady: Steady,
    /// Absent without --issuer-pid.
    pub issuer: Option<IssuerCost>,
    /// Absent without --database-url.
    pub database: Option<Database>,
    pub totals: Totals,
    /// Distinct error messages with how often each was seen.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attach {
    /// From the first attestation to the last agent holding a complete snapshot.
    pub seconds: f64,
    pub attached: usize,
    pub failed: usize,
    pub concurrency: usize,
    /// Time from the start to each agent's attach.
    pub per_agent: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryToSvid {
    pub created: usize,
    /// Entries whose SVID the parent agent never held in time.
    pub missing: usize,
    pub latency: Option<Summary>,
    /// What the issuers did while the entries were created, for the cost
    /// of one change to the fleet: agent renewals in the same time are
    /// changes too.
    pub renewals_meanwhile: usize,
    pub database_queries: Option<i64>,
    pub issuer_cpu_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleToAgents {
    pub trust_domain: String,
    pub received: usize,
    /// Attached agents whose stream never delivered it in time.
    pub missing: usize,
    pub latency: Option<Summary>,
    /// Until the last agent held it; absent when some never did.
    pub last_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub seconds: f64,
    /// Agent SVID renewals in the window: the only changes in it.
    pub renewals: usize,
    pub stream_breaks: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssuerCost {
    pub pids: Vec<u32>,
    pub clock_ticks_per_second: u64,
    pub attach_cpu_seconds: f64,
    pub attach_cpu_seconds_per_1000_agents: f64,
    pub steady_cpu_seconds: f64,
    pub steady_cpu_seconds_per_1000_agents: f64,
    /// CPU as a share of one core over the steady window.
    pub steady_cpu_cores: f64,
    pub rss_mib_after_attach: f64,
    pub rss_mib_after_attach_per_1000_agents: f64,
    /// What attaching added, without the issuer's baseline.
    pub rss_mib_attach_growth_per_1000_agents: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Database {
    pub source: CountSource,
    pub queries: i64,
    pub seconds: f64,
    pub queries_per_second: f64,
    pub queries_per_second_per_agent: f64,
    /// Queries in the window per renewal in it, when there were renewals.
    pub queries_per_renewal: Option<f64>,
    /// SPIRE's 13.4 queries per second per agent.
    pub spire_queries_per_second_per_agent: f64,
    /// This run's per-agent rate over SPIRE's.
    pub ratio_to_spire: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub renewals: usize,
    pub renew_failures: u64,
    pub sign_failures: u64,
    pub stream_breaks: usize,
}

fn optional_ms(summary: &Option<Summary>) -> String {
    match summary {
        Some(s) => format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            s.p50_ms, s.p99_ms, s.max_ms, s.count
        ),
        None => "nothing measured".into(),
    }
}

impl Report {
    /// The report as aligned text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let line = &mut out;
        let _ = writeln!(
            line,
            "sigil-loadgen: {} agents against {} ({}), trust domain {}",
            self.agents,
            self.issuer_addresses.join(", "),
            if self.issuer_addresses.len() == 1 {
                "1 issuer".to_owned()
            } else {
                format!("{} issuers", self.issuer_addresses.len())
            },
            self.trust_domain
        );
        let _ = writeln!(line, "result: {}", if self.pass { "PASS" } else { "FAIL" });
        let a = &self.attach;
        let _ = writeln!(
            line,
            "attach:            {:.2} s for {} agents ({} in flight); {} failed",
            a.seconds, a.attached, a.concurrency, a.failed
        );
        let _ = writeln!(
            line,
            "                   per agent since start: {}",
            optional_ms(&a.per_agent)
        );
        let e = &self.entry_to_svid;
        let _ = writeln!(
            line,
            "entry -> SVID:     {} ({} created, {} missing)",
            optional_ms(&e.latency),
            e.created,
            e.missing
        );
        let phase = match (e.database_queries, e.issuer_cpu_seconds) {
            (Some(q), Some(cpu)) => format!("{q} database queries, {cpu:.2} s issuer CPU"),
            (Some(q), None) => format!("{q} database queries"),
            (None, Some(cpu)) => format!("{cpu:.2} s issuer CPU"),
            (None, None) => "cost not measured".to_owned(),
        };
        let _ = writeln!(
            line,
            "                   meanwhile: {phase} for {} entries and {} agent renewals",
            e.created, e.renewals_meanwhile
        );
        let b = &self.bundle_to_agents;
        let last = b.last_ms.map_or("never (some missing)".to_owned(), |ms| {
            format!("{ms:.1} ms")
        });
        let _ = writeln!(
            line,
            "bundle -> agents:  {}; last agent {} ({} received, {} missing, {})",
            optional_ms(&b.latency),
            last,
            b.received,
            b.missing,
            b.trust_domain
        );
        let s = &self.steady;
        let _ = writeln!(
            line,
            "steady window:     {:.1} s, {} agent renewals, {} stream breaks",
            s.seconds, s.renewals, s.stream_breaks
        );
        match &self.issuer {
            Some(i) => {
                let _ = writeln!(
                    line,
                    "issuer CPU:        attach {:.2} s ({:.2} s per 1,000 agents); steady {:.2} s \
                     ({:.3} s per 1,000 agents, {:.1}% of a core)",
                    i.attach_cpu_seconds,
                    i.attach_cpu_seconds_per_1000_agents,
                    i.steady_cpu_seconds,
                    i.steady_cpu_seconds_per_1000_agents,
                    i.steady_cpu_cores * 100.0
                );
                let _ = writeln!(
                    line,
                    "issuer RSS:        {:.1} MiB after attach ({:.1} MiB per 1,000 agents, of which \
                     attaching added {:.1}; pids {:?})",
                    i.rss_mib_after_attach,
                    i.rss_mib_after_attach_per_1000_agents,
                    i.rss_mib_attach_growth_per_1000_agents,
                    i.pids
                );
            }
            None => {
                let _ = writeln!(line, "issuer CPU, RSS:   not measured (no --issuer-pid)");
            }
        }
        match &self.database {
            Some(d) => {
                let per_renewal = d
                    .queries_per_renewal
                    .map_or(String::new(), |q| format!(", {q:.0} per renewal"));
                let _ = writeln!(
                    line,
                    "database:          {:.1} queries/s at steady state, {:.4} per agent \
                     ({} over {:.1} s from {}{per_renewal})",
                    d.queries_per_second,
                    d.queries_per_second_per_agent,
                    d.queries,
                    d.seconds,
                    d.source.name()
                );
                let _ = writeln!(
                    line,
                    "                   SPIRE: {:.1} per agent (47,000/s at 3,500 agents); ratio {:.4}",
                    d.spire_queries_per_second_per_agent, d.ratio_to_spire
                );
            }
            None => {
                let _ = writeln!(line, "database:          not measured (no --database-url)");
            }
        }
        let t = &self.totals;
        let _ = writeln!(
            line,
            "whole run:         {} renewals ({} failed), {} signing failures, {} stream breaks",
            t.renewals, t.renew_failures, t.sign_failures, t.stream_breaks
        );
        for (error, count) in &self.errors {
            let _ = writeln!(line, "  {count} x {error}");
        }
        out
    }
}
