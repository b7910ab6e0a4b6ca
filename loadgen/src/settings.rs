//! The command line, and the bounded settings a run is made from.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use workload_api::id::{parse_trust_domain, TrustDomain};

/// Simulates agents against sigil-issuer replicas and prints what it
/// measured: attach time, entry-to-SVID and bundle-to-agents latency,
/// issuer CPU and memory, and database queries at steady state.
///
/// The run leaves what it made in the issuer (agents, entries under
/// spiffe://<td>/load/, a foreign bundle load-<n>.example): point it at an
/// issuer kept for load runs.
#[derive(Debug, Parser)]
#[command(name = "sigil-loadgen", version)]
pub struct Cli {
    /// How many agents to simulate.
    #[arg(long)]
    agents: usize,
    /// host:port of an issuer's agent API; repeat for replicas (agents are
    /// spread over them round-robin).
    #[arg(long = "issuer-address", required = true)]
    issuer_addresses: Vec<String>,
    /// The admin socket of one of the issuers.
    #[arg(long)]
    admin_socket: PathBuf,
    /// The trust domain; default: the one the admin API reports.
    #[arg(long)]
    trust_domain: Option<String>,
    /// The trust bundle (JWK Set or PEM) agents bootstrap with; default:
    /// fetched from the admin API.
    #[arg(long, requires = "trust_domain")]
    bundle: Option<PathBuf>,
    /// Entries to create, one at a time, timing each until its SVID is signed.
    #[arg(long, default_value_t = 100)]
    entries: usize,
    /// Seconds of the steady-state window, in which the tool changes nothing.
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// An issuer process to account CPU and memory to; repeatable.
    #[arg(long = "issuer-pid")]
    issuer_pids: Vec<u32>,
    /// The issuers' PostgreSQL database, for queries per second.
    #[arg(long)]
    database_url: Option<String>,
    /// Agents attaching at once.
    #[arg(long, default_value_t = 200)]
    attach_concurrency: usize,
    /// Seconds an agent may take from its attestation to a complete first snapshot.
    #[arg(long, default_value_t = 120)]
    attach_timeout_secs: u64,
    /// Seconds to wait for an entry's SVID, or for the bundle to reach every agent.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What a run is made from, every value within its bounds.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agents: usize,
    pub issuer_addresses: Vec<String>,
    pub admin_socket: PathBuf,
    pub trust_domain: Option<TrustDomain>,
    pub bundle: Option<PathBuf>,
    pub entries: usize,
    pub steady: Duration,
    pub issuer_pids: Vec<u32>,
    pub database_url: Option<String>,
    pub attach_concurrency: usize,
    pub attach_timeout: Duration,
    pub wait: Duration,
    pub json: bool,
}

pub const MAX_AGENTS: usize = 50_000;
pub const MAX_ISSUERS: usize = 16;
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_SECS: u64 = 3600;
pub const MAX_PIDS: usize = 16;
pub const MAX_ATTACH_CONCURRENCY: usize = 5_000;

/// A setting out of its bounds; each names the flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("--{flag} {value} is out of bounds: {min}..={max}")]
    OutOfBounds {
        flag: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("--issuer-address {address:?} is not host:port: {reason}")]
    Address { address: String, reason: String },
    #[error("--trust-domain {0}")]
    TrustDomain(String),
    #[error("--database-url must be a postgres:// URL (query counts come from PostgreSQL); got scheme {scheme:?}")]
    NotPostgres { scheme: String },
}

fn bounded(flag: &'static str, value: u64, min: u64, max: u64) -> Result<u64, SettingsError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SettingsError::OutOfBounds {
            flag,
            value,
            min,
            max,
        })
    }
}

fn count(flag: &'static str, value: usize, min: usize, max: usize) -> Result<usize, SettingsError> {
    bounded(flag, value as u64, min as u64, max as u64).map(|v| v as usize)
}

fn seconds(flag: &'static str, value: u64) -> Result<Duration, SettingsError> {
    bounded(flag, value, 1, MAX_SECS).map(Duration::from_secs)
}

/// Checks `host:port` without resolving it: the port a number 1..=65535.
fn issuer_address(address: String) -> Result<String, SettingsError> {
    let reason = match address.rsplit_once(':') {
        None => "no port".to_owned(),
        Some(("", _)) => "no host".to_owned(),
        Some((_, port)) => match port.parse::<u16>() {
            Ok(0) => "port 0".to_owned(),
            Ok(_) => return Ok(address),
            Err(e) => format!("port {port:?}: {e}"),
        },
    };
    Err(SettingsError::Address { address, reason })
}

fn postgres_url(url: String) -> Result<String, SettingsError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if scheme == "postgres" || scheme == "postgresql" {
        Ok(url)
    } else {
        Err(SettingsError::NotPostgres {
            scheme: scheme.to_owned(),
        })
    }
}

