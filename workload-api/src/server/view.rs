//! What a caller sees at one moment: its X509-SVIDs, WIT-SVIDs and bundles
//! rendered with the time they are sent (expired credentials left out), and
//! the fingerprints that tell a stream whether that view changed.

use super::*;

/// Sorts the caller's identities by the state of one credential at a
/// moment (`valid`: `None` when not minted, else whether still valid). The
/// view waits while any is not minted, unless none left is valid and some
/// have expired: then nothing can be served now.
pub(super) fn sort_by_validity<'a>(
    entitled: &[&'a Identity],
    valid: impl Fn(&Identity) -> Option<bool>,
) -> View<Vec<&'a Identity>> {
    let mut ready = Vec::with_capacity(entitled.len());
    let (mut pending, mut expired) = (false, false);
    for identity in entitled {
        match valid(identity) {
            None => pending = true,
            Some(true) => ready.push(*identity),
            Some(false) => expired = true,
        }
    }
    if ready.is_empty() && expired {
        View::Expired
    } else if pending {
        View::Pending
    } else {
        View::Ready(ready)
    }
}

/// Hashes one credential's state at a moment: absent, valid (with its
/// serial, noting its expiry), or expired.
pub(super) fn credential_into(
    hasher: &mut impl std::hash::Hasher,
    next_expiry: &mut Option<SystemTime>,
    credential: Option<(u64, SystemTime)>,
    now: SystemTime,
) {
    use std::hash::Hash;
    match credential {
        None => 0u8.hash(hasher),
        Some((serial, expires_at)) if now < expires_at => {
            1u8.hash(hasher);
            serial.hash(hasher);
            *next_expiry = Some(next_expiry.map_or(expires_at, |t| t.min(expires_at)));
        }
        Some(_) => 2u8.hash(hasher),
    }
}

/// What a caller's X.509 view depends on at `now`.
pub(super) fn x509_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
) -> Fingerprint {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut next_expiry = None;
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    snapshot.revocations.seq().hash(&mut hasher);
    for identity in snapshot.entitled(selectors) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        let x509 = identity.x509.as_ref().map(|x| (x.serial, x.expires_at()));
        credential_into(&mut hasher, &mut next_expiry, x509, now);
    }
    Fingerprint {
        next_expiry,
        ..Fingerprint::of(hasher)
    }
}

/// What a caller's X.509 bundle view depends on: its bundles and the CRLs.
pub(super) fn x509_bundles_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    _: SystemTime,
) -> Fingerprint {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    snapshot.revocations.seq().hash(&mut hasher);
    Fingerprint::of(hasher)
}

/// What a caller's bundle view depends on.
pub(super) fn bundles_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    _: SystemTime,
) -> Fingerprint {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bundles_fingerprint_into(&mut hasher, snapshot, selectors);
    Fingerprint::of(hasher)
}

pub(super) fn bundles_fingerprint_into(
    hasher: &mut impl std::hash::Hasher,
    snapshot: &Snapshot,
    selectors: &[Selector],
) {
    use std::hash::Hash;
    snapshot.bundle.sequence().hash(hasher);
    snapshot.bundle.x509_authorities().len().hash(hasher);
    snapshot.bundle.jwt_authorities().len().hash(hasher);
    for identity in snapshot.entitled(selectors) {
        for td in &identity.federates_with {
            td.as_str().hash(hasher);
            match snapshot.federated.get(td) {
                Some(bundle) => foreign_bundle_into(hasher, bundle),
                None => 0u8.hash(hasher),
            }
        }
    }
}

/// Hashes a foreign bundle's keys. Its sequence alone would not do: the
/// foreign domain, or an operator setting its bundle, may change keys
/// without it.
fn foreign_bundle_into(hasher: &mut impl std::hash::Hasher, bundle: &crate::Bundle) {
    use std::hash::Hash;
    1u8.hash(hasher);
    bundle.sequence().hash(hasher);
    bundle.x509_authorities().hash(hasher);
    for authorities in [bundle.jwt_authorities(), bundle.wit_authorities()] {
        authorities.len().hash(hasher);
        for authority in authorities {
            authority.kid.hash(hasher);
            authority.key.thumbprint().hash(hasher);
        }
    }
}

/// Whether one of the caller's identities federates with `trust_domain`.
pub(super) fn federates_with(
    snapshot: &Snapshot,
    selectors: &[Selector],
    trust_domain: &crate::id::TrustDomain,
) -> bool {
    snapshot
        .entitled(selectors)
        .any(|identity| identity.federates_with.contains(trust_domain))
}

/// The trust domain of a token's `sub`, if it is a JWT naming a SPIFFE ID;
/// validation reports what is wrong with any other.
pub(super) fn token_trust_domain(token: &str) -> Option<crate::id::TrustDomain> {
    let jws = crate::jws::parse(token).ok()?;
    let sub = crate::id::parse_spiffe_id(jws.str_claim("sub")?).ok()?;
    Some(sub.trust_domain().clone())
}

