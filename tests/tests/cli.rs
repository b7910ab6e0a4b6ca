//! The `sigil-issuer` binary: a real issuer process and its admin commands.
//! Bad flags and values are refused with a message that names them, a non-zero
//! exit code, and nothing written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use sigil_tests::{binary, issuer_process, run};

struct IssuerProcess {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_issuer() -> IssuerProcess {
    let dir = tempfile::tempdir().unwrap();
    let socket = issuer_process::admin_socket(dir.path());
    let child = issuer_process::issuer_run(dir.path(), "127.0.0.1:0", "127.0.0.1:0")
        .env("SIGIL_LOG_LEVEL", "warn")
        .spawn()
        .unwrap();
    let process = IssuerProcess {
        child,
        socket,
        _dir: dir,
    };
    issuer_process::wait_healthy(&process.socket);
    process
}

fn admin(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("sigil-issuer"));
    cmd.args(args).arg("--socket-path").arg(socket);
    cmd
}

fn entry_count(socket: &Path) -> usize {
    let (ok, stdout, stderr) = run(&mut admin(socket, &["entry", "list", "--json"]));
    assert!(ok, "{stderr}");
    match serde_json::from_str::<serde_json::Value>(&stdout).unwrap() {
        serde_json::Value::Array(items) => items.len(),
        serde_json::Value::Object(_) => 1,
        other => panic!("unexpected {other}"),
    }
}

const PARENT: &str = "spiffe://example.org/agent/join_token/abc";

