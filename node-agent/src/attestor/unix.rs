//! The unix workload attestor: selectors from the caller's peer credentials and
//! its process in /proc.
//!
//! `unix:uid`, `unix:gid` (from the socket), `unix:user`, `unix:group` (names
//! from /etc/passwd and /etc/group), `unix:supplementary_gid` (from
//! /proc/<pid>/status), `unix:path` and `unix:sha256` (of /proc/<pid>/exe).
//!
//! A pid can be reused once its process exits. The process start time is read
//! before and after everything else, and the process's real and effective ids
//! must equal the socket's peer credentials, so a recycled pid does not lend
//! another binary's path or hash to the caller.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use workload_api::selector::{Selector, Selectors};
use workload_api::source::Caller;

/// Why a caller could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("caller process {pid} is gone or unreadable: {reason}")]
    ProcessGone { pid: i32, reason: ProcError },
    #[error("caller process {pid} changed while it was attested (pid reused)")]
    PidReused { pid: i32 },
    #[error("caller process {pid} runs as uid {actual}, but the socket peer is uid {expected}")]
    CredentialMismatch {
        pid: i32,
        expected: u32,
        actual: u32,
    },
}

/// Identifies a binary on disk for the hash cache: same inode and mtime and
/// size means the same contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// /etc/passwd and /etc/group as id -> name maps, re-read at most once a second.
#[derive(Debug, Default)]
struct Names {
    loaded: Option<std::time::Instant>,
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

const NAMES_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's last attestation, kept with the connection. `proc_dir` is
/// an open handle on the caller's /proc/<pid>: it stays bound to that process,
/// so once the process exits (whoever reuses its pid) nothing resolves under it.
#[derive(Debug, Clone)]
struct Attested {
    pid: i32,
    proc_dir: Arc<std::fs::File>,
    exe: Option<FileKey>,
    selectors: Selectors,
    at: std::time::Instant,
}

/// What /proc says about a caller's process.
struct ProcessFacts {
    selectors: Vec<Selector>,
    proc_dir: std::fs::File,
    exe: Option<FileKey>,
}

/// How long a connection's attestation is reused while its process and
/// binary are unchanged; group membership changes show after this.
const ATTESTED_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The unix attestor. Hashes of executables are cached by inode and mtime;
/// user and group names for a second; a connection's selectors while its
/// process is alive and its binary unchanged, for two seconds.
#[derive(Debug)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
    hashes: Mutex<HashMap<FileKey, String>>,
    names: Mutex<Names>,
}

const HASH_CACHE_LIMIT: usize = 4096;

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new("/proc", "/etc")
    }
}

impl UnixAttestor {
    pub fn new(proc_root: impl Into<PathBuf>, etc_root: impl Into<PathBuf>) -> Self {
        UnixAttestor {
            proc_root: proc_root.into(),
            etc_root: etc_root.into(),
            hashes: Mutex::new(HashMap::new()),
            names: Mutex::new(Names::default()),
        }
    }

    /// The connection's earlier selectors, if the process attested then is
    /// still alive and runs the same binary: one stat through the handle on
    /// its /proc directory instead of five reads of /proc.
    fn reuse(&self, caller: &Caller, pid: i32) -> Option<Selectors> {
        let cached: Attested = caller.cache.get()?;
        if cached.pid != pid || cached.at.elapsed() > ATTESTED_TTL {
            return None;
        }
        let dir = PathBuf::from(format!("/proc/self/fd/{}", cached.proc_dir.as_raw_fd()));
        let alive_and_same = match &cached.exe {
            Some(exe) => file_key(&dir.join("exe")).is_ok_and(|now| now == *exe),
            None => std::fs::metadata(dir.join("stat")).is_ok(),
        };
        alive_and_same.then_some(cached.selectors)
    }

    /// The user and group names for `uid` and `gid`.
    fn names_of(&self, uid: u32, gid: u32) -> (Option<String>, Option<String>) {
        let mut names = self.names.lock().expect("names cache");
        if names.loaded.is_none_or(|at| at.elapsed() > NAMES_REFRESH) {
            names.users = id_names(&self.etc_root.join("passwd"));
            names.groups = id_names(&self.etc_root.join("group"));
            names.loaded = Some(std::time::Instant::now());
        }
        (
            names.users.get(&uid).cloned(),
            names.groups.get(&gid).cloned(),
        )
    }

    /// Attests without hashing a new executable: `None` when the caller's
    /// binary has not been hashed yet and [`UnixAttestor::attest`] (which may
    /// read the whole file) is needed.
    pub fn attest_cached(&self, caller: &Caller) -> Option<Result<Selectors, AttestError>> {
        self.attest_with(caller, false)
    }

    /// The selectors of `caller`, hashing its executable if needed.
    pub fn attest(&self, caller: &Caller) -> Result<Selectors, AttestError> {
        self.attest_with(caller, true)
            .expect("hashing is allowed, so an answer is always given")
    }

