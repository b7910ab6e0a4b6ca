//! `sigil-issuer owner`: register, list, show and revoke owners through the
//! admin API, and `owner consent`, which signs a consent JWS offline with
//! the owner's own key (it never reaches the issuer).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use proto::admin as pb;
use workload_api::config_file::parse_duration;
use workload_api::consent::{self, ConsentClaims, Delegation};

use super::{admin, output, selector_arg, spiffe_id_arg, status, SocketArg};
use crate::store::Selector;

#[derive(Debug, Subcommand)]
pub(super) enum OwnerCommand {
    /// Register an owner and the public key it signs consent with.
    Register {
        #[command(flatten)]
        id: OwnerIdArg,
        /// PEM public key ("PUBLIC KEY") or JWK; Ed25519 or P-256.
        #[arg(long)]
        public_key: PathBuf,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List owners.
    List {
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one owner.
    Show {
        #[command(flatten)]
        id: OwnerIdArg,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Revoke an owner: every credential under it stops.
    Revoke {
        #[command(flatten)]
        id: OwnerIdArg,
        /// Print JSON (times as Unix seconds) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Sign a consent JWS with the owner's key (offline) and print it.
    Consent(ConsentArgs),
}

#[derive(Debug, Args)]
pub(super) struct OwnerIdArg {
    /// The owner's id: a mailto:, https: or spiffe: URI.
    #[arg(long = "id", value_parser = owner_id_arg)]
    id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["spiffe_id", "spiffe_id_prefix"])))]
pub(super) struct ConsentArgs {
    #[command(flatten)]
    id: OwnerIdArg,
    /// The owner's private key: PEM PKCS#8 ("PRIVATE KEY") or a private JWK.
    #[arg(long)]
    key: PathBuf,
    /// The one SPIFFE ID consented to.
    #[arg(long, value_parser = spiffe_id_arg)]
    spiffe_id: Option<String>,
    /// Consent to every SPIFFE ID under this path (ends with '/').
    #[arg(long)]
    spiffe_id_prefix: Option<String>,
    /// TYPE:VALUE the workload is selected by; repeat for several.
    #[arg(long = "selector", value_parser = selector_arg, required = true)]
    selectors: Vec<Selector>,
    /// How long the consent holds (e.g. 30d); entries bound by it stop then.
    #[arg(long, value_parser = valid_for_arg)]
    valid_for: Duration,
    /// Let workloads under the prefix register children this many levels deep.
    #[arg(long, requires = "spiffe_id_prefix")]
    max_depth: Option<u32>,
    /// Children each workload may register (default 16 when delegating).
    #[arg(long, requires = "spiffe_id_prefix")]
    max_children: Option<u32>,
    /// Print JSON: the consent and the claims it carries.
    #[arg(long)]
    json: bool,
}

pub(super) fn owner_id_arg(value: &str) -> Result<String, String> {
    workload_api::owner::check_owner_id(value)
        .map(|()| value.to_owned())
        .map_err(|e| e.to_string())
}

fn valid_for_arg(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value).map_err(|e| e.to_string())?;
    if duration.as_secs() == 0 {
        return Err(format!("{value:?} must be at least one second"));
    }
    Ok(duration)
}

/// Reads a small text file the operator named, saying which flag it was for.
pub(super) fn read_text(flag: &str, path: &Path) -> Result<String, String> {
    const MAX_BYTES: u64 = 64 * 1024;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .len();
    if size > MAX_BYTES {
        return Err(format!(
            "{flag} {}: {size} bytes; at most {MAX_BYTES}",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

pub(super) async fn run(command: OwnerCommand) -> Result<(), String> {
    match command {
        OwnerCommand::Register {
            id,
            public_key,
            json,
            socket,
        } => {
            let public_key = read_text("--public-key", &public_key)?;
            let owner = admin(&socket)
                .await?
                .register_owner(pb::RegisterOwnerRequest {
                    id: id.id,
                    public_key,
                })
                .await
                .map_err(status)?
                .into_inner();
            output::owner(&owner, json);
        }
        OwnerCommand::List { json, socket } => {
            let list = admin(&socket)
                .await?
                .list_owners(pb::ListOwnersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            output::owners(&list.owners, json);
        }
        OwnerCommand::Show { id, json, socket } => {
            let owner = admin(&socket)
                .await?
                .get_owner(pb::OwnerId { id: id.id })
                .await
                .map_err(status)?
                .into_inner();
            output::owner(&owner, json);
        }
        OwnerCommand::Revoke { id, json, socket } => {
            let owner = admin(&socket)
                .await?
                .revoke_owner(pb::OwnerId { id: id.id })
                .await
                .map_err(status)?
                .into_inner();
            output::owner(&owner, json);
        }
        OwnerCommand::Consent(args) => {
            let (jws, claims) = sign_consent(&args, SystemTime::now())?;
            if args.json {
                output::consent_json(&jws, &claims);
            } else {
                workload_api::outln!("{jws}");
            }
        }
    }
    Ok(())
}

/// The consent JWS `args` ask for, signed at `now`, and its claims.
fn sign_consent(args: &ConsentArgs, now: SystemTime) -> Result<(String, ConsentClaims), String> {
    let key = workload_api::owner::load_signing_key(&read_text("--key", &args.key)?)
        .map_err(|e| format!("--key {}: {e}", args.key.display()))?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let selectors: Vec<String> = args.selectors.iter().map(Selector::to_string).collect();
    let delegation = match (args.max_depth, args.max_children) {
        (None, None) => None,
        (depth, children) => Some(Delegation {
            max_depth: depth.unwrap_or(1),
            max_children: children.unwrap_or(16),
        }),
    };
    let claims = ConsentClaims {
        iss: args.id.id.clone(),
        spiffe_id: args.spiffe_id.clone(),
        spiffe_id_prefix: args.spiffe_id_prefix.clone(),
        selectors: ConsentClaims::canonical_selectors(selectors.iter().map(String::as_str)),
        iat: now,
        nbf: now,
        exp: now.saturating_add(args.valid_for.as_secs()),
        jti: hex::encode(crate::ids::random_bytes::<16>()),
        delegation,
    };
    let jws = consent::sign(&claims, &key).map_err(|e| e.to_string())?;
    Ok((jws, claims))
}