#[test]
fn entry_commands_round_trip() {
    let issuer = start_issuer();
    let s = &issuer.socket;
    let (ok, stdout, stderr) = run(&mut admin(
        s,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-id",
            PARENT,
            "--selector",
            "unix:uid:1000",
            "--selector",
            "unix:gid:1000",
            "--x509-svid-ttl",
            "30m",
            "--jwt-svid-ttl",
            "120",
            "--dns-name",
            "web.example.org",
            "--hint",
            "internal",
            "--federates-with",
            "other.org",
            "--json",
        ],
    ));
    assert!(ok, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["x509_svid_ttl"], 1800);
    assert_eq!(created["jwt_svid_ttl"], 120);
    assert_eq!(created["selectors"].as_array().unwrap().len(), 2);
    assert_eq!(created["hint"], "internal");
    let id = created["id"].as_str().unwrap().to_owned();

    let (ok, stdout, _) = run(&mut admin(s, &["entry", "show", "--entry-id", &id]));
    assert!(ok);
    assert!(
        stdout.contains("SPIFFE ID        : spiffe://example.org/web"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Selector         : unix:gid:1000"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(&mut admin(
        s,
        &[
            "entry",
            "update",
            "--entry-id",
            &id,
            "--revision",
            "1",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-id",
            PARENT,
            "--selector",
            "unix:uid:1001",
            "--json",
        ],
    ));
    assert!(ok, "{stderr}");
    let updated: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(updated["revision"], 2);
    // A stale revision is refused.
    let (ok, _, stderr) = run(&mut admin(
        s,
        &[
            "entry",
            "update",
            "--entry-id",
            &id,
            "--revision",
            "1",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-id",
            PARENT,
            "--selector",
            "unix:uid:1002",
        ],
    ));
    assert!(!ok);
    assert!(stderr.contains("revision"), "{stderr}");

    // An update changes only the fields it is given.
    let (ok, stdout, stderr) = run(&mut admin(
        s,
        &[
            "entry",
            "update",
            "--entry-id",
            &id,
            "--hint",
            "edge",
            "--json",
        ],
    ));
    assert!(ok, "{stderr}");
    let hinted: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(hinted["hint"], "edge");
    assert_eq!(hinted["revision"], 3);
    for kept in [
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "federates_with",
    ] {
        assert_eq!(hinted[kept], updated[kept], "{kept} is kept");
    }
    let (ok, _, stderr) = run(&mut admin(
        s,
        &["entry", "create", "--spiffe-id", "spiffe://example.org/x"],
    ));
    assert!(!ok);
    assert!(stderr.contains("--parent-id is required"), "{stderr}");

    let (ok, stdout, _) = run(&mut admin(s, &["entry", "delete", "--entry-id", &id]));
    assert!(ok, "{stdout}");
    assert_eq!(entry_count(s), 0);
    let (ok, _, stderr) = run(&mut admin(s, &["entry", "delete", "--entry-id", &id]));
    assert!(!ok);
    assert!(
        stderr.contains("not found") && stderr.contains("NotFound"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_and_values_are_named_and_write_nothing() {
    let issuer = start_issuer();
    let s = &issuer.socket;
    let long_hint = "h".repeat(1100);
    let base = [
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        PARENT,
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--selector", "nocolon"], "--selector"),
        (
            vec!["--selector", "unix:uid:1", "--x509-svid-ttl", "forever"],
            "--x509-svid-ttl",
        ),
        (
            vec!["--selector", "unix:uid:1", "--jwt-svid-ttl", "0"],
            "--jwt-svid-ttl",
        ),
        (vec!["--selector", "unix:uid:1", "--bogus"], "--bogus"),
        (vec![], "--selector"),
        (
            vec!["--selector", "unix:uid:1", "--dns-name", "not a name"],
            "dns_names",
        ),
        (
            vec!["--selector", "unix:uid:1", "--federates-with", "Bad"],
            "federates_with",
        ),
        (
            vec!["--selector", "unix:uid:1", "--hint", &long_hint],
            "hint",
        ),
    ];
    for (extra, named) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter());
        let (ok, _, stderr) = run(&mut admin(s, &args));
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = run(&mut admin(
        s,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://other.org/web",
            "--parent-id",
            PARENT,
            "--selector",
            "unix:uid:1",
        ],
    ));
    assert!(!ok);
    assert!(
        stderr.contains("spiffe_id") && stderr.contains("InvalidArgument"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&mut admin(
        s,
        &["entry", "list", "--spiffe-id", "spiffe://Example.org/x"],
    ));
    assert!(!ok);
    assert!(stderr.contains("--spiffe-id"), "{stderr}");
    assert_eq!(entry_count(s), 0, "nothing was written");
}

#[test]
fn tokens_agents_bundle_and_health() {
    let issuer = start_issuer();
    let s = &issuer.socket;
    let (ok, stdout, stderr) = run(&mut admin(
        s,
        &[
            "token",
            "generate",
            "--ttl",
            "5m",
            "--spiffe-id",
            "spiffe://example.org/node/a",
        ],
    ));
    assert!(ok, "{stderr}");
    let mut lines = stdout.lines();
    let token = lines.next().unwrap().strip_prefix("Token: ").unwrap();
    assert_eq!(token.len(), 40);
    let expires = lines.next().unwrap().strip_prefix("Expires at: ").unwrap();
    assert!(
        humantime::parse_rfc3339(expires).is_ok(),
        "times print as RFC 3339: {expires}"
    );
    let (ok, stdout, stderr) = run(&mut admin(s, &["token", "generate", "--json"]));
    assert!(ok, "{stderr}");
    let generated: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        generated["expires_at"].is_i64(),
        "--json keeps Unix seconds"
    );
    assert_eq!(entry_count(s), 1, "the node alias entry");
    let (ok, list, _) = run(&mut admin(s, &["entry", "list", "--json"]));
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "a list of one is still an array: {list}"
    );

    let (ok, stdout, _) = run(&mut admin(s, &["agent", "list"]));
    assert!(ok);
    assert!(stdout.contains("Found 0 attested agents"));
    let (ok, _, stderr) = run(&mut admin(
        s,
        &[
            "agent",
            "evict",
            "--spiffe-id",
            "spiffe://example.org/agent/join_token/none",
        ],
    ));
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");

    let (ok, pem, _) = run(&mut admin(s, &["bundle", "show", "--format", "pem"]));
    assert!(ok);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.pem"), &pem).unwrap();
    let (ok, text, _) = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.path().join("b.pem")));
    assert!(ok);
    assert!(text.contains("URI:spiffe://example.org"));
    assert!(text.contains("CA:TRUE"));
    let (ok, json, _) = run(&mut admin(s, &["bundle", "show", "--format", "spiffe"]));
    assert!(ok);
    let bundle: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(bundle["spiffe_sequence"].as_u64().unwrap() >= 1);
    assert_eq!(bundle["spiffe_refresh_hint"], 300);

    let missing = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(&mut admin(
        &missing.path().join("none.sock"),
        &["healthcheck"],
    ));
    assert!(!ok);
    assert!(stderr.contains("cannot reach the issuer"), "{stderr}");
}