    fn attest_with(
        &self,
        caller: &Caller,
        may_hash: bool,
    ) -> Option<Result<Selectors, AttestError>> {
        let pid = caller.pid.filter(|p| *p > 0);
        if let Some(cached) = pid.and_then(|pid| self.reuse(caller, pid)) {
            return Some(Ok(cached));
        }
        let mut selectors = vec![
            Selector::new("unix", format!("uid:{}", caller.uid)),
            Selector::new("unix", format!("gid:{}", caller.gid)),
        ];
        let (user, group) = self.names_of(caller.uid, caller.gid);
        if let Some(user) = user {
            selectors.push(Selector::new("unix", format!("user:{user}")));
        }
        if let Some(group) = group {
            selectors.push(Selector::new("unix", format!("group:{group}")));
        }
        let Some(pid) = pid else {
            return Some(Ok(selectors.into()));
        };
        match self.process_selectors(pid, caller, may_hash) {
            Ok(Some(facts)) => {
                selectors.extend(facts.selectors);
                let selectors: Selectors = selectors.into();
                caller.cache.set(Attested {
                    pid,
                    proc_dir: Arc::new(facts.proc_dir),
                    exe: facts.exe,
                    selectors: selectors.clone(),
                    at: std::time::Instant::now(),
                });
                Some(Ok(selectors))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Selectors read from /proc/<pid>, with the pid-reuse checks; `None`
    /// when the executable would have to be hashed and `may_hash` is false.
    fn process_selectors(
        &self,
        pid: i32,
        caller: &Caller,
        may_hash: bool,
    ) -> Result<Option<ProcessFacts>, AttestError> {
        let mut selectors = Vec::new();
        let dir = self.proc_root.join(pid.to_string());
        let dir = dir.as_path();
        let gone = |reason: ProcError| AttestError::ProcessGone { pid, reason };
        let unreadable = |file: &'static str| {
            move |e: std::io::Error| {
                gone(ProcError::Read {
                    file,
                    kind: e.kind(),
                })
            }
        };
        // Opened first: if the pid is recycled before the start-time checks
        // below, the handle names the process that exited and the next
        // reuse of this attestation fails.
        let proc_dir = std::fs::File::open(dir).map_err(unreadable("/proc/<pid>"))?;
        let started = start_time(dir).map_err(gone)?;
        let status = std::fs::read_to_string(dir.join("status")).map_err(unreadable("status"))?;
        for (field, expected) in [("Uid:", caller.uid), ("Gid:", caller.gid)] {
            let ids = status_ids(&status, field);
            // Real and effective ids (the first two) must be the peer's.
            if let Some(&actual) = ids.iter().take(2).find(|id| **id != expected) {
                return Err(AttestError::CredentialMismatch {
                    pid,
                    expected,
                    actual,
                });
            }
        }
        for gid in status_ids(&status, "Groups:") {
            selectors.push(Selector::new("unix", format!("supplementary_gid:{gid}")));
        }
        // The executable may be unreadable (another user's process when the
        // agent is not root): then there is no path or hash selector.
        let exe = file_key(&dir.join("exe")).ok();
        if let Ok(path) = std::fs::read_link(dir.join("exe")) {
            let path_text = path
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned();
            selectors.push(Selector::new("unix", format!("path:{path_text}")));
            match self.hash(&dir.join("exe"), may_hash) {
                Ok(Some(hash)) => selectors.push(Selector::new("unix", format!("sha256:{hash}"))),
                Ok(None) => return Ok(None),
                Err(error) => tracing::debug!(pid, %error, "executable not hashed"),
            }
        }
        if start_time(dir).map_err(gone)? != started {
            return Err(AttestError::PidReused { pid });
        }
        Ok(Some(ProcessFacts {
            selectors,
            proc_dir,
            exe,
        }))
    }

    /// SHA-256 of the file behind `path`, cached by inode, size and mtime.
    /// `None` when it is not cached and `may_hash` is false.
    fn hash(&self, path: &Path, may_hash: bool) -> std::io::Result<Option<String>> {
        let key = file_key(path)?;
        if let Some(hash) = self.hashes.lock().expect("hash cache").get(&key) {
            return Ok(Some(hash.clone()));
        }
        if !may_hash {
            return Ok(None);
        }
        let mut file = std::fs::File::open(path)?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut file, &mut buffer)?;
            if n == 0 {
                break;
            }
            context.update(&buffer[..n]);
        }
        let hash = hex::encode(context.finish());
        let mut cache = self.hashes.lock().expect("hash cache");
        if cache.len() >= HASH_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, hash.clone());
        Ok(Some(hash))
    }
}

/// The identity of the file behind `path`.
fn file_key(path: &Path) -> std::io::Result<FileKey> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    })
}

/// Why a caller's `/proc` files could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    #[error("{file}: {kind}")]
    Read {
        file: &'static str,
        kind: std::io::ErrorKind,
    },
    #[error("{file} is malformed")]
    Malformed { file: &'static str },
}

/// The process's start time in clock ticks (proc(5) `stat` field 22).
fn start_time(dir: &Path) -> Result<u64, ProcError> {
    let stat = std::fs::read_to_string(dir.join("stat")).map_err(|e| ProcError::Read {
        file: "stat",
        kind: e.kind(),
    })?;
    parse_start_time(&stat)
}

