//! FetchJWTSVID's answer: a token per entitled identity, fetched side by
//! side, expired ones never returned, and the failure that names its cause.

use super::outage::unreachable_for;
use super::*;

/// JWT-SVIDs for each of `identities`, fetched side by side (as futures
/// of this call, no task each): those that can be had (cached and
/// unexpired, or freshly signed) are returned, in order; the call fails
/// only if none can. Beside the answer: which tokens it delivers.
pub(super) async fn jwt_response<S: IdentitySource>(
    source: &Arc<S>,
    identities: Vec<Identity>,
    audience: Vec<String>,
    now: SystemTime,
) -> Result<(pb::JwtsvidResponse, Vec<Delivered>), Status> {
    let fetched = futures_util::future::join_all(identities.iter().map(|identity| async {
        let svid = source.fetch_jwt_svid(identity, &audience, now).await?;
        let jti = svid.jti.clone();
        Ok::<_, Status>((unexpired_jwt(svid, now)?, jti))
    }))
    .await;
    let mut svids = Vec::with_capacity(identities.len());
    let mut delivered = Vec::with_capacity(identities.len());
    let mut refusals = Vec::new();
    for (identity, result) in identities.into_iter().zip(fetched) {
        match result {
            Ok((svid, jti)) => {
                delivered.push(Delivered {
                    kind: CredentialKind::JwtSvid,
                    entry_id: identity.entry_id,
                    spiffe_id: identity.spiffe_id.clone(),
                    handle: jti.to_string(),
                });
                svids.push(pb::Jwtsvid {
                    spiffe_id: identity.spiffe_id,
                    svid,
                    hint: identity.hint,
                });
            }
            Err(status) => {
                tracing::debug!(spiffe_id = %identity.spiffe_id, error = %status.message(), "JWT-SVID unavailable");
                refusals.push(status);
            }
        }
    }
    if svids.is_empty() {
        return Err(no_jwt_svid(refusals, source.issuer_outage(), now));
    }
    Ok((pb::JwtsvidResponse { svids }, delivered))
}

/// The token if it is valid at `now`: strictly before its `exp` (RFC 7519
/// section 4.1.4).
pub(super) fn unexpired_jwt(svid: JwtSvid, now: SystemTime) -> Result<String, Status> {
    if now < svid.expires_at {
        Ok(svid.token)
    } else {
        Err(Status::unavailable(
            "the JWT-SVID expired before it could be served",
        ))
    }
}

/// Why no JWT-SVID could be had. Refusals that are the caller's to fix
/// (audience, entitlement) are passed on; otherwise the issuer is at fault,
/// and the answer says for how long it has been.
pub(super) fn no_jwt_svid(
    refusals: Vec<Status>,
    outage: Option<IssuerOutage>,
    now: SystemTime,
) -> Status {
    let unavailable = refusals
        .iter()
        .position(|s| s.code() == tonic::Code::Unavailable);
    match (unavailable, outage) {
        (None, _) => refusals
            .into_iter()
            .next()
            .unwrap_or_else(|| Status::internal("no JWT-SVID and no reason")),
        (Some(_), Some(outage)) => Status::unavailable(format!(
            "no JWT-SVID can be served for this workload; {}",
            unreachable_for(&outage, now)
        )),
        (Some(index), None) => refusals.into_iter().nth(index).expect("found above"),
    }
}

/// JSON claims as a protobuf Struct.
pub(super) fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

pub(super) fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