#[test]
fn config_file_unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\ndefault_x509_svid_tll = \"1h\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = run(Command::new(binary("sigil-issuer"))
        .arg("run")
        .arg("--config")
        .arg(&config));
    assert!(!ok);
    assert!(stderr.contains("default_x509_svid_tll"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was written");
    let (ok, _, stderr) = run(Command::new(binary("sigil-issuer"))
        .args([
            "run",
            "--trust-domain",
            "example.org",
            "--log-format",
            "xml",
            "--data-dir",
        ])
        .arg(dir.path().join("data")));
    assert!(!ok);
    assert!(stderr.contains("log_format"), "{stderr}");
}

/// Every flag of both binaries says what it is for in `--help`.
#[test]
fn every_flag_has_a_help_line() {
    use clap::CommandFactory;
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} --{}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut missing = Vec::new();
    undocumented(
        &sigil_issuer::cli::Cli::command(),
        "sigil-issuer",
        &mut missing,
    );
    undocumented(
        &sigil_agent::cli::Cli::command(),
        "sigil-agent",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "flags without a help line: {missing:#?}"
    );
}

/// An admin socket asked for in a shared directory (mode 1777, as the system
/// temporary directory) is refused, naming the directory, and the directory
/// keeps its mode. A second issuer on a data directory in use is refused,
/// naming the holder, and the first one's socket is left alone. Unknown log
/// levels are refused with the accepted ones.
#[test]
fn shared_directories_and_busy_data_directories_are_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let issuer = |data: &Path, socket: &Path, extra: &[&str]| {
        run(Command::new(binary("sigil-issuer"))
            .args(["run", "--trust-domain", "example.org"])
            .args(["--agent-api-address", "127.0.0.1:0"])
            .args(["--http-address", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--admin-socket-path")
            .arg(socket)
            .args(extra))
    };
    let (ok, _, stderr) = issuer(&dir.path().join("data"), &shared.join("admin.sock"), &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&shared.display().to_string()) && stderr.contains("other users"),
        "{stderr}"
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared directory keeps its mode");
    assert!(!shared.join("admin.sock").exists());

    let (ok, _, stderr) = issuer(
        &dir.path().join("data"),
        &dir.path().join("private/admin.sock"),
        &["--log-level", "loud"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("log_level") && stderr.contains("off, error, warn, info, debug, trace"),
        "{stderr}"
    );

    let running = start_issuer();
    let data = running._dir.path().join("data");
    let (ok, _, stderr) = issuer(&data, &dir.path().join("second/admin.sock"), &[]);
    assert!(
        !ok,
        "a second issuer on the same data directory must not start"
    );
    assert!(
        stderr.contains("in use") && stderr.contains(&running.child.id().to_string()),
        "{stderr}"
    );
    let (ok, _, stderr) = issuer(&dir.path().join("other"), &running.socket, &[]);
    assert!(!ok, "a live admin socket is not taken over");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(run(&mut admin(&running.socket, &["healthcheck"])).0);
}

/// A command whose reader has gone (`| head`) ends quietly with the status
/// of a process stopped by SIGPIPE, not with a panic.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let issuer = start_issuer();
    for args in [&["entry", "list"][..], &["bundle", "show"][..]] {
        let mut child = admin(&issuer.socket, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Every command that prints data takes --json; only those that act (run,
/// up, delete, evict, ban) print none, and the audit log's export and tail
/// print JSON lines anyway.
#[test]
fn every_command_that_prints_data_takes_json() {
    use clap::CommandFactory;
    fn without_json(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let subcommands: Vec<_> = cmd.get_subcommands().collect();
        if subcommands.is_empty() {
            if !cmd.get_arguments().any(|a| a.get_id() == "json") {
                out.push(path.to_owned());
            }
            return;
        }
        for sub in subcommands {
            without_json(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut missing = Vec::new();
    without_json(
        &sigil_issuer::cli::Cli::command(),
        "sigil-issuer",
        &mut missing,
    );
    without_json(
        &sigil_agent::cli::Cli::command(),
        "sigil-agent",
        &mut missing,
    );
    let acting = [
        "sigil-issuer run",
        "sigil-issuer entry delete",
        "sigil-issuer federation delete",
        "sigil-issuer bundle delete",
        "sigil-issuer agent evict",
        "sigil-issuer agent ban",
        "sigil-agent run",
        "sigil-agent up",
    ];
    // These print JSON lines whatever is asked.
    let json_lines = ["sigil-issuer audit export", "sigil-issuer audit tail"];
    missing.retain(|path| !acting.contains(&path.as_str()) && !json_lines.contains(&path.as_str()));
    assert!(missing.is_empty(), "commands without --json: {missing:#?}");
}