/// The caller's X509-SVIDs valid at `now`, once all are minted. Expired ones
/// are left out (X509-SVID.md section 4.3 has validators reject them anyway).
pub(super) fn x509_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
) -> Result<View<pb::X509svidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let ready = match sort_by_validity(&entitled, |i| i.x509.as_ref().map(|x| x.valid_at(now))) {
        View::Ready(ready) => ready,
        View::Pending => return Ok(View::Pending),
        View::Expired => return Ok(View::Expired),
    };
    let bundle = snapshot.bundle.x509_der_concat();
    let svids: Vec<pb::X509svid> = ready
        .iter()
        .filter_map(|identity| {
            identity.x509.as_ref().map(|x509| pb::X509svid {
                spiffe_id: identity.spiffe_id.clone(),
                x509_svid: x509.chain.clone(),
                x509_svid_key: x509.key_pkcs8.to_vec(),
                bundle: bundle.clone(),
                hint: identity.hint.clone(),
            })
        })
        .collect();
    let mut federated_bundles = std::collections::HashMap::new();
    for identity in &entitled {
        for td in &identity.federates_with {
            if let Some(b) = snapshot.federated.get(td) {
                federated_bundles.insert(trust_domain_id(td), b.x509_der_concat());
            }
        }
    }
    Ok(View::Ready(pb::X509svidResponse {
        svids,
        crl: snapshot.revocations.crls.clone(),
        federated_bundles,
    }))
}

/// The bundles a caller receives: its own trust domain's and those its
/// identities federate with.
pub(super) fn bundle_map<V>(
    snapshot: &Snapshot,
    selectors: &[Selector],
    encode: impl Fn(&crate::Bundle) -> V,
) -> Result<std::collections::HashMap<String, V>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let mut map = std::collections::HashMap::new();
    map.insert(
        trust_domain_id(snapshot.bundle.trust_domain()),
        encode(&snapshot.bundle),
    );
    for identity in entitled {
        for td in &identity.federates_with {
            if let Some(b) = snapshot.federated.get(td) {
                map.insert(trust_domain_id(td), encode(b));
            }
        }
    }
    Ok(map)
}

/// The caller's WIT-SVIDs (those `filter` keeps) valid at `now`, once all
/// are minted.
pub(super) fn wit_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
    filter: &impl Fn(&Identity) -> bool,
) -> Result<View<pb::WitsvidResponse>, Status> {
    let entitled: Vec<_> = snapshot.entitled(selectors).filter(|i| filter(i)).collect();
    if entitled.is_empty() {
        return Err(no_identity());
    }
    let ready = match sort_by_validity(&entitled, |i| i.wit.as_ref().map(|w| w.valid_at(now))) {
        View::Ready(ready) => ready,
        View::Pending => return Ok(View::Pending),
        View::Expired => return Ok(View::Expired),
    };
    let svids: Vec<pb::Witsvid> = ready
        .iter()
        .filter_map(|identity| {
            identity.wit.as_ref().map(|wit| pb::Witsvid {
                spiffe_id: identity.spiffe_id.clone(),
                wit_svid: wit.token.clone(),
                wit_svid_key: wit.key_jwk.to_string(),
                hint: identity.hint.clone(),
            })
        })
        .collect();
    Ok(View::Ready(pb::WitsvidResponse { svids }))
}

/// What a caller's WIT view depends on at `now`.
pub(super) fn wit_fingerprint(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
    filter: &impl Fn(&Identity) -> bool,
) -> Fingerprint {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut next_expiry = None;
    for identity in snapshot.entitled(selectors).filter(|i| filter(i)) {
        identity.entry_id.hash(&mut hasher);
        identity.spiffe_id.hash(&mut hasher);
        identity.hint.hash(&mut hasher);
        let wit = identity.wit.as_ref().map(|w| (w.serial, w.expires_at()));
        credential_into(&mut hasher, &mut next_expiry, wit, now);
    }
    Fingerprint {
        next_expiry,
        ..Fingerprint::of(hasher)
    }
}

/// The X509-SVIDs a Ready X.509 view hands over at `now`.
pub(super) fn x509_delivered(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
) -> Vec<Delivered> {
    snapshot
        .entitled(selectors)
        .filter_map(|identity| {
            let x509 = identity.x509.as_ref().filter(|x| x.valid_at(now))?;
            Some(Delivered {
                kind: CredentialKind::X509Svid,
                entry_id: identity.entry_id.clone(),
                spiffe_id: identity.spiffe_id.clone(),
                handle: x509.cert_serial.clone(),
            })
        })
        .collect()
}

/// The WIT-SVIDs a Ready WIT view (those `filter` keeps) hands over.
pub(super) fn wit_delivered(
    snapshot: &Snapshot,
    selectors: &[Selector],
    now: SystemTime,
    filter: &impl Fn(&Identity) -> bool,
) -> Vec<Delivered> {
    snapshot
        .entitled(selectors)
        .filter(|i| filter(i))
        .filter_map(|identity| {
            let wit = identity.wit.as_ref().filter(|w| w.valid_at(now))?;
            Some(Delivered {
                kind: CredentialKind::WitSvid,
                entry_id: identity.entry_id.clone(),
                spiffe_id: identity.spiffe_id.clone(),
                handle: wit.jti.clone(),
            })
        })
        .collect()
}

/// Bundle views hand over no credential.
pub(super) fn no_credentials(_: &Snapshot, _: &[Selector], _: SystemTime) -> Vec<Delivered> {
    Vec::new()
}