/// Field 22 of the text of a `/proc/<pid>/stat` file.
pub(crate) fn parse_start_time(stat: &str) -> Result<u64, ProcError> {
    let malformed = ProcError::Malformed { file: "stat" };
    // The command name (field 2) is in parentheses and may contain spaces.
    let (_, after_name) = stat.rsplit_once(')').ok_or(malformed.clone())?;
    after_name
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or(malformed)
}

fn status_ids(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every `name:x:id:...` line of a passwd- or group-format file.
fn id_names(file: &Path) -> HashMap<u32, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let (false, Ok(id)) = (name.is_empty(), id.parse::<u32>()) {
            // The first line for an id wins, as getpwuid(3) has it.
            names.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// The name for numeric id `id` in a passwd- or group-format file
/// (`/etc/passwd`, `/etc/group`).
pub fn name_of(file: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let number: u32 = fields.next()?.parse().ok()?;
        (number == id && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller_self() -> Caller {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        Caller {
            pid: Some(std::process::id() as i32),
            uid: status_ids(&status, "Uid:")[0],
            gid: status_ids(&status, "Gid:")[0],
            cache: Default::default(),
        }
    }

    #[test]
    fn attests_this_process() {
        let attestor = UnixAttestor::default();
        let caller = caller_self();
        let selectors = attestor.attest(&caller).unwrap();
        let values: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        assert!(
            values.contains(&format!("unix:uid:{}", caller.uid)),
            "{values:?}"
        );
        assert!(
            values.contains(&format!("unix:gid:{}", caller.gid)),
            "{values:?}"
        );
        let exe = std::env::current_exe().unwrap();
        assert!(
            values.contains(&format!("unix:path:{}", exe.display())),
            "{values:?}"
        );
        let bytes = std::fs::read(&exe).unwrap();
        let expected = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        assert!(
            values.contains(&format!("unix:sha256:{expected}")),
            "{values:?}"
        );
        if caller.uid == 0 {
            assert!(values.contains(&"unix:user:root".to_owned()), "{values:?}");
        }
    }

    #[test]
    fn refuses_mismatched_credentials_and_gone_processes() {
        let attestor = UnixAttestor::default();
        let mut caller = caller_self();
        caller.uid += 4242;
        assert!(matches!(
            attestor.attest(&caller),
            Err(AttestError::CredentialMismatch { .. })
        ));
        let mut gone = caller_self();
        gone.pid = Some(i32::MAX - 1);
        assert!(matches!(
            attestor.attest(&gone),
            Err(AttestError::ProcessGone { .. })
        ));
    }

    #[test]
    fn fake_proc_and_etc() {
        let root = tempfile::tempdir().unwrap();
        let proc_dir = root.path().join("proc/77");
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::write(
            proc_dir.join("stat"),
            "77 (a (weird) name) S 1 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n",
        )
        .unwrap();
        std::fs::write(
            proc_dir.join("status"),
            "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 27 100\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "users:x:100:\n").unwrap();
        let attestor = UnixAttestor::new(root.path().join("proc"), root.path().join("etc"));
        let caller = Caller {
            pid: Some(77),
            uid: 1000,
            gid: 100,
            cache: Default::default(),
        };
        let selectors = attestor.attest(&caller).unwrap();
        let values: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            values,
            [
                "unix:uid:1000",
                "unix:gid:100",
                "unix:user:alice",
                "unix:group:users",
                "unix:supplementary_gid:4",
                "unix:supplementary_gid:27",
                "unix:supplementary_gid:100",
            ]
        );
        assert_eq!(start_time(&proc_dir).unwrap(), 12345);

        // The same connection and process: the attestation is reused (a group
        // change is not seen yet). Another process behind that pid (a new
        // /proc/77 directory) is attested afresh.
        std::fs::write(
            proc_dir.join("status"),
            "Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t5\n",
        )
        .unwrap();
        assert_eq!(attestor.attest(&caller).unwrap(), selectors);
        let status = std::fs::read(proc_dir.join("status")).unwrap();
        std::fs::remove_dir_all(&proc_dir).unwrap();
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::write(proc_dir.join("status"), status).unwrap();
        std::fs::write(
            proc_dir.join("stat"),
            "77 (x) S 1 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 99999 0 0\n",
        )
        .unwrap();
        let fresh = attestor.attest(&caller).unwrap();
        assert!(
            fresh.contains(&Selector::new("unix", "supplementary_gid:5")),
            "{fresh:?}"
        );
        assert!(!fresh.contains(&Selector::new("unix", "supplementary_gid:27")));
    }

    #[test]
    fn a_connections_attestation_ends_with_its_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut caller = caller_self();
        caller.pid = Some(child.id() as i32);
        let attestor = UnixAttestor::default();
        let first = attestor.attest(&caller).unwrap();
        assert_eq!(attestor.attest_cached(&caller).unwrap().unwrap(), first);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            attestor.attest_cached(&caller),
            Some(Err(AttestError::ProcessGone { .. }))
        ));
    }
}
