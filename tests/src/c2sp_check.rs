//! The Go reference implementation of C2SP signed notes and transparency logs
//! (golang.org/x/mod/sumdb/note and tlog), built from `tests/go/c2sp-check`
//! and run against the issuer's log endpoint: it verifies the checkpoint,
//! every tile and entry bundle, every leaf's inclusion and consistency with
//! an older checkpoint, independently of Sigil's own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Where Debian's golang-golang-x-mod-dev puts the library sources. The
/// build runs in GOPATH mode because modules cannot be downloaded here.
const GOPATH: &str = "/usr/share/gocode";

const INSTALL: &str = "apt-get install golang-go golang-golang-x-mod-dev";

/// The `c2sp-check` binary, built once per test process.
pub fn c2sp_check_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build)
}

fn build() -> PathBuf {
    let library = Path::new(GOPATH).join("src/golang.org/x/mod/sumdb/tlog");
    assert!(
        library.is_dir(),
        "{} is missing: checking the transparency log needs the Go tlog library ({INSTALL})",
        library.display()
    );
    // Next to the workspace binaries, e.g. target/debug/c2sp-check/.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("c2sp-check");
    std::fs::create_dir_all(&dir).unwrap();
    // Test processes may build at the same time: each writes its own file
    // and renames it into place.
    let built = dir.join(format!("c2sp-check.{}", std::process::id()));
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .arg("-o")
        .arg(&built)
        .arg(".")
        .current_dir(crate::workspace_root().join("tests/go/c2sp-check"))
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        // Pure Go: no C compiler needed for net.
        .env("CGO_ENABLED", "0");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`go` is not on PATH: checking the transparency log needs it ({INSTALL})")
        }
        Err(e) => panic!("running {cmd:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "building c2sp-check with {cmd:?} failed (missing packages? {INSTALL}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = dir.join("c2sp-check");
    std::fs::rename(&built, &binary).unwrap();
    binary
}

/// The `c2sp-check` command for the log at `base_url` (the URL the tile
/// paths hang off, e.g. `http://127.0.0.1:PORT/log`) with verifier key
/// `vkey`. With `old_checkpoint`, it also proves that signed note's tree a
/// prefix of the current one; with `save_checkpoint`, it writes the fetched
/// note there. It prints `ok: origin=.. size=N leaves checked=N` and exits
/// 0, or names the failure on stderr and exits 1.
pub fn c2sp_check_command(
    vkey: &str,
    base_url: &str,
    old_checkpoint: Option<&Path>,
    save_checkpoint: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(c2sp_check_binary());
    cmd.args(["-vkey", vkey, "-url", base_url]);
    if let Some(path) = old_checkpoint {
        cmd.arg("-old-checkpoint").arg(path);
    }
    if let Some(path) = save_checkpoint {
        cmd.arg("-save-checkpoint").arg(path);
    }
    cmd
}

/// Runs [`c2sp_check_command`] and waits for it. This blocks the calling
/// thread: against an issuer in this process use [`run_c2sp_check_async`].
pub fn run_c2sp_check(
    vkey: &str,
    base_url: &str,
    old_checkpoint: Option<&Path>,
    save_checkpoint: Option<&Path>,
) -> Output {
    let mut cmd = c2sp_check_command(vkey, base_url, old_checkpoint, save_checkpoint);
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// [`run_c2sp_check`] off the runtime's workers, so that an issuer serving
/// the log on this runtime keeps answering.
pub async fn run_c2sp_check_async(
    vkey: &str,
    base_url: &str,
    old_checkpoint: Option<&Path>,
    save_checkpoint: Option<&Path>,
) -> Output {
    let (vkey, base_url) = (vkey.to_owned(), base_url.to_owned());
    let old = old_checkpoint.map(Path::to_path_buf);
    let save = save_checkpoint.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        run_c2sp_check(&vkey, &base_url, old.as_deref(), save.as_deref())
    })
    .await
    .unwrap()
}
