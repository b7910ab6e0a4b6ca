//! The cost of the authorization check behind every SVID signing request:
//! which entries may this agent mint for. Measured two ways in the same run,
//! on the same store:
//!
//! - baseline: every live entry read and indexed, then the agent's entries
//!   picked out (what a check cost when it read the whole table);
//! - subtree: `Store::authorized_entries`, which reads only the agent's part
//!   of the entry tree in one statement.
//!
//! The store holds ENTRIES entries spread over AGENTS agents: each agent has
//! a node entry parented by it and workload entries parented by that node
//! entry, and one node alias (parented by the issuer, matched by selectors)
//! parents a few more entries every agent gets.
//!
//! Run: cargo bench -p sigil-issuer --bench authorized_entries
//! Tunables: SIGIL_BENCH_ENTRIES (default 20000), SIGIL_BENCH_AGENTS (2000),
//! SIGIL_BENCH_CALLS (200), SIGIL_BENCH_DATABASE_URL (default: a SQLite file
//! in a temporary directory; postgres://... for a PostgreSQL server whose
//! database is empty).

use std::time::{Duration, Instant};

use sigil_issuer::config::database::DatabaseUrl;
use sigil_issuer::store::{issuer_of, Agent, EntryFields, EntryGraph, Selector, Store};

const NOW: i64 = 1_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn agent_id(i: usize) -> String {
    format!("spiffe://bench.example/agent/join_token/a{i}")
}

fn entry(spiffe_id: String, parent_id: String, selector: &str) -> EntryFields {
    EntryFields {
        spiffe_id,
        parent_id,
        selectors: vec![Selector::parse(selector).unwrap()],
        ..EntryFields::default()
    }
}

/// Fills the store; returns how many entries it holds.
async fn populate(store: &Store, entries: usize, agents: usize) -> usize {
    let cluster = Selector::parse("k8s_psat:cluster:bench").unwrap();
    for i in 0..agents {
        let agent = Agent {
            spiffe_id: agent_id(i),
            attestation_type: "join_token".into(),
            serial: "01".into(),
            new_serial: String::new(),
            expires_at: NOW * 10,
            banned: false,
            attested_at: 1,
            selectors: vec![cluster.clone()],
        };
        store.upsert_agent(&agent, 1).await.unwrap();
    }
    let issuer = issuer_of(&agent_id(0)).unwrap();
    let alias = "spiffe://bench.example/cluster/bench".to_owned();
    let mut created = 0;
    let create = |fields: EntryFields| async move {
        store.create_entry(&fields, 1).await.unwrap();
    };
    create(entry(alias.clone(), issuer, "k8s_psat:cluster:bench")).await;
    created += 1;
    for w in 0..4 {
        let id = format!("spiffe://bench.example/everywhere/{w}");
        create(entry(id, alias.clone(), "unix:uid:1000")).await;
        created += 1;
    }
    let per_agent = ((entries - created) / agents).max(2);
    for i in 0..agents {
        let node = format!("spiffe://bench.example/node/{i}");
        create(entry(node.clone(), agent_id(i), "unix:uid:0")).await;
        created += 1;
        for w in 1..per_agent {
            let id = format!("spiffe://bench.example/node/{i}/w{w}");
            create(entry(id, node.clone(), "unix:uid:1000")).await;
            created += 1;
        }
    }
    created
}

/// The check as it was: the whole table read and indexed for each call.
async fn baseline(store: &Store, agent: &str) -> usize {
    let graph = EntryGraph::new(store.live_entries().await.unwrap());
    let selectors = store.agent_selectors(agent).await.unwrap();
    graph
        .authorized(agent, issuer_of(agent).as_deref(), &selectors, NOW)
        .entries
        .len()
}

async fn subtree(store: &Store, agent: &str) -> usize {
    store.authorized_entries(agent, NOW).await.unwrap().len()
}

struct Timings(Vec<Duration>);

impl Timings {
    fn at(&self, fraction: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * fraction) as usize]
    }

    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<9} mean {:>9.3} ms, p50 {:>9.3} ms, p99 {:>9.3} ms (n={})",
            self.mean().as_secs_f64() * 1e3,
            self.at(0.5).as_secs_f64() * 1e3,
            self.at(0.99).as_secs_f64() * 1e3,
            self.0.len()
        )
    }
}

fn main() {
    let entries = env_or("SIGIL_BENCH_ENTRIES", 20_000);
    let agents = env_or("SIGIL_BENCH_AGENTS", 2_000).max(1);
    let calls = env_or("SIGIL_BENCH_CALLS", 200).max(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let (url, connect) = match std::env::var("SIGIL_BENCH_DATABASE_URL") {
        Ok(url) => (DatabaseUrl::parse(&url).unwrap(), url),
        Err(_) => (
            DatabaseUrl::Sqlite(path.clone()),
            format!("sqlite://{}", path.display()),
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let started = Instant::now();
        let held = populate(&store, entries, agents).await;
        println!(
            "store: {held} entries over {agents} agents, written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let agents_asked: Vec<String> = (0..calls).map(|c| agent_id(c * 7919 % agents)).collect();
        // One phase each: the baseline's whole-table reads would otherwise
        // evict the pages the subtree reads need from each connection's cache.
        // Table statistics as a running database has them (PostgreSQL's
        // autovacuum gathers them), so both queries are planned for its size.
        let pool = sqlx::AnyPool::connect(&connect).await.unwrap();
        sqlx::query("ANALYZE").execute(&pool).await.unwrap();
        pool.close().await;
        let (mut after, mut found) = (Vec::new(), Vec::new());
        for agent in &agents_asked {
            let start = Instant::now();
            found.push(subtree(&store, agent).await);
            after.push(start.elapsed());
        }
        let mut before = Vec::new();
        for (agent, found) in agents_asked.iter().zip(found) {
            let start = Instant::now();
            let expected = baseline(&store, agent).await;
            before.push(start.elapsed());
            assert_eq!(found, expected, "{agent}: both ways must agree");
            assert!(found > 4, "{agent} has its own entries and the alias's");
        }
        let (before, after) = (Timings(before), Timings(after));
        println!("{}", before.line("baseline"));
        println!("{}", after.line("subtree"));
        println!(
            "ratio     subtree / baseline: mean {:.4}, p99 {:.4}",
            after.mean().as_secs_f64() / before.mean().as_secs_f64(),
            after.at(0.99).as_secs_f64() / before.at(0.99).as_secs_f64()
        );
    });
}
