//! What the run asks of the issuer's admin API: the trust bundle, join
//! tokens, entries, and a foreign bundle.

use std::path::Path;

use proto::admin as admin_pb;
use proto::admin::admin_client::AdminClient;
use proto::issuer as pb;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use workload_api::id::{parse_trust_domain, TrustDomain};
use workload_api::{Bundle, BundleError};

/// Why an admin call failed; each names the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("admin socket: {0}")]
    Connect(#[from] workload_api::client::ClientError),
    #[error("{call}: {}", .status.message())]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("the issuer's trust domain {0:?} is invalid")]
    TrustDomain(String),
    #[error("the issuer serves trust domain {served}, not the {asked} asked for")]
    OtherTrustDomain { served: String, asked: String },
    #[error("the bundle from {origin}: {source}")]
    Bundle { origin: String, source: BundleError },
    #[error("the bundle file {}: {source}", .path.display())]
    BundleFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("making a foreign CA certificate: {0}")]
    ForeignCa(#[from] rcgen::Error),
}

/// Join tokens made at once: enough to keep the admin socket busy without
/// queueing thousands of calls on it.
const TOKEN_BATCH: usize = 100;

/// Join tokens outlive the slowest attach this tool allows.
const TOKEN_TTL_SECS: i64 = 2 * 3600;

/// A client for one issuer's admin socket.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> AdminError {
    move |status| AdminError::Call { call, status }
}

impl Admin {
    pub async fn connect(socket: &Path) -> Result<Self, AdminError> {
        let channel = workload_api::client::unix_channel(socket).await?;
        Ok(Admin {
            client: AdminClient::new(channel),
        })
    }

    /// The trust bundle agents bootstrap with: read from `file`, or the
    /// issuer's own. The trust domain, when given, must be the issuer's.
    pub async fn trust_bundle(
        &self,
        trust_domain: Option<&TrustDomain>,
        file: Option<&Path>,
    ) -> Result<Bundle, AdminError> {
        if let (Some(td), Some(path)) = (trust_domain, file) {
            let bytes = std::fs::read(path).map_err(|source| AdminError::BundleFile {
                path: path.to_owned(),
                source,
            })?;
            return Bundle::from_jwks_or_pem(td.clone(), &bytes).map_err(|source| {
                AdminError::Bundle {
                    origin: path.display().to_string(),
                    source,
                }
            });
        }
        let response = self
            .client
            .clone()
            .get_bundle(admin_pb::BundleRequest {})
            .await
            .map_err(call("GetBundle"))?
            .into_inner();
        let served = parse_trust_domain(&response.trust_domain)
            .map_err(|_| AdminError::TrustDomain(response.trust_domain.clone()))?;
        if let Some(asked) = trust_domain {
            if *asked != served {
                return Err(AdminError::OtherTrustDomain {
                    served: served.to_string(),
                    asked: asked.to_string(),
                });
            }
        }
        Bundle::from_jwks_json(served, &response.jwks).map_err(|source| AdminError::Bundle {
            origin: "GetBundle".into(),
            source,
        })
    }

    /// `count` single-use join tokens, made [`TOKEN_BATCH`] at a time.
    pub async fn join_tokens(&self, count: usize) -> Result<Vec<String>, AdminError> {
        let mut tokens = Vec::with_capacity(count);
        while tokens.len() < count {
            let mut batch = JoinSet::new();
            for _ in 0..TOKEN_BATCH.min(count - tokens.len()) {
                let mut client = self.client.clone();
                batch.spawn(async move {
                    client
                        .create_join_token(admin_pb::CreateJoinTokenRequest {
                            ttl: TOKEN_TTL_SECS,
                            spiffe_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().token)
                        .map_err(call("CreateJoinToken"))
                });
            }
            while let Some(made) = batch.join_next().await {
                tokens.push(made.expect("token task does not panic")?);
            }
        }
        Ok(tokens)
    }

    /// Registers `spiffe_id` under the agent `parent_id` for processes of uid 1000.
    pub async fn create_entry(
        &self,
        spiffe_id: String,
        parent_id: String,
    ) -> Result<pb::Entry, AdminError> {
        self.client
            .clone()
            .create_entry(admin_pb::CreateEntryRequest {
                entry: Some(admin_pb::EntryFields {
                    spiffe_id,
                    parent_id,
                    selectors: vec![pb::Selector {
                        r#type: "unix".into(),
                        value: "uid:1000".into(),
                    }],
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(call("CreateEntry"))
    }

    /// Stores `bundle` as its trust domain's foreign bundle, as an operator would.
    pub async fn set_foreign_bundle(&self, bundle: &Bundle) -> Result<(), AdminError> {
        self.client
            .clone()
            .set_foreign_bundle(admin_pb::SetBundleRequest {
                trust_domain: bundle.trust_domain().to_string(),
                bundle: bundle.to_jwks_json(),
            })
            .await
            .map_err(call("SetForeignBundle"))?;
        Ok(())
    }
}

/// A SPIFFE bundle for `trust_domain` holding one fresh self-signed CA: a
/// foreign trust domain as far as the issuer can tell.
pub fn foreign_bundle(trust_domain: TrustDomain) -> Result<Bundle, AdminError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://{trust_domain}").try_into()?,
    )];
    let ca = params.self_signed(&key)?;
    let mut bundle = Bundle::new(trust_domain);
    bundle.add_x509_authority(ca.der().to_vec());
    bundle.set_sequence(1);
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_bundle_is_a_valid_jwk_set_with_one_authority() {
        let td = parse_trust_domain("load-1.example").unwrap();
        let bundle = foreign_bundle(td.clone()).unwrap();
        let parsed = Bundle::from_jwks_json(td, &bundle.to_jwks_json()).unwrap();
        assert_eq!(parsed.x509_authorities().len(), 1);
        assert_eq!(parsed.sequence(), 1);
    }
}
