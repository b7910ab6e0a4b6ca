//! `sigil-loadgen` against an issuer on PostgreSQL: every simulated agent
//! attaches, every entry's SVID and the foreign bundle reach the agents,
//! and the JSON report carries every measurement.

use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use sigil_issuer::clock::SystemClock;
use sigil_tests::postgres::Postgres;
use sigil_tests::{binary, run, TestIssuer};

const AGENTS: u64 = 20;
const ENTRIES: u64 = 5;

fn field<'a>(report: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(report, |value, key| {
        value
            .get(key)
            .unwrap_or_else(|| panic!("the report has no {path}: {report:#}"))
    })
}

fn number(report: &Value, path: &str) -> f64 {
    field(report, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_attach_receive_svids_and_bundles() {
    let postgres = Postgres::start();
    let database = postgres.create_database("sigil");
    let database_url = format!(
        "{}/sigil",
        postgres.url().rsplit_once('/').expect("URL has a path").0
    );
    let issuer = TestIssuer::start_with(Arc::new(SystemClock), |config| {
        config.database_url = database;
    })
    .await;

    let mut command = Command::new(binary("sigil-loadgen"));
    command
        .args(["--agents", &AGENTS.to_string()])
        .args(["--entries", &ENTRIES.to_string()])
        .args(["--steady-secs", "2"])
        .args(["--wait-secs", "10"])
        .arg("--issuer-address")
        .arg(issuer.running.agent_api_address.to_string())
        .arg("--admin-socket")
        .arg(&issuer.running.admin_socket_path)
        // The issuer runs in this process.
        .args(["--issuer-pid", &std::process::id().to_string()])
        .args(["--database-url", &database_url])
        .arg("--json");
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap();
    assert!(ok, "sigil-loadgen failed:\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stdout}"));

    assert_eq!(field(&report, "pass"), &Value::Bool(true), "{report:#}");
    assert_eq!(number(&report, "agents"), AGENTS as f64);
    assert_eq!(number(&report, "attach.attached"), AGENTS as f64);
    assert_eq!(number(&report, "attach.failed"), 0.0);
    assert!(number(&report, "attach.seconds") > 0.0);
    assert_eq!(number(&report, "attach.per_agent.count"), AGENTS as f64);

    assert_eq!(number(&report, "entry_to_svid.created"), ENTRIES as f64);
    assert_eq!(number(&report, "entry_to_svid.missing"), 0.0);
    assert_eq!(
        number(&report, "entry_to_svid.latency.count"),
        ENTRIES as f64
    );
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(number(&report, &format!("entry_to_svid.latency.{key}")) > 0.0);
    }

    number(&report, "entry_to_svid.renewals_meanwhile");
    assert!(number(&report, "entry_to_svid.database_queries") > 0.0);
    assert!(number(&report, "entry_to_svid.issuer_cpu_seconds") >= 0.0);

    assert_eq!(number(&report, "bundle_to_agents.received"), AGENTS as f64);
    assert_eq!(number(&report, "bundle_to_agents.missing"), 0.0);
    assert!(field(&report, "bundle_to_agents.trust_domain")
        .as_str()
        .unwrap()
        .starts_with("load-"));
    let last = number(&report, "bundle_to_agents.last_ms");
    assert_eq!(last, number(&report, "bundle_to_agents.latency.max_ms"));
    assert!(number(&report, "bundle_to_agents.latency.p50_ms") <= last);

    assert!(number(&report, "steady.seconds") >= 2.0);
    number(&report, "steady.renewals");
    number(&report, "steady.stream_breaks");

    for key in [
        "clock_ticks_per_second",
        "attach_cpu_seconds",
        "attach_cpu_seconds_per_1000_agents",
        "steady_cpu_seconds",
        "steady_cpu_seconds_per_1000_agents",
        "steady_cpu_cores",
    ] {
        assert!(number(&report, &format!("issuer.{key}")) >= 0.0, "{key}");
    }
    assert!(number(&report, "issuer.rss_mib_after_attach") > 0.0);
    assert!(number(&report, "issuer.rss_mib_after_attach_per_1000_agents") > 0.0);
    assert!(number(&report, "issuer.rss_mib_attach_growth_per_1000_agents") >= 0.0);

    assert_eq!(
        field(&report, "database.source"),
        &Value::String("pg_stat_statements".into())
    );
    for key in [
        "queries",
        "seconds",
        "queries_per_second",
        "queries_per_second_per_agent",
        "ratio_to_spire",
    ] {
        assert!(number(&report, &format!("database.{key}")) >= 0.0, "{key}");
    }
    assert!((number(&report, "database.spire_queries_per_second_per_agent") - 13.43).abs() < 0.01);
    field(&report, "database.queries_per_renewal");

    for key in [
        "renewals",
        "renew_failures",
        "sign_failures",
        "stream_breaks",
    ] {
        number(&report, &format!("totals.{key}"));
    }
    assert!(field(&report, "errors").is_object());
}
