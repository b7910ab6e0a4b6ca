//! The offline check of an export. With nothing but the log's verifier key
//! (pinned by the auditor, or taken from the export and reported as such),
//! it checks the checkpoint's signature, every leaf's canonical form, index
//! and signature, recomputes the tree and compares its root with the
//! checkpoint's, and, given an older checkpoint, that the log only grew
//! since. The first bad index is named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::Checkpoint;
use workload_api::events::EventKind;

use super::leaf::{self, Leaf, MAX_LEAF_BYTES};
use super::reads::EXPORT_FORMAT;
use super::tree::{Frontier, Hash};

/// Why an export failed the check; `index` is the first bad leaf, when
/// the failure is one leaf's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", index.map(|i| format!("index {i}: ")).unwrap_or_default())]
pub struct VerifyError {
    pub index: Option<u64>,
    pub reason: String,
}

fn fail(reason: impl Into<String>) -> VerifyError {
    VerifyError {
        index: None,
        reason: reason.into(),
    }
}

fn fail_at(index: u64, reason: impl Into<String>) -> VerifyError {
    VerifyError {
        index: Some(index),
        reason: reason.into(),
    }
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// What an export held, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub origin: String,
    /// The verifier key used, and whether the auditor pinned it.
    pub log_key: String,
    pub key_pinned: bool,
    pub from: u64,
    pub checkpoint: VerifiedCheckpoint,
    /// Events checked, by kind.
    pub kinds: BTreeMap<EventKind, u64>,
    /// The older checkpoint the log was shown consistent with.
    pub consistent_with: Option<VerifiedCheckpoint>,
    /// Agent-signed events checked against a key the log issued the agent.
    pub agent_events: u64,
    /// Agent-signed events whose key was issued before the export starts,
    /// so only their signature could be checked.
    pub agent_keys_before_export: u64,
    /// The checkpoint's signed note: the older checkpoint of the next check.
    pub checkpoint_note: String,
}

/// Checks a C2SP signed note against `key` (a verifier key string):
/// returns the key's name and the note's text once a signature by that key
/// verifies.
pub fn verify_note(note: &str, key: &str) -> Result<(String, Vec<u8>), String> {
    let verifier = StandardVerifier::new(key).map_err(|e| format!("log key: {e}"))?;
    let name = signed_note::Verifier::name(&verifier).to_string();
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| format!("checkpoint: {e}"))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("checkpoint signature: {e}"))?;
    Ok((name, note.text().to_vec()))
}

/// Checks a signed checkpoint note against `key` (a verifier key string).
pub fn verify_checkpoint(note: &str, key: &str) -> Result<VerifiedCheckpoint, String> {
    let (name, text) = verify_note(note, key)?;
    let checkpoint = Checkpoint::from_bytes(&text).map_err(|e| format!("checkpoint: {e}"))?;
    if checkpoint.origin() != name {
        return Err(format!(
            "the checkpoint is of log {:?}, not of the key's log {name:?}",
            checkpoint.origin()
        ));
    }
    Ok(VerifiedCheckpoint {
        origin: checkpoint.origin().to_string(),
        size: checkpoint.size(),
        root: *checkpoint.hash(),
    })
}

/// The longest header line read: a checkpoint and at most 64 frontier
/// hashes fit many times over.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The next line of `input` without its newline, None at the end; a line
/// longer than `max` is refused without reading the rest of it.
fn read_line(input: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    loop {
        let available = input
            .fill_buf()
            .map_err(|e| format!("reading the export: {e}"))?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (taken, done) = match memchr::memchr(b'\n', available) {
            Some(at) => (at, true),
            None => (available.len(), false),
        };
        if line.len() + taken > max {
            return Err(format!(
                "a line is longer than {max} bytes, more than any it may hold"
            ));
        }
        line.extend_from_slice(&available[..taken]);
        input.consume(taken + usize::from(done));
        if done {
            return Ok(Some(line));
        }
    }
}

/// The export's first line.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    origin: String,
    log_key: String,
    checkpoint: String,
    from: u64,
    frontier: Vec<String>,
}

/// Checks the export read from `input`. `pinned_key` is the log's verifier
/// key as the auditor knows it; `older` an earlier checkpoint note.
pub fn verify_export(
    input: impl BufRead,
    pinned_key: Option<&str>,
    older: Option<&str>,
) -> Result<Report, VerifyError> {
    verify_export_with(input, pinned_key, older, &mut |_| {})
}

