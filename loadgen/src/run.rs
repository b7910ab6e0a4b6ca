//! One load run, phase by phase: join tokens; attach every agent; entries
//! one at a time until their SVIDs are held; a foreign bundle until every
//! agent has it; then a steady window in which nothing is changed by the
//! tool, for CPU and database queries.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use workload_api::id::parse_trust_domain;

use crate::admin::{foreign_bundle, Admin, AdminError};
use crate::agent::{Fleet, SimulatedAgent};
use crate::events::Collector;
use crate::process::{self, ProcessError};
use crate::queries::{QueryCountError, QueryCounter};
use crate::report::{self, Report};
use crate::settings::Settings;
use crate::stats::{per_thousand, Summary};

/// Why a run could not be carried out (as opposed to measuring failures).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("issuer process: {0}")]
    Process(#[from] ProcessError),
    #[error("database: {0}")]
    Queries(#[from] QueryCountError),
    #[error("no agent attached; the first errors: {0}")]
    NoneAttached(String),
}

const MIB: f64 = 1024.0 * 1024.0;

/// The issuer processes to measure, if any were named.
struct Processes {
    pids: Vec<u32>,
    ticks: u64,
}

impl Processes {
    fn sample(&self) -> Result<process::Sample, ProcessError> {
        process::sample(&self.pids)
    }

    fn cpu_seconds(&self, from: process::Sample, to: process::Sample) -> f64 {
        to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / self.ticks as f64
    }
}

pub async fn run(settings: &Settings) -> Result<Report, RunError> {
    let admin = Admin::connect(&settings.admin_socket).await?;
    let bundle = Arc::new(
        admin
            .trust_bundle(settings.trust_domain.as_ref(), settings.bundle.as_deref())
            .await?,
    );
    let processes = if settings.issuer_pids.is_empty() {
        None
    } else {
        let processes = Processes {
            pids: settings.issuer_pids.clone(),
            ticks: process::clock_ticks_per_second()?,
        };
        processes.sample()?;
        Some(processes)
    };
    let mut counter = match &settings.database_url {
        Some(url) => Some(QueryCounter::connect(url).await?),
        None => None,
    };
    // Names this run's entries and foreign trust domain apart from earlier runs'.
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();

    let tokens = admin.join_tokens(settings.agents).await?;

    // Attach.
    let (events, mut collector) = Collector::new();
    let fleet = Arc::new(Fleet {
        bundle: bundle.clone(),
        events,
        attach_gate: Arc::new(Semaphore::new(settings.attach_concurrency)),
        attach_timeout: settings.attach_timeout,
    });
    let before_attach = processes.as_ref().map(Processes::sample).transpose()?;
    let start = Instant::now();
    let mut agents = JoinSet::new();
    for (index, join_token) in tokens.into_iter().enumerate() {
        let address = settings.issuer_addresses[index % settings.issuer_addresses.len()].clone();
        agents.spawn(
            SimulatedAgent {
                index,
                address,
                join_token,
            }
            .run(fleet.clone()),
        );
    }
    // Every agent settles by its own deadline; this one only guards the run.
    let waves = settings.agents.div_ceil(settings.attach_concurrency) as u32 + 1;
    collector
        .until(start + settings.attach_timeout * waves, |l| {
            l.settled() >= settings.agents
        })
        .await;
    let attach_done = collector
        .ledger
        .attached
        .values()
        .map(|(_, at)| *at)
        .max()
        .unwrap_or(start);
    let after_attach = processes.as_ref().map(Processes::sample).transpose()?;
    let attached_ids: Vec<String> = collector
        .ledger
        .attached
        .values()
        .map(|(id, _)| id.clone())
        .collect();
    if attached_ids.is_empty() {
        let errors: Vec<&String> = collector.ledger.errors.keys().take(3).collect();
        return Err(RunError::NoneAttached(format!("{errors:?}")));
    }
    let attach_latencies: Vec<Duration> = collector
        .ledger
        .attached
        .values()
        .map(|(_, at)| *at - start)
        .collect();

    // Entry -> SVID, one entry at a time.
    let entries_renewals_before = collector.ledger.renewals.len();
    let entries_cpu_before = processes.as_ref().map(Processes::sample).transpose()?;
    let entries_queries_before = match counter.as_mut() {
        Some(c) => Some(c.count().await?),
        None => None,
    };
    let mut entry_latencies = Vec::with_capacity(settings.entries);
    for n in 0..settings.entries {
        let parent = &attached_ids[random_below(attached_ids.len())];
        let spiffe_id = format!("spiffe://{}/load/{run_id}/{n}", bundle.trust_domain());
        let created = Instant::now();
        let entry = admin.create_entry(spiffe_id, parent.clone()).await?;
        let held = collector
            .until(created + settings.wait, |l| {
                l.signed.contains_key(&entry.id)
            })
            .await;
        if held {
            entry_latencies.push(collector.ledger.signed[&entry.id] - created);
        }
    }

    let entries_queries = match (counter.as_mut(), entries_queries_before) {
        (Some(c), Some(before)) => Some(c.count().await? - before),
        _ => None,
    };
    let entries_cpu = match (&processes, entries_cpu_before) {
        (Some(p), Some(before)) => Some(p.cpu_seconds(before, p.sample()?)),
        _ => None,
    };
    let entries_renewals = collector.ledger.renewals.len() - entries_renewals_before;

    // Bundle -> every agent.
    let foreign_td = parse_trust_domain(&format!("load-{run_id}.example"))
        .expect("a number under example is a valid trust domain");
    let foreign = foreign_bundle(foreign_td.clone())?;
    let foreign_name = foreign_td.to_string();
    let set_at = Instant::now();
    admin.set_foreign_bundle(&foreign).await?;
    let attached = attached_ids.len();
    collector
        .until(set_at + settings.wait, |l| {
            l.holding(&foreign_name) >= attached
        })
        .await;
    let bundle_latencies: Vec<Duration> = collector
        .ledger
        .federated
        .get(&foreign_name)
        .map(|by_agent| by_agent.values().map(|at| *at - set_at).collect())
        .unwrap_or_default();

    // Steady state: the tool changes nothing; agents keep their streams.
    let renewals_before = collector.ledger.renewals.len();
    let breaks_before = collector.ledger.stream_breaks.len();
    let cpu_before = processes.as_ref().map(Processes::sample).transpose()?;
    let queries_before = match counter.as_mut() {
        Some(c) => Some(c.count().await?),
        None => None,
    };
    let steady_start = Instant::now();
    collector
        .until(steady_start + settings.steady, |_| false)
        .await;
    let queries_after = match counter.as_mut() {
        Some(c) => Some(c.count().await?),
        None => None,
    };
    let cpu_after = processes.as_ref().map(Processes::sample).transpose()?;
    let steady_seconds = steady_start.elapsed().as_secs_f64();
    agents.abort_all();

    let ledger = &collector.ledger;
    let steady_renewals = ledger.renewals.len() - renewals_before;
    let issuer = match (
        &processes,
        before_attach,
        after_attach,
        cpu_before,
        cpu_after,
    ) {
        (Some(p), Some(b), Some(a), Some(s0), Some(s1)) => {
            let attach_cpu = p.cpu_seconds(b, a);
            let steady_cpu = p.cpu_seconds(s0, s1);
            let rss_mib = a.rss_bytes as f64 / MIB;
            Some(report::IssuerCost {
                pids: p.pids.clone(),
                clock_ticks_per_second: p.ticks,
                attach_cpu_seconds: attach_cpu,
                attach_cpu_seconds_per_1000_agents: per_thousand(attach_cpu, settings.agents),
                steady_cpu_seconds: steady_cpu,
                steady_cpu_seconds_per_1000_agents: per_thousand(steady_cpu, settings.agents),
                steady_cpu_cores: steady_cpu / steady_seconds,
                rss_mib_after_attach: rss_mib,
                rss_mib_after_attach_per_1000_agents: per_thousand(rss_mib, settings.agents),
                rss_mib_attach_growth_per_1000_agents: per_thousand(
                    a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / MIB,
                    settings.agents,
                ),
            })
        }
        _ => None,
    };
    let database = match (&counter, queries_before, queries_after) {
        (Some(c), Some(q0), Some(q1)) => {
            let queries = q1 - q0;
            let per_second = queries as f64 / steady_seconds;
            let per_agent = per_second / settings.agents as f64;
            let spire = report::SPIRE_QUERIES_PER_SECOND / report::SPIRE_AGENTS;
            Some(report::Database {
                source: c.source,
                queries,
                seconds: steady_seconds,
                queries_per_second: per_second,
                queries_per_second_per_agent: per_agent,
                queries_per_renewal: (steady_renewals > 0)
                    .then(|| queries as f64 / steady_renewals as f64),
                spire_queries_per_second_per_agent: spire,
                ratio_to_spire: per_agent / spire,
            })
        }
        _ => None,
    };
    let bundle_missing = attached - bundle_latencies.len().min(attached);
    let entry_missing = settings.entries - entry_latencies.len();
    Ok(Report {
        pass: ledger.attach_failed.is_empty()
            && attached == settings.agents
            && entry_missing == 0
            && bundle_missing == 0,
        agents: settings.agents,
        issuer_addresses: settings.issuer_addresses.clone(),
        trust_domain: bundle.trust_domain().to_string(),
        attach: report::Attach {
            seconds: (attach_done - start).as_secs_f64(),
            attached,
            failed: settings.agents - attached,
            concurrency: settings.attach_concurrency,
            per_agent: Summary::of(&attach_latencies),
        },
        entry_to_svid: report::EntryToSvid {
            created: settings.entries,
            missing: entry_missing,
            latency: Summary::of(&entry_latencies),
            renewals_meanwhile: entries_renewals,
            database_queries: entries_queries,
            issuer_cpu_seconds: entries_cpu,
        },
        bundle_to_agents: report::BundleToAgents {
            trust_domain: foreign_name,
            received: bundle_latencies.len(),
            missing: bundle_missing,
            last_ms: Summary::of(&bundle_latencies)
                .filter(|_| bundle_missing == 0)
                .map(|s| s.max_ms),
            latency: Summary::of(&bundle_latencies),
        },
        steady: report::Steady {
            seconds: steady_seconds,
            renewals: steady_renewals,
            stream_breaks: ledger.stream_breaks.len() - breaks_before,
        },
        issuer,
        database,
        totals: report::Totals {
            renewals: ledger.renewals.len(),
            renew_failures: ledger.renew_failures,
            sign_failures: ledger.sign_failures,
            stream_breaks: ledger.stream_breaks.len(),
        },
        errors: ledger.errors.clone(),
    })
}

/// A uniformly random index below `n` (n > 0), for picking parent agents.
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    // The modulo bias is below 2^-40 for any fleet this tool allows.
    (u64::from_le_bytes(bytes) % n as u64) as usize
}
