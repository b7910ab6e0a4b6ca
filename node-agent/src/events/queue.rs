//! The agent's event queue on disk: events wait here, in order, until the
//! issuer acknowledges them, across issuer outages and agent restarts.
//!
//! `queue.jsonl` holds one `{"seq": N, "event": {...}}` line per event, in
//! seq order; `state.json` the agent ID the numbering belongs to and the
//! highest seq the issuer acknowledged. Both live in a private directory.
//! A line torn by a crash mid-write is cut off at the next open. Once every
//! event is acknowledged the file is emptied; a file mostly made of
//! acknowledged events is rewritten with only the rest.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use workload_api::events::Event;

/// The most events held unacknowledged; beyond it new events are dropped
/// and counted, so an issuer outage cannot fill the disk.
pub const MAX_PENDING_EVENTS: usize = 100_000;
/// File size past which acknowledged lines are compacted away.
const COMPACT_BYTES: u64 = 4 << 20;

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub seq: u64,
    pub event: Event,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    agent_id: String,
    acked: u64,
}

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the event queue holds {MAX_PENDING_EVENTS} unacknowledged events; the event is dropped"
    )]
    Full,
    #[error("event queue {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The queue.
#[derive(Debug)]
pub struct EventQueue {
    dir: PathBuf,
    file: std::fs::File,
    file_bytes: u64,
    unsynced: bool,
    state: State,
    next_seq: u64,
    pending: VecDeque<Queued>,
}