impl TryFrom<Cli> for Settings {
    type Error = SettingsError;

    fn try_from(cli: Cli) -> Result<Self, SettingsError> {
        count("issuer-address", cli.issuer_addresses.len(), 1, MAX_ISSUERS)?;
        count("issuer-pid", cli.issuer_pids.len(), 0, MAX_PIDS)?;
        Ok(Settings {
            agents: count("agents", cli.agents, 1, MAX_AGENTS)?,
            issuer_addresses: cli
                .issuer_addresses
                .into_iter()
                .map(issuer_address)
                .collect::<Result<_, _>>()?,
            admin_socket: cli.admin_socket,
            trust_domain: cli
                .trust_domain
                .map(|td| {
                    parse_trust_domain(&td).map_err(|e| SettingsError::TrustDomain(e.to_string()))
                })
                .transpose()?,
            bundle: cli.bundle,
            entries: count("entries", cli.entries, 0, MAX_ENTRIES)?,
            steady: seconds("steady-secs", cli.steady_secs)?,
            issuer_pids: cli.issuer_pids,
            database_url: cli.database_url.map(postgres_url).transpose()?,
            attach_concurrency: count(
                "attach-concurrency",
                cli.attach_concurrency,
                1,
                MAX_ATTACH_CONCURRENCY,
            )?,
            attach_timeout: seconds("attach-timeout-secs", cli.attach_timeout_secs)?,
            wait: seconds("wait-secs", cli.wait_secs)?,
            json: cli.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[&str]) -> Result<Settings, SettingsError> {
        let mut args = vec!["sigil-loadgen"];
        if !extra.contains(&"--agents") {
            args.extend(["--agents", "10"]);
        }
        args.extend([
            "--issuer-address",
            "127.0.0.1:8081",
            "--admin-socket",
            "/tmp/admin.sock",
        ]);
        args.extend_from_slice(extra);
        Settings::try_from(Cli::try_parse_from(args).expect("arguments parse"))
    }

    #[test]
    fn defaults_are_within_bounds() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.agents, 10);
        assert_eq!(s.entries, 100);
        assert_eq!(s.steady, Duration::from_secs(30));
        assert_eq!(s.attach_concurrency, 200);
        assert!(s.database_url.is_none() && s.issuer_pids.is_empty() && !s.json);
    }

    #[test]
    fn out_of_bounds_values_name_their_flag() {
        for (args, flag) in [
            (&["--agents", "0"][..], "agents"),
            (&["--agents", "50001"][..], "agents"),
            (&["--entries", "10001"][..], "entries"),
            (&["--steady-secs", "0"][..], "steady-secs"),
            (&["--steady-secs", "3601"][..], "steady-secs"),
            (&["--attach-concurrency", "0"][..], "attach-concurrency"),
            (&["--attach-timeout-secs", "0"][..], "attach-timeout-secs"),
            (&["--wait-secs", "99999"][..], "wait-secs"),
        ] {
            match settings(args) {
                Err(SettingsError::OutOfBounds { flag: f, .. }) => assert_eq!(f, flag, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let pids: Vec<&str> = (0..=MAX_PIDS).flat_map(|_| ["--issuer-pid", "1"]).collect();
        assert!(matches!(
            settings(&pids),
            Err(SettingsError::OutOfBounds {
                flag: "issuer-pid",
                ..
            })
        ));
    }

    #[test]
    fn issuer_addresses_are_host_and_port() {
        for address in [
            "localhost",
            ":8081",
            "127.0.0.1:0",
            "127.0.0.1:http",
            "h:70000",
        ] {
            assert!(
                matches!(
                    settings(&["--issuer-address", address]),
                    Err(SettingsError::Address { .. })
                ),
                "{address}"
            );
        }
        let s = settings(&["--issuer-address", "[::1]:8082"]).unwrap();
        assert_eq!(s.issuer_addresses, ["127.0.0.1:8081", "[::1]:8082"]);
    }

    #[test]
    fn database_urls_are_postgres() {
        assert!(settings(&["--database-url", "postgres://u@h/db"]).is_ok());
        assert!(settings(&["--database-url", "postgresql://u@h/db"]).is_ok());
        assert_eq!(
            settings(&["--database-url", "sqlite:///tmp/x.db"]).unwrap_err(),
            SettingsError::NotPostgres {
                scheme: "sqlite".into()
            }
        );
    }

    #[test]
    fn trust_domains_are_validated_and_a_bundle_file_needs_one() {
        assert!(matches!(
            settings(&["--trust-domain", "Not Valid"]),
            Err(SettingsError::TrustDomain(_))
        ));
        assert!(Cli::try_parse_from([
            "sigil-loadgen",
            "--agents",
            "1",
            "--issuer-address",
            "h:1",
            "--admin-socket",
            "s",
            "--bundle",
            "b.json"
        ])
        .is_err());
    }
}
