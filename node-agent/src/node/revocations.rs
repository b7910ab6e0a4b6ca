//! The issuer's revocations as this node holds them: the CRLs and the
//! signed revocation list arrive on the entry stream, are checked against
//! the trust bundle, kept on disk (so an agent restarted while its issuer
//! is away still refuses what was revoked), and published to the Workload
//! API.

use serde::{Deserialize, Serialize};
use workload_api::revocation::{self, RevocationError, Revocations};
use workload_api::Bundle;

use super::identity::{IdentityDir, IdentityError};

/// The file's form: the CRLs as PEM, and the list's JWS.
#[derive(Serialize, Deserialize)]
struct Stored {
    crls: String,
    list: String,
}

const CRL_LABEL: &str = "X509 CRL";

/// Checks what the issuer sent against `bundle` and `held`: the list must
/// verify and be no older than the one held.
pub fn accept(
    held: &Revocations,
    crls: Vec<Vec<u8>>,
    list_jws: &str,
    bundle: &Bundle,
) -> Result<Revocations, RevocationError> {
    let list = revocation::newer(held.list.as_ref(), revocation::verify(list_jws, bundle)?)?;
    Ok(Revocations {
        crls,
        list: Some(list),
    })
}

/// Stores `revocations` (0600).
pub fn save(dir: &IdentityDir, revocations: &Revocations) -> Result<(), IdentityError> {
    let stored = Stored {
        crls: revocations
            .crls
            .iter()
            .map(|c| workload_api::pem::encode(CRL_LABEL, c))
            .collect(),
        list: revocations
            .list
            .as_ref()
            .map(|l| l.jws.clone())
            .unwrap_or_default(),
    };
    let path = dir.revocations_path();
    let json = serde_json::to_vec(&stored).expect("revocations serialize");
    workload_api::files::write_private(&path, &json).map_err(IdentityError::io(&path))
}

/// The stored revocations, if there are any that still verify against
/// `bundle`; otherwise none (the issuer sends them again on connecting).
pub fn load(dir: &IdentityDir, bundle: &Bundle) -> Revocations {
    let path = dir.revocations_path();
    let Ok(bytes) = std::fs::read(&path) else {
        return Revocations::default();
    };
    let parsed = serde_json::from_slice::<Stored>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|stored| {
            let crls = workload_api::pem::blocks(&stored.crls, CRL_LABEL);
            accept(&Revocations::default(), crls, &stored.list, bundle).map_err(|e| e.to_string())
        });
    match parsed {
        Ok(revocations) => revocations,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring stored revocations; the issuer sends them again");
            Revocations::default()
        }
    }
}