impl EventQueue {
    /// Opens the queue in `dir` for `agent_id`. Events queued under another
    /// agent ID (the agent attested anew) can no longer be sent as that
    /// agent; they are dropped, with a warning naming how many.
    pub fn open(dir: &Path, agent_id: &str) -> Result<Self, QueueError> {
        workload_api::files::create_private_dir(dir).map_err(io_error(dir))?;
        let state_path = dir.join("state.json");
        let state: State = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => State::default(),
        };
        let path = dir.join("queue.jsonl");
        let (lines, good_bytes) = read_lines(&path)?;
        let file = open_append(&path)?;
        if file.metadata().map_err(io_error(&path))?.len() != good_bytes {
            // A torn last line: cut it off so the next append starts clean.
            file.set_len(good_bytes).map_err(io_error(&path))?;
        }
        let mut queue = EventQueue {
            dir: dir.to_path_buf(),
            file,
            file_bytes: good_bytes,
            unsynced: false,
            next_seq: 1,
            state,
            pending: VecDeque::new(),
        };
        if queue.state.agent_id != agent_id {
            queue.restart_numbering(agent_id, lines.len())?;
            return Ok(queue);
        }
        let last = lines.last().map_or(0, |q| q.seq);
        queue.next_seq = last.max(queue.state.acked) + 1;
        queue.pending = lines
            .into_iter()
            .filter(|q| q.seq > queue.state.acked)
            .collect();
        Ok(queue)
    }

    /// Starts numbering from 1 for `agent_id`, dropping what was queued.
    pub fn restart_numbering(&mut self, agent_id: &str, dropped: usize) -> Result<(), QueueError> {
        if dropped > 0 {
            tracing::warn!(
                dropped,
                old_agent = %self.state.agent_id,
                agent = %agent_id,
                "events queued under the agent's old identity cannot be sent and are dropped"
            );
        }
        self.pending.clear();
        self.truncate()?;
        self.state = State {
            agent_id: agent_id.to_string(),
            acked: 0,
        };
        self.next_seq = 1;
        self.save_state()
    }

    /// The agent ID the numbering belongs to.
    pub fn agent_id(&self) -> &str {
        &self.state.agent_id
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends an event; it is on disk after the next [`EventQueue::sync`].
    pub fn push(&mut self, event: Event) -> Result<u64, QueueError> {
        if self.pending.len() >= MAX_PENDING_EVENTS {
            return Err(QueueError::Full);
        }
        let queued = Queued {
            seq: self.next_seq,
            event,
        };
        let mut line = serde_json::to_vec(&queued).expect("an event serializes");
        line.push(b'\n');
        let path = self.dir.join("queue.jsonl");
        self.file.write_all(&line).map_err(io_error(&path))?;
        self.file_bytes += line.len() as u64;
        self.unsynced = true;
        self.next_seq += 1;
        self.pending.push_back(queued);
        Ok(self.next_seq - 1)
    }

    /// Makes appended events durable.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        if self.unsynced {
            let path = self.dir.join("queue.jsonl");
            self.file.sync_data().map_err(io_error(&path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Up to `max` unacknowledged events, oldest first.
    pub fn unsent(&self, max: usize) -> Vec<Queued> {
        self.pending.iter().take(max).cloned().collect()
    }

    /// Records that the issuer holds every event up to `through`; returns
    /// how many pending events that took off the queue.
    pub fn ack(&mut self, through: u64) -> Result<usize, QueueError> {
        if through <= self.state.acked {
            return Ok(0);
        }
        let mut taken = 0;
        while self.pending.front().is_some_and(|q| q.seq <= through) {
            self.pending.pop_front();
            taken += 1;
        }
        self.state.acked = through;
        self.save_state()?;
        if self.pending.is_empty() {
            self.truncate()?;
        } else if self.file_bytes > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(taken)
    }

    fn save_state(&self) -> Result<(), QueueError> {
        let path = self.dir.join("state.json");
        let bytes = serde_json::to_vec(&self.state).expect("state serializes");
        workload_api::files::write_private(&path, &bytes).map_err(io_error(&path))
    }

    fn truncate(&mut self) -> Result<(), QueueError> {
        let path = self.dir.join("queue.jsonl");
        self.file.set_len(0).map_err(io_error(&path))?;
        self.file.sync_data().map_err(io_error(&path))?;
        self.file_bytes = 0;
        self.unsynced = false;
        Ok(())
    }

    /// Rewrites the file with only the unacknowledged events.
    fn compact(&mut self) -> Result<(), QueueError> {
        let path = self.dir.join("queue.jsonl");
        let fresh = self.dir.join("queue.jsonl.new");
        let mut bytes = Vec::new();
        for queued in &self.pending {
            bytes.extend(serde_json::to_vec(queued).expect("an event serializes"));
            bytes.push(b'\n');
        }
        workload_api::files::write_private(&fresh, &bytes).map_err(io_error(&fresh))?;
        std::fs::rename(&fresh, &path).map_err(io_error(&path))?;
        self.file = open_append(&path)?;
        self.file_bytes = bytes.len() as u64;
        self.unsynced = false;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, QueueError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))
}

/// The queue file's whole lines, and how many bytes they take. Reading
/// stops at the first line that is torn or not an event: what follows it
/// was written after it, by the same crash.
fn read_lines(path: &Path) -> Result<(Vec<Queued>, u64), QueueError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut reader = std::io::BufReader::new(file);
    let (mut lines, mut good) = (Vec::new(), 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path))?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        match serde_json::from_slice::<Queued>(&line) {
            Ok(queued) if lines.last().is_none_or(|q: &Queued| q.seq < queued.seq) => {
                lines.push(queued);
                good += read as u64;
            }
            _ => {
                tracing::warn!(path = %path.display(), "event queue: cut at a damaged line");
                break;
            }
        }
    }
    Ok((lines, good))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use workload_api::events::EventKind;

    fn event(n: u32) -> Event {
        Event::new(
            EventKind::CredentialDelivered,
            "spiffe://example.org/agent/a",
            SystemTime::now(),
        )
        .detail("n", n)
    }

    const AGENT: &str = "spiffe://example.org/agent/a";

    #[test]
    fn events_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        for n in 0..5 {
            assert_eq!(queue.push(event(n)).unwrap(), u64::from(n) + 1);
        }
        queue.sync().unwrap();
        assert_eq!(queue.ack(2).unwrap(), 2);
        drop(queue);
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        let unsent = queue.unsent(10);
        assert_eq!(
            unsent.iter().map(|q| q.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(unsent[0].event.details["n"], 2);
        // Numbering goes on after the last queued event.
        assert_eq!(queue.push(event(5)).unwrap(), 6);
        queue.ack(6).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("queue.jsonl"))
                .unwrap()
                .len(),
            0
        );
        drop(queue);
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        assert!(queue.unsent(10).is_empty());
        assert_eq!(queue.push(event(6)).unwrap(), 7);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        queue.push(event(0)).unwrap();
        queue.push(event(1)).unwrap();
        queue.sync().unwrap();
        drop(queue);
        let path = dir.path().join("queue.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"seq\":3,\"ev").unwrap();
        drop(file);
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        assert_eq!(queue.unsent(10).len(), 2);
        assert_eq!(queue.push(event(2)).unwrap(), 3);
        queue.sync().unwrap();
        drop(queue);
        let queue = EventQueue::open(dir.path(), AGENT).unwrap();
        assert_eq!(
            queue.unsent(10).iter().map(|q| q.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_new_identity_starts_a_new_numbering_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = EventQueue::open(dir.path(), AGENT).unwrap();
        queue.push(event(0)).unwrap();
        queue.sync().unwrap();
        drop(queue);
        let mut queue = EventQueue::open(dir.path(), "spiffe://example.org/agent/b").unwrap();
        assert!(queue.unsent(10).is_empty());
        assert_eq!(queue.push(event(1)).unwrap(), 1);
        for n in 1..MAX_PENDING_EVENTS as u32 {
            queue.push(event(n)).unwrap();
        }
        assert!(matches!(queue.push(event(0)), Err(QueueError::Full)));
        // Acknowledging a large prefix compacts the file.
        queue.ack(MAX_PENDING_EVENTS as u64 - 10).unwrap();
        queue.sync().unwrap();
        drop(queue);
        let queue = EventQueue::open(dir.path(), "spiffe://example.org/agent/b").unwrap();
        assert_eq!(queue.pending_len(), 10);
        assert!(
            std::fs::metadata(dir.path().join("queue.jsonl"))
                .unwrap()
                .len()
                < 100_000
        );
    }
}
