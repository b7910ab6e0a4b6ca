//! CPU time and resident memory of the issuer processes, from Linux's
//! /proc/PID/stat (utime, stime: fields 14 and 15, proc(5)) and
//! /proc/PID/status (VmRSS).

use std::path::PathBuf;
use std::process::Command;

/// Why a process could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("getconf CLK_TCK: {0}")]
    ClockTicks(String),
}

/// CPU and memory of a set of processes at one moment, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// The kernel's clock ticks per second, which /proc/PID/stat counts in.
pub fn clock_ticks_per_second() -> Result<u64, ProcessError> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| ProcessError::ClockTicks(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<u64>() {
        Ok(ticks) if out.status.success() && ticks > 0 => Ok(ticks),
        _ => Err(ProcessError::ClockTicks(format!(
            "unexpected answer {:?} ({})",
            text.trim(),
            out.status
        ))),
    }
}

/// Samples every process in `pids`.
pub fn sample(pids: &[u32]) -> Result<Sample, ProcessError> {
    let mut total = Sample::default();
    for pid in pids {
        let stat = read(format!("/proc/{pid}/stat"))?;
        total.cpu_ticks += cpu_ticks(&stat.1).map_err(|reason| ProcessError::Parse {
            path: stat.0,
            reason,
        })?;
        let status = read(format!("/proc/{pid}/status"))?;
        total.rss_bytes += rss_kib(&status.1).map_err(|reason| ProcessError::Parse {
            path: status.0,
            reason,
        })? * 1024;
    }
    Ok(total)
}

fn read(path: String) -> Result<(PathBuf, String), ProcessError> {
    let path = PathBuf::from(path);
    std::fs::read_to_string(&path)
        .map(|text| (path.clone(), text))
        .map_err(|source| ProcessError::Read { path, source })
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last ')'.
fn cpu_ticks(stat: &str) -> Result<u64, String> {
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64, String> {
        let text = fields
            .get(n - 3)
            .ok_or(format!("{} fields, need field {n}", fields.len() + 2))?;
        text.parse().map_err(|e| format!("field {n} {text:?}: {e}"))
    };
    Ok(field(14)? + field(15)?)
}

/// VmRSS in KiB from /proc/PID/status.
fn rss_kib(status: &str) -> Result<u64, String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS line")?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .ok_or(format!("VmRSS {:?} is not in kB", line.trim()))?;
    kib.trim()
        .parse()
        .map_err(|e| format!("VmRSS {:?}: {e}", line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_user_plus_system_time() {
        let stat = "12995 (cat) R 12940 12940 7508 0 -1 4194304 126 0 0 0 17 4 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Ok(21));
        let odd_name = "7 (tokio (x) y) S 1 7 7 0 -1 4194560 1 0 0 0 300 45 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(odd_name), Ok(345));
        assert!(cpu_ticks("7 (short) S 1")
            .unwrap_err()
            .contains("need field 14"));
        assert!(cpu_ticks("no parenthesis").is_err());
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tsigil-issuer\nVmPeak:\t  9000 kB\nVmRSS:\t    2180 kB\nThreads:\t3\n";
        assert_eq!(rss_kib(status), Ok(2180));
        assert!(rss_kib("Name:\tx\n").is_err());
        assert!(rss_kib("VmRSS:\t12 MB\n").is_err());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(&[std::process::id()]).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(clock_ticks_per_second().unwrap() > 0);
        assert!(matches!(
            sample(&[u32::MAX]),
            Err(ProcessError::Read { .. })
        ));
    }
}
