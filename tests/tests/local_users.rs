//! `sigil-agent up` on a machine with several users: any local user reaches
//! the Workload API socket while the issuer's keys, database and admin socket
//! stay private; one `up` per data directory; and a client that cannot
//! connect says why, naming the path.
//!
//! Other users are real: as root the tests switch to `nobody` with
//! `setpriv`; where they cannot, they skip and say why.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sigil_tests::*;

const NOBODY: u32 = 65534;

/// Why this process cannot run commands as another user, if it cannot.
fn cannot_switch_users() -> Option<String> {
    if current_uid() != 0 {
        return Some(format!("running as uid {}, not root", current_uid()));
    }
    match Command::new("setpriv").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("setpriv is not installed".into()),
    }
}

/// A copy of a binary that any user may run (the build directory may sit
/// under a directory closed to others).
fn public_binary(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(binary(name), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `command` run as `nobody`.
fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", &NOBODY.to_string()])
        .args(["--regid", &NOBODY.to_string()])
        .arg("--clear-groups")
        .arg(program);
    command
}

/// A temp directory every user may enter (tempfile makes them 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The value after `prefix` on the line that has it.
fn printed(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
        .to_owned()
}

#[test]
fn up_serves_another_local_user_through_the_printed_socket() {
    if let Some(why) = cannot_switch_users() {
        println!("skipped: cannot switch users ({why})");
        return;
    }
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let up = UpProcess::start(&data, &[]);
    let lines = up.wait_for("export SIGIL_ADMIN_SOCKET=");
    let endpoint = printed(&lines, "export SPIFFE_ENDPOINT_SOCKET=");
    let admin_socket = printed(&lines, "export SIGIL_ADMIN_SOCKET=");

    // Registered as a user would, through the admin socket `up` printed.
    let (ok, _, stderr) = run(Command::new(binary("sigil-issuer"))
        .args([
            "entry",
            "create",
            "--parent-id",
            "spiffe://example.org/node/local",
        ])
        .args(["--spiffe-id", "spiffe://example.org/user/nobody"])
        .args(["--selector", &format!("unix:uid:{NOBODY}")])
        .env("SIGIL_ADMIN_SOCKET", &admin_socket));
    assert!(ok, "{stderr}");

    let agent = public_binary(dir.path(), "sigil-agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let x509 = loop {
        let (ok, stdout, stderr) = run(as_nobody(&agent)
            .args(["api", "fetch", "x509"])
            .env("SPIFFE_ENDPOINT_SOCKET", &endpoint));
        if ok {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "nobody got no X509-SVID: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(x509.contains("spiffe://example.org/user/nobody"), "{x509}");
    let (ok, jwt, stderr) = run(as_nobody(&agent)
        .args([
            "api",
            "fetch",
            "jwt",
            "--audience",
            "spiffe://example.org/db",
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint));
    assert!(ok, "{stderr}");
    assert!(jwt.contains("spiffe://example.org/user/nobody"), "{jwt}");

    // The admin socket is not for other users.
    let issuer = public_binary(dir.path(), "sigil-issuer");
    let (ok, _, stderr) = run(as_nobody(&issuer)
        .args(["entry", "list"])
        .env("SIGIL_ADMIN_SOCKET", &admin_socket));
    assert!(!ok);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(up.interrupt().success());
}

/// Every path under `dir` with its mode and whether it is a socket.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32, bool)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((
            path.clone(),
            meta.permissions().mode() & 0o7777,
            meta.file_type().is_socket(),
        ));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn keys_database_and_admin_socket_are_private() {
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let up = UpProcess::start(&data, &[]);
    let lines = up.wait_for("export SPIFFE_ENDPOINT_SOCKET=");
    let endpoint = printed(&lines, "export SPIFFE_ENDPOINT_SOCKET=");
    // A fetch makes the agent mint, so every file it keeps exists.
    let (ok, _, stderr) = run(Command::new(binary("sigil-agent"))
        .args(["api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint));
    assert!(ok, "{stderr}");

    let mut paths = Vec::new();
    walk(&data, &mut paths);
    let listing: Vec<String> = paths
        .iter()
        .map(|(p, mode, _)| format!("{mode:04o} {}", p.strip_prefix(&data).unwrap().display()))
        .collect();
    println!("{}", listing.join("\n"));
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let secret = |p: &Path| {
        let n = name(p);
        n.ends_with(".key")
            || n.contains(".db")
            || n == "admin.sock"
            || p.parent().is_some_and(|d| name(d) == "keys")
    };
    let secrets: Vec<_> = paths.iter().filter(|(p, _, _)| secret(p)).collect();
    for wanted in [
        "sigil.db",
        "sigil.db-wal",
        "sigil.db-shm",
        "admin.sock",
        "svid.key",
    ] {
        assert!(
            secrets.iter().any(|(p, _, _)| name(p) == wanted),
            "{wanted} missing from {listing:#?}"
        );
    }
    for (path, mode, _) in &secrets {
        assert_eq!(
            mode & 0o077,
            0,
            "{} is open to group or others: {mode:04o}",
            path.display()
        );
    }
    for private in ["issuer", "agent"] {
        let mode = std::fs::metadata(data.join(private))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{private}/ is {mode:03o}");
    }
    let api = paths
        .iter()
        .find(|(p, _, socket)| *socket && name(p) == "api.sock")
        .expect("api.sock");
    assert_eq!(api.1, 0o777, "every local user may connect to api.sock");
    assert!(up.interrupt().success());
}

#[test]
fn a_second_up_on_the_same_directory_is_refused_and_takes_nothing() {
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let first = UpProcess::start(&data, &[]);
    let lines = first.wait_for("export SPIFFE_ENDPOINT_SOCKET=");
    let endpoint = printed(&lines, "export SPIFFE_ENDPOINT_SOCKET=");

    let (ok, _, stderr) = run(Command::new(binary("sigil-agent"))
        .args(["up", "--trust-domain", "example.org", "--data-dir"])
        .arg(&data));
    assert!(!ok, "a second up must not start");
    assert!(
        stderr.contains("in use") && stderr.contains(&first.child.id().to_string()),
        "the refusal names the holder's pid: {stderr}"
    );
    // The first one still owns and serves its sockets.
    let (ok, _, stderr) = run(Command::new(binary("sigil-agent"))
        .args(["api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint));
    assert!(ok, "{stderr}");
    assert!(first.interrupt().success());
}

#[test]
fn a_client_that_cannot_connect_says_why() {
    let dir = open_tempdir();
    let missing = dir.path().join("missing.sock");
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"not a socket").unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let closed_dir = dir.path().join("closed");
    std::fs::create_dir(&closed_dir).unwrap();
    let closed = closed_dir.join("api.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&closed).unwrap();
    std::fs::set_permissions(&closed_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let agent = public_binary(dir.path(), "sigil-agent");
    let fetch = |socket: &Path, other_user: bool| {
        let mut command = if other_user {
            as_nobody(&agent)
        } else {
            Command::new(&agent)
        };
        run(command
            .args(["api", "fetch", "x509", "--socket-path"])
            .arg(socket))
    };
    let mut cases = vec![
        (&missing, false, "no such file"),
        (&file, false, "is not a socket"),
        (&stale, false, "nothing is listening"),
    ];
    match cannot_switch_users() {
        None => cases.push((&closed, true, "permission denied")),
        Some(why) => println!("permission case skipped: cannot switch users ({why})"),
    }
    for (socket, other_user, cause) in cases {
        let (ok, _, stderr) = fetch(socket, other_user);
        assert!(!ok, "{}", socket.display());
        assert!(
            stderr.contains(cause) && stderr.contains(&socket.display().to_string()),
            "{}: expected {cause:?} and the path in {stderr:?}",
            socket.display()
        );
    }
}
