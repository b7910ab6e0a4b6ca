//! Conversions between wire messages and the store's types, so generated
//! proto types stop at the endpoints.

use proto::issuer as pb;

use crate::store::{Agent, Entry, EntryFields, EntryOwner, Owner, Selector};

/// Who an entry message is for: operators see the consent JWS; agents,
/// which never check it, get the entry without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Operator,
    Agent,
}

pub fn entry_to_proto(entry: &Entry, reader: Reader) -> pb::Entry {
    let f = &entry.fields;
    pb::Entry {
        id: entry.id.clone(),
        spiffe_id: f.spiffe_id.clone(),
        parent_id: f.parent_id.clone(),
        selectors: f.selectors.iter().map(selector_to_proto).collect(),
        x509_svid_ttl: f.x509_svid_ttl,
        jwt_svid_ttl: f.jwt_svid_ttl,
        dns_names: f.dns_names.clone(),
        hint: f.hint.clone(),
        federates_with: f.federates_with.clone(),
        admin: f.admin,
        downstream: f.downstream,
        expires_at: f.expires_at,
        revision: entry.revision,
        created_at: entry.created_at,
        sequence: entry.sequence,
        owner: f.owner.as_ref().map(|o| entry_owner_to_proto(o, reader)),
        managed_by: f.managed_by.clone(),
    }
}

fn entry_owner_to_proto(owner: &EntryOwner, reader: Reader) -> pb::EntryOwner {
    use base64::Engine;
    pb::EntryOwner {
        id: owner.owner_id.clone(),
        key_thumbprint: owner.key_thumbprint.clone(),
        consent_sha256: base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(workload_api::owner::consent_sha256(&owner.consent)),
        consent: match reader {
            Reader::Operator => owner.consent.clone(),
            Reader::Agent => String::new(),
        },
        delegated_from: owner.delegated_from.clone(),
        actors: owner.actors.clone(),
    }
}

pub fn owner_to_proto(owner: &Owner) -> proto::admin::Owner {
    proto::admin::Owner {
        id: owner.id.clone(),
        public_key: owner.public_key.clone(),
        thumbprint: owner.thumbprint.clone(),
        created_at: owner.created_at,
        revoked_at: owner.revoked_at,
    }
}

pub fn selector_to_proto(s: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: s.kind.clone(),
        value: s.value.clone(),
    }
}

pub fn selector_from_proto(s: &pb::Selector) -> Selector {
    Selector {
        kind: s.r#type.clone(),
        value: s.value.clone(),
    }
}

pub fn fields_from_proto(f: &proto::admin::EntryFields) -> EntryFields {
    EntryFields {
        spiffe_id: f.spiffe_id.clone(),
        parent_id: f.parent_id.clone(),
        selectors: f.selectors.iter().map(selector_from_proto).collect(),
        x509_svid_ttl: f.x509_svid_ttl,
        jwt_svid_ttl: f.jwt_svid_ttl,
        dns_names: f.dns_names.clone(),
        hint: f.hint.clone(),
        federates_with: f.federates_with.clone(),
        admin: f.admin,
        downstream: f.downstream,
        expires_at: f.expires_at,
        // Bound only once the consent is checked.
        owner: None,
        // Only identity rules set it.
        managed_by: String::new(),
    }
}

pub fn agent_to_proto(agent: &Agent) -> proto::admin::Agent {
    proto::admin::Agent {
        spiffe_id: agent.spiffe_id.clone(),
        attestation_type: agent.attestation_type.clone(),
        serial: agent.serial.clone(),
        expires_at: agent.expires_at,
        banned: agent.banned,
        attested_at: agent.attested_at,
        selectors: agent.selectors.iter().map(selector_to_proto).collect(),
    }
}