/// [`verify_export`], handing each leaf to `on_leaf` once it checked. The
/// export as a whole may still fail after: act on leaves only once this
/// returns Ok.
pub fn verify_export_with(
    input: impl BufRead,
    pinned_key: Option<&str>,
    older: Option<&str>,
    on_leaf: &mut dyn FnMut(Leaf),
) -> Result<Report, VerifyError> {
    let mut input = input;
    let header = read_line(&mut input, MAX_HEADER_BYTES)
        .map_err(|e| fail(format!("the export's header: {e}")))?
        .ok_or_else(|| fail("the export is empty"))?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| fail(format!("the export's header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(fail(format!(
            "the export is in format {:?}, not {EXPORT_FORMAT:?}",
            header.format
        )));
    }
    let key = pinned_key.unwrap_or(&header.log_key).trim().to_string();
    let checkpoint = verify_checkpoint(&header.checkpoint, &key).map_err(fail)?;
    if checkpoint.origin != header.origin {
        return Err(fail("the header's origin is not the checkpoint's"));
    }
    let older = older
        .map(|note| verify_checkpoint(note, &key).map_err(|e| fail(format!("older {e}"))))
        .transpose()?;
    if let Some(old) = &older {
        if old.size < header.from {
            return Err(fail(format!(
                "the older checkpoint covers {} events but the export starts at index {}: export with --from {} or less",
                old.size, header.from, old.size
            )));
        }
        if old.size > checkpoint.size {
            return Err(fail(format!(
                "the older checkpoint covers {} events, more than the export's {}: the log shrank, or export again",
                old.size, checkpoint.size
            )));
        }
    }
    let frontier: Vec<Hash> = header
        .frontier
        .iter()
        .map(|h| {
            let bytes = STANDARD.decode(h).ok()?;
            Some(Hash(bytes.try_into().ok()?))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| fail("the header's frontier holds a hash that is not 32 bytes of base64"))?;
    let mut tree = Frontier::from_list(header.from, &frontier).map_err(fail)?;
    let verifier = StandardVerifier::new(&key).map_err(|e| fail(format!("log key: {e}")))?;

    let check_older = |tree: &Frontier| -> Result<(), VerifyError> {
        match &older {
            Some(old) if old.size == tree.size() && old.root != tree.root() => Err(VerifyError {
                index: None,
                reason: format!(
                    "fork: the older checkpoint of size {} has root {}, but the events give {}",
                    old.size,
                    STANDARD.encode(old.root.0),
                    STANDARD.encode(tree.root().0)
                ),
            }),
            _ => Ok(()),
        }
    };
    check_older(&tree)?;
    let mut kinds = BTreeMap::new();
    // The keys the log certified for each agent, from its own issuance
    // events: an agent's signature counts only with one of them.
    let mut agent_keys: HashMap<String, HashSet<String>> = HashMap::new();
    let (mut agent_events, mut agent_keys_before_export) = (0, 0);
    loop {
        let index = tree.size();
        let Some(line) = read_line(&mut input, MAX_LEAF_BYTES).map_err(|e| fail_at(index, e))?
        else {
            break;
        };
        if line.is_empty() {
            // Only the newline that ends the file may leave an empty line.
            continue;
        }
        if index >= checkpoint.size {
            return Err(fail_at(
                index,
                format!(
                    "the export holds more events than its checkpoint's {}",
                    checkpoint.size
                ),
            ));
        }
        let opened = leaf::open(&line, index, &checkpoint.origin, &verifier)
            .map_err(|e| fail_at(index, e.to_string()))?;
        let event = &opened.event;
        match &opened.agent {
            None if event.kind == EventKind::X509SvidIssued => {
                if let (Some(subject), Some(jkt)) = (&event.subject, &event.jkt) {
                    agent_keys
                        .entry(subject.clone())
                        .or_default()
                        .insert(jkt.clone());
                }
            }
            None => {}
            Some(signed) => {
                let certified = agent_keys
                    .get(&event.actor)
                    .is_some_and(|keys| keys.contains(&signed.jkt));
                if certified {
                    agent_events += 1;
                } else if header.from > 0 {
                    agent_keys_before_export += 1;
                } else {
                    return Err(fail_at(
                        index,
                        format!(
                            "signed by a key the log never issued to {}",
                            workload_api::display::shown(&event.actor)
                        ),
                    ));
                }
            }
        }
        *kinds.entry(opened.event.kind).or_insert(0) += 1;
        on_leaf(opened);
        tree.append(&line);
        check_older(&tree)?;
    }
    if tree.size() < checkpoint.size {
        return Err(fail_at(
            tree.size(),
            format!(
                "the export ends here, but its checkpoint covers {} events: events are missing",
                checkpoint.size
            ),
        ));
    }
    if tree.root() != checkpoint.root {
        return Err(fail(
            "the events and the header's frontier do not give the checkpoint's root",
        ));
    }
    Ok(Report {
        origin: checkpoint.origin.clone(),
        log_key: key,
        key_pinned: pinned_key.is_some(),
        from: header.from,
        checkpoint,
        kinds,
        consistent_with: older,
        agent_events,
        agent_keys_before_export,
        checkpoint_note: header.checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of c2sp.org/signed-note (../shared/vectors).
    const EXAMPLE_KEY: &str =
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const EXAMPLE_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn lines_are_read_within_their_bound() {
        let mut input = std::io::Cursor::new(b"ab\ncd".to_vec());
        assert_eq!(read_line(&mut input, 2).unwrap(), Some(b"ab".to_vec()));
        assert_eq!(read_line(&mut input, 2).unwrap(), Some(b"cd".to_vec()));
        assert_eq!(read_line(&mut input, 2).unwrap(), None);
        let mut long = std::io::BufReader::with_capacity(4, std::io::Cursor::new(vec![b'x'; 100]));
        assert!(read_line(&mut long, 10)
            .unwrap_err()
            .contains("longer than 10 bytes"));
    }

    #[test]
    fn the_published_signed_note_example_verifies() {
        let (name, text) = verify_note(EXAMPLE_NOTE, EXAMPLE_KEY).unwrap();
        assert_eq!(name, "example.com/foo");
        assert_eq!(text, b"This is an example message.\n");
        let altered = EXAMPLE_NOTE.replace("an example", "a changed");
        assert!(verify_note(&altered, EXAMPLE_KEY).is_err());
        // Not a checkpoint: the body is no origin, size and root.
        assert!(verify_checkpoint(EXAMPLE_NOTE, EXAMPLE_KEY).is_err());
    }
}
