//! How admin command results are printed: aligned text, or JSON with `--json`.

use proto::admin::Agent;
use proto::issuer::Entry;

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
    })
}

pub fn entries(entries: &[Entry], json: bool) {
    if json {
        let value: Vec<_> = entries.iter().map(entry_json).collect();
        let value = if value.len() == 1 {
            value[0].clone()
        } else {
            serde_json::Value::Array(value)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("JSON prints")
        );
        return;
    }
    if entries.is_empty() {
        println!("Found 0 entries");
    }
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("Entry ID         : {}", e.id);
        println!("SPIFFE ID        : {}", e.spiffe_id);
        println!("Parent ID        : {}", e.parent_id);
        println!("Revision         : {}", e.revision);
        println!("X509-SVID TTL    : {}", ttl(e.x509_svid_ttl));
        println!("JWT-SVID TTL     : {}", ttl(e.jwt_svid_ttl));
        for s in &e.selectors {
            println!("Selector         : {}:{}", s.r#type, s.value);
        }
        for name in &e.dns_names {
            println!("DNS name         : {name}");
        }
        for td in &e.federates_with {
            println!("FederatesWith    : {td}");
        }
        if !e.hint.is_empty() {
            println!("Hint             : {}", e.hint);
        }
        if e.admin {
            println!("Admin            : true");
        }
        if e.downstream {
            println!("Downstream       : true");
        }
        if e.expires_at != 0 {
            println!("Expires at       : {}", e.expires_at);
        }
    }
}

pub fn agents(agents: &[Agent], json: bool) {
    if json {
        let value: Vec<_> = agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "spiffe_id": a.spiffe_id,
                    "attestation_type": a.attestation_type,
                    "serial": a.serial,
                    "expires_at": a.expires_at,
                    "banned": a.banned,
                    "attested_at": a.attested_at,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("JSON prints")
        );
        return;
    }
    if agents.is_empty() {
        println!("Found 0 attested agents");
    }
    for (i, a) in agents.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("SPIFFE ID        : {}", a.spiffe_id);
        println!("Attestation type : {}", a.attestation_type);
        println!("SVID serial      : {}", a.serial);
        println!("Expires at       : {}", a.expires_at);
        println!("Banned           : {}", a.banned);
    }
}
