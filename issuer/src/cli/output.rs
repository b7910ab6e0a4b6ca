//! How admin command results are printed: aligned text with RFC 3339 dates,
//! or JSON with `--json` (times as Unix seconds). A list is always a JSON
//! array of the objects that the matching `show --json` prints.

use proto::admin::{Agent, BundleResponse, HealthResponse, JoinToken, Owner};
use proto::issuer::Entry;

use crate::clock::rfc3339 as date;

/// `bundle show --json`.
pub fn bundle_json(bundle: &BundleResponse) {
    let jwks: serde_json::Value =
        serde_json::from_slice(&bundle.jwks).unwrap_or(serde_json::Value::Null);
    print_json(&serde_json::json!({
        "trust_domain": bundle.trust_domain,
        "bundle": jwks,
        "x509_authorities": bundle.pem,
    }));
}

/// `healthcheck --json`.
pub fn health_json(health: &HealthResponse) {
    print_json(&serde_json::json!({
        "status": health.status,
        "trust_domain": health.trust_domain,
    }));
}

fn print_json(value: &serde_json::Value) {
    workload_api::outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

fn ttl(secs: i64) -> String {
    if secs == 0 {
        "default".into()
    } else {
        secs.to_string()
    }
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors.iter().map(|s| serde_json::json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "dns_names": e.dns_names,
        "hint": e.hint,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "expires_at": e.expires_at,
        "revision": e.revision,
        "created_at": e.created_at,
        "owner": e.owner.as_ref().map(|o| serde_json::json!({
            "id": o.id,
            "key_thumbprint": o.key_thumbprint,
            "consent_sha256": o.consent_sha256,
            "consent": o.consent,
            "delegated_from": o.delegated_from,
            "actors": o.actors,
        })),
        "managed_by": e.managed_by,
    })
}

/// One entry (`create`, `update`, `show`).
pub fn entry(entry: &Entry, json: bool) {
    if json {
        return print_json(&entry_json(entry));
    }
    entries_text(std::slice::from_ref(entry));
}

/// `entry list`.
pub fn entries(entries: &[Entry], json: bool) {
    if json {
        return print_json(&entries.iter().map(entry_json).collect());
    }
    entries_text(entries);
}

fn entries_text(entries: &[Entry]) {
    if entries.is_empty() {
        workload_api::outln!("Found 0 entries");
    }
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            workload_api::outln!();
        }
        workload_api::outln!("Entry ID         : {}", e.id);
        workload_api::outln!("SPIFFE ID        : {}", e.spiffe_id);
        workload_api::outln!("Parent ID        : {}", e.parent_id);
        workload_api::outln!("Revision         : {}", e.revision);
        workload_api::outln!("X509-SVID TTL    : {}", ttl(e.x509_svid_ttl));
        workload_api::outln!("JWT-SVID TTL     : {}", ttl(e.jwt_svid_ttl));
        for s in &e.selectors {
            workload_api::outln!("Selector         : {}:{}", s.r#type, s.value);
        }
        for name in &e.dns_names {
            workload_api::outln!("DNS name         : {name}");
        }
        for td in &e.federates_with {
            workload_api::outln!("FederatesWith    : {td}");
        }
        if !e.hint.is_empty() {
            workload_api::outln!("Hint             : {}", e.hint);
        }
        if e.admin {
            workload_api::outln!("Admin            : true");
        }
        if e.downstream {
            workload_api::outln!("Downstream       : true");
        }
        if !e.managed_by.is_empty() {
            workload_api::outln!("Managed by       : {}", e.managed_by);
        }
        if let Some(owner) = &e.owner {
            workload_api::outln!("Owner            : {}", owner.id);
            workload_api::outln!("Owner key        : {}", owner.key_thumbprint);
            workload_api::outln!("Consent SHA-256  : {}", owner.consent_sha256);
            if !owner.delegated_from.is_empty() {
                workload_api::outln!("Delegated from   : {}", owner.delegated_from);
            }
            for actor in &owner.actors {
                workload_api::outln!("Actor            : {actor}");
            }
        }
        if e.expires_at != 0 {
            workload_api::outln!("Expires at       : {}", date(e.expires_at));
        }
        workload_api::outln!("Created at       : {}", date(e.created_at));
    }
}

fn agent_json(a: &Agent) -> serde_json::Value {
    serde_json::json!({
        "spiffe_id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "banned": a.banned,
        "attested_at": a.attested_at,
        "selectors": a.selectors.iter().map(|s| serde_json::json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
    })
}

/// `agent show`.
pub fn agent(agent: &Agent, json: bool) {
    if json {
        return print_json(&agent_json(agent));
    }
    agents_text(std::slice::from_ref(agent));
}

/// `agent list`.
pub fn agents(agents: &[Agent], json: bool) {
    if json {
        return print_json(&agents.iter().map(agent_json).collect());
    }
    agents_text(agents);
}

/// `token generate`. The token is the one secret this CLI prints: it is what
/// the operator asked for.
pub fn join_token(token: &JoinToken, json: bool) {
    if json {
        return print_json(&serde_json::json!({
            "token": token.token,
            "expires_at": token.expires_at,
        }));
    }
    workload_api::outln!("Token: {}", token.token);
    workload_api::outln!("Expires at: {}", date(token.expires_at));
}

/// `owner consent --json`.
pub fn consent_json(jws: &str, claims: &workload_api::consent::ConsentClaims) {
    print_json(&serde_json::json!({
        "consent": jws,
        "claims": claims,
    }));
}

fn owner_json(o: &Owner) -> serde_json::Value {
    let key: serde_json::Value =
        serde_json::from_str(&o.public_key).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": o.id,
        "public_key": key,
        "thumbprint": o.thumbprint,
        "created_at": o.created_at,
        "revoked_at": o.revoked_at,
    })
}

/// `owner register`, `owner show`, `owner revoke`.
pub fn owner(owner: &Owner, json: bool) {
    if json {
        return print_json(&owner_json(owner));
    }
    owners_text(std::slice::from_ref(owner));
}

/// `owner list`.
pub fn owners(owners: &[Owner], json: bool) {
    if json {
        return print_json(&owners.iter().map(owner_json).collect());
    }
    owners_text(owners);
}

fn owners_text(owners: &[Owner]) {
    if owners.is_empty() {
        workload_api::outln!("Found 0 owners");
    }
    for (i, o) in owners.iter().enumerate() {
        if i > 0 {
            workload_api::outln!();
        }
        workload_api::outln!("Owner            : {}", o.id);
        workload_api::outln!("Key thumbprint   : {}", o.thumbprint);
        workload_api::outln!("Registered at    : {}", date(o.created_at));
        if o.revoked_at != 0 {
            workload_api::outln!("Revoked at       : {}", date(o.revoked_at));
        }
    }
}

fn agents_text(agents: &[Agent]) {
    if agents.is_empty() {
        workload_api::outln!("Found 0 attested agents");
    }
    for (i, a) in agents.iter().enumerate() {
        if i > 0 {
            workload_api::outln!();
        }
        workload_api::outln!("SPIFFE ID        : {}", a.spiffe_id);
        workload_api::outln!("Attestation type : {}", a.attestation_type);
        workload_api::outln!("SVID serial      : {}", a.serial);
        workload_api::outln!("Attested at      : {}", date(a.attested_at));
        workload_api::outln!("Expires at       : {}", date(a.expires_at));
        workload_api::outln!("Banned           : {}", a.banned);
        for s in &a.selectors {
            workload_api::outln!("Selector         : {}:{}", s.r#type, s.value);
        }
    }
}
