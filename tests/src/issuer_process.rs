//! `sigil-issuer run` as a process, for tests of the binary itself: its
//! flags, its logs, and replicas killed with a signal.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{binary, run};

/// `sigil-issuer run` for example.org, with its data directory and admin
/// socket (`admin/admin.sock`) in `dir`, and its agent API and HTTP
/// endpoint on `agent_api` and `http` (`127.0.0.1:0`: any free port).
pub fn issuer_run(dir: &Path, agent_api: &str, http: &str) -> Command {
    let mut command = Command::new(binary("sigil-issuer"));
    command
        .args(["run", "--trust-domain", "example.org"])
        .args(["--agent-api-address", agent_api, "--http-address", http])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-socket-path")
        .arg(admin_socket(dir));
    command
}

/// The admin socket of an issuer [`issuer_run`] started in `dir`.
pub fn admin_socket(dir: &Path) -> std::path::PathBuf {
    dir.join("admin/admin.sock")
}

/// Waits until the issuer answers `healthcheck` on `admin`, for at most 30 s.
pub fn wait_healthy(admin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(Command::new(binary("sigil-issuer"))
        .args(["healthcheck", "--socket-path"])
        .arg(admin))
    .0
    {
        assert!(
            Instant::now() < deadline,
            "the issuer did not answer on {} within 30 s",
            admin.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
