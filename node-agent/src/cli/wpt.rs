//! `sigil-agent wpt mint|verify`: Workload Proof Tokens from the command line.
//! `mint` takes the caller's WIT and key from the Workload API and prints the
//! headers to send, in either form: `Authorization: WPT <jwt>`
//! (draft-ietf-wimse-wpt-02, the default) or `Workload-Proof-Token` (-01);
//! `verify` checks a WIT and WPT against a bundle file or the Workload API's
//! bundles.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use proto::workload as pb;
use workload_api::keypair::KeyPair;
use workload_api::wimse::http::{wpt_credentials, WPT_SCHEME};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{wit, Presented, Profile, Proof, Verifier, VerifierConfig, WptForm};
use workload_api::{Bundle, TrustDomain};

use super::api::{first_message, ClientArgs};

#[derive(Debug, Subcommand)]
pub enum WptCommand {
    /// Mint a proof for one request and print the two headers to send.
    Mint {
        /// The target URI of the request, without query or fragment.
        #[arg(long)]
        audience: String,
        /// authorization (Authorization: WPT, draft-ietf-wimse-wpt-02) or
        /// header (Workload-Proof-Token, draft-ietf-wimse-wpt-01).
        #[arg(long, default_value = "authorization")]
        form: String,
        /// The access token the request carries in Authorization (bound by
        /// ath; header form only: the Authorization form has no room for it).
        #[arg(long)]
        access_token: Option<String>,
        /// The Txn-Token the request carries (bound by tth).
        #[arg(long)]
        txn_token: Option<String>,
        /// How long the proof is valid, e.g. 60s.
        #[arg(long, default_value = "60s")]
        lifetime: String,
        /// Use the WIT of this SPIFFE ID (default: the first).
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        socket: ClientArgs,
    },
    /// Verify a WIT and its WPT; print the sender or the check that failed.
    Verify {
        /// This service's audience (the request's target URI).
        #[arg(long)]
        audience: String,
        /// The Workload-Identity-Token header's value.
        #[arg(long)]
        wit: String,
        /// The WPT: the Workload-Proof-Token header's value, or the
        /// Authorization header's (`WPT <jwt>`, or the bare JWT).
        #[arg(long)]
        wpt: String,
        /// The form the WPT came in: authorization or header (default:
        /// header with --access-token, else authorization).
        #[arg(long)]
        form: Option<String>,
        /// A SPIFFE bundle (JWK Set) of the WIT's trust domain; default: the
        /// Workload API's WIT bundles.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Verify as of this time (Unix seconds) instead of now.
        #[arg(long)]
        now: Option<u64>,
        /// spiffe (WIT-SVID) or wimse (generic, EdDSA allowed).
        #[arg(long, default_value = "spiffe")]
        profile: String,
        /// The access token the request carried in Authorization.
        #[arg(long)]
        access_token: Option<String>,
        /// The Txn-Token the request carried.
        #[arg(long)]
        txn_token: Option<String>,
        #[command(flatten)]
        socket: ClientArgs,
    },
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn execute(command: WptCommand) -> Result<(), String> {
    match command {
        WptCommand::Mint {
            audience,
            form,
            access_token,
            txn_token,
            lifetime,
            spiffe_id,
            socket,
        } => {
            let form = parse_form(&form)?;
            if form == WptForm::Authorization && access_token.is_some() {
                return Err(no_access_token());
            }
            let lifetime = workload_api::config_file::parse_duration(&lifetime)
                .map_err(|e| format!("--lifetime: {e}"))?;
            let mut client = socket.connect().await?;
            let request = pb::WitsvidRequest {
                spiffe_id: spiffe_id.unwrap_or_default(),
            };
            let response = first_message(client.fetch_witsvid(request).await).await?;
            let svid = response
                .svids
                .first()
                .ok_or("the Workload API returned no WIT-SVID")?;
            let key = KeyPair::from_jwk_json(&svid.wit_svid_key)
                .map_err(|e| format!("the WIT key from the Workload API: {e}"))?;
            let bound = BoundTokens {
                access_token: access_token.as_deref(),
                txn_token: txn_token.as_deref(),
                other: Vec::new(),
            };
            let proof = wpt::mint(
                &svid.wit_svid,
                &key,
                &audience,
                lifetime.as_secs(),
                &bound,
                unix_now(),
            );
            if socket.json {
                let mut out = serde_json::json!({
                    "form": form.name(),
                    "workload_identity_token": svid.wit_svid,
                    "workload_proof_token": proof,
                });
                if form == WptForm::Authorization {
                    out["authorization"] = format!("{WPT_SCHEME} {proof}").into();
                }
                workload_api::outln!("{out}");
                return Ok(());
            }
            workload_api::outln!("Workload-Identity-Token: {}", svid.wit_svid);
            match form {
                WptForm::Authorization => {
                    workload_api::outln!("Authorization: {WPT_SCHEME} {proof}")
                }
                WptForm::Header => workload_api::outln!("Workload-Proof-Token: {proof}"),
            }
            Ok(())
        }
        WptCommand::Verify {
            audience,
            wit,
            wpt,
            form,
            bundle,
            now,
            profile,
            access_token,
            txn_token,
            socket,
        } => {
            let form = match form {
                Some(name) => parse_form(&name)?,
                None if access_token.is_some() => WptForm::Header,
                None => WptForm::Authorization,
            };
            if form == WptForm::Authorization && access_token.is_some() {
                return Err(no_access_token());
            }
            // The Authorization value or the bare JWT.
            let wpt = match form {
                WptForm::Authorization => wpt_credentials(&wpt)
                    .map_err(|e| format!("--wpt: {}: {e}", e.check()))?
                    .map(str::to_owned)
                    .unwrap_or(wpt),
                WptForm::Header => wpt,
            };
            let profile = Profile::parse(&profile)
                .ok_or_else(|| format!("--profile: {profile:?} is not spiffe or wimse"))?;
            let mut config = VerifierConfig::new(vec![audience]);
            config.profile = profile;
            let verifier = Verifier::new(config);
            match bundle {
                Some(path) => {
                    let td = wit::claimed_trust_domain(&wit, profile)
                        .map_err(|e| format!("{}: {e}", e.check()))?;
                    let json = std::fs::read(&path)
                        .map_err(|e| format!("--bundle {}: {e}", path.display()))?;
                    let bundle = Bundle::from_jwks_json(td, &json)
                        .map_err(|e| format!("--bundle {}: {e}", path.display()))?;
                    verifier.set_bundle(bundle);
                }
                None => {
                    for bundle in workload_api_bundles(&socket).await? {
                        verifier.set_bundle(bundle);
                    }
                }
            }
            let authorization = access_token.map(|t| format!("Bearer {t}"));
            let no_headers = |_: &str| None;
            let presented = Presented {
                wit: &wit,
                wpt: &wpt,
                path: None,
                authorization: authorization.as_deref(),
                txn_token: txn_token.as_deref(),
                header: &no_headers,
            };
            let at = UNIX_EPOCH + std::time::Duration::from_secs(now.unwrap_or_else(unix_now));
            let verified = verifier
                .verify_as(&presented, form, at)
                .map_err(|e| format!("{}: {e}", e.check()))?;
            let wpt_claims = match &verified.proof {
                Proof::Wpt(wpt) => Some(serde_json::Value::Object(wpt.claims.clone())),
                _ => None,
            };
            if socket.json {
                workload_api::outln!(
                    "{}",
                    serde_json::json!({
                        "valid": true,
                        "subject": verified.subject().to_string(),
                        "wit_claims": verified.wit.claims,
                        "wpt_claims": wpt_claims,
                    })
                );
                return Ok(());
            }
            workload_api::outln!("WPT is valid.");
            workload_api::outln!("Subject   : {}", verified.subject());
            workload_api::outln!(
                "WIT claims: {}",
                serde_json::Value::Object(verified.wit.claims.clone())
            );
            if let Some(claims) = wpt_claims {
                workload_api::outln!("WPT claims: {claims}");
            }
            Ok(())
        }
    }
}

fn parse_form(name: &str) -> Result<WptForm, String> {
    WptForm::parse(name).ok_or_else(|| format!("--form: {name:?} is not authorization or header"))
}

fn no_access_token() -> String {
    "--access-token: the Authorization form (draft-ietf-wimse-wpt-02) carries the WPT in \
     Authorization, leaving no room for an access token; use --form header"
        .into()
}

/// The WIT bundles the Workload API gives this caller.
async fn workload_api_bundles(socket: &ClientArgs) -> Result<Vec<Bundle>, String> {
    let mut client = socket.connect().await?;
    let response = first_message(client.fetch_wit_bundles(pb::WitBundlesRequest {}).await).await?;
    response
        .bundles
        .iter()
        .map(|(id, json)| {
            let td = id
                .strip_prefix("spiffe://")
                .and_then(|td| TrustDomain::new(td).ok())
                .ok_or_else(|| format!("the Workload API sent a bundle for {id:?}"))?;
            Bundle::from_jwks_json(td, json.as_bytes()).map_err(|e| format!("bundle {id}: {e}"))
        })
        .collect()
}
