//! The events the issuer witnesses, built from its own records: one place
//! decides what each kind says about entries, owners and agents.

use std::time::SystemTime;

use ring::digest::{digest, SHA256};
use workload_api::events::{Event, EventKind};

use super::EventLog;
use crate::ca::{KeyState, KeyStatus};
use crate::store::{Entry, Owner, StoreError};

/// An entry created, updated, deleted or registered under delegation.
pub fn entry(log: &EventLog, kind: EventKind, entry: &Entry, at: SystemTime) -> Event {
    let fields = &entry.fields;
    let selectors: Vec<String> = fields
        .selectors
        .iter()
        .map(|s| format!("{}:{}", s.kind, s.value))
        .collect();
    let mut event = log
        .event(kind, at)
        .subject(fields.spiffe_id.clone())
        .entry(entry.id.clone())
        .detail("parent_id", fields.parent_id.clone())
        .bounded_list("selectors", &selectors)
        .detail("revision", entry.revision);
    if !fields.managed_by.is_empty() {
        event = event.detail("managed_by", fields.managed_by.clone());
    }
    if let Some(owner) = &fields.owner {
        event = event.owner(&owner.owner_id);
        if !owner.delegated_from.is_empty() {
            event = event
                .detail("delegated_from", owner.delegated_from.clone())
                .detail("actors", owner.actors.clone());
        }
    }
    event
}

/// `entry` deleted, with the entries delegated below it that went too.
pub fn deleted(
    log: &EventLog,
    entry: &Entry,
    deleted_ids: &[String],
    at: SystemTime,
) -> Vec<Event> {
    deleted_ids
        .iter()
        .map(|gone| {
            if *gone == entry.id {
                self::entry(log, EventKind::EntryDeleted, entry, at)
            } else {
                log.event(EventKind::EntryDeleted, at)
                    .entry(gone.clone())
                    .detail("with_parent", entry.id.clone())
            }
        })
        .collect()
}

/// The consent an owner signed for an entry, accepted: named by the SHA-256
/// of the JWS (the issuer keeps the JWS itself beside the entry).
pub fn consent(log: &EventLog, entry: &Entry, at: SystemTime) -> Option<Event> {
    let owner = entry.fields.owner.as_ref()?;
    Some(
        log.event(EventKind::ConsentAccepted, at)
            .subject(entry.fields.spiffe_id.clone())
            .owner(&owner.owner_id)
            .entry(entry.id.clone())
            .jkt(owner.key_thumbprint.clone())
            .detail(
                "consent_sha256",
                hex::encode(digest(&SHA256, owner.consent.as_bytes())),
            ),
    )
}

/// An owner registered or revoked.
pub fn owner(log: &EventLog, kind: EventKind, owner: &Owner, at: SystemTime) -> Event {
    log.event(kind, at)
        .owner(&owner.id)
        .jkt(owner.thumbprint.clone())
}

/// An agent banned or evicted.
pub fn agent(log: &EventLog, kind: EventKind, agent_id: &str, at: SystemTime) -> Event {
    log.event(kind, at).subject(agent_id)
}

/// The event a key's state records, and the name it is logged once under.
fn key_event(log: &EventLog, key: &KeyState, at: SystemTime) -> (String, Event) {
    let (kind, status) = match key.status {
        KeyStatus::Prepared => (EventKind::KeyPrepared, "prepared"),
        KeyStatus::Active => (EventKind::KeyActivated, "activated"),
        KeyStatus::Retired => (EventKind::KeyRetired, "retired"),
    };
    let event = log
        .event(kind, at)
        .detail("key_kind", key.kind)
        .detail("key_id", key.id.clone())
        .detail("not_before", key.not_before)
        .detail("not_after", key.not_after);
    (format!("key.{status}/{}/{}", key.kind, key.id), event)
}

/// Logs each of `keys`' lifecycle step once: after every rotation, and at
/// start for keys made before the log could record them.
pub async fn key_lifecycle(
    log: &EventLog,
    keys: &[KeyState],
    at: SystemTime,
) -> Result<(), String> {
    let (names, events): (Vec<String>, Vec<Event>) =
        keys.iter().map(|key| key_event(log, key, at)).unzip();
    let store = log.store();
    let marked = store
        .log_marks(&names)
        .await
        .map_err(|e: StoreError| e.to_string())?;
    let new: Vec<usize> = (0..names.len()).filter(|i| !marked[*i]).collect();
    let fresh: Vec<Event> = new.iter().map(|i| events[*i].clone()).collect();
    log.append(&fresh).await.map_err(|e| e.to_string())?;
    let now = crate::clock::unix_secs(at);
    for i in new {
        store
            .mark_logged(&names[i], now)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
