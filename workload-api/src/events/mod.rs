//! Events of Sigil's signed event log: what was issued to whom, under which
//! owner, and who used it. Issuers and agents write them; auditors read
//! them back from an export and check every byte against the log.
//!
//! - [`canonical`]: the one byte form (RFC 8785) events are hashed and signed in.
//! - [`event`]: the event record and its kinds.
//! - [`signed`]: events an agent signs, so no one else can rewrite them.

pub mod canonical;
pub mod event;
pub mod signed;

pub use event::{Event, EventKind, MAX_EVENT_BYTES};
