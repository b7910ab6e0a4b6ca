//! `sigil-issuer federation` (relationships with foreign trust domains) and
//! `sigil-issuer bundle` (this trust domain's bundle, and the bundles held
//! for foreign ones), through the admin API.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use proto::admin as pb;

use super::{admin, output, status, SocketArg};
use crate::clock::rfc3339 as date;

/// The largest bundle file read.
const MAX_BUNDLE_FILE: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub(super) enum FederationCommand {
    /// Federate with a trust domain: poll its bundle endpoint from now on.
    Create {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Change a relationship's endpoint parameters.
    Update {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// End a relationship: stop polling and delete the trust domain's bundle.
    Delete {
        #[command(flatten)]
        trust_domain: TrustDomainArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one relationship and the bundle held for it.
    Show {
        #[command(flatten)]
        trust_domain: TrustDomainArg,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List relationships.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Fetch a trust domain's bundle now.
    Refresh {
        #[command(flatten)]
        trust_domain: TrustDomainArg,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum BundleCommand {
    /// Print a trust bundle: this trust domain's, or with --trust-domain the
    /// one held for a foreign trust domain.
    Show {
        /// A foreign trust domain.
        #[arg(long)]
        trust_domain: Option<String>,
        /// pem (X.509 authorities) or spiffe (the JWK Set with every key).
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
        /// Print JSON: the trust domain, the SPIFFE bundle and the PEM authorities.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Set a foreign trust domain's bundle by hand (a SPIFFE bundle or PEM
    /// certificates); a relationship's next fetch replaces it.
    Set {
        #[command(flatten)]
        trust_domain: TrustDomainArg,
        /// The bundle file.
        #[arg(long)]
        path: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the bundles held for foreign trust domains.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a foreign trust domain's bundle.
    Delete {
        #[command(flatten)]
        trust_domain: TrustDomainArg,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum BundleFormat {
    Pem,
    Spiffe,
}

#[derive(Debug, Args)]
pub(super) struct TrustDomainArg {
    /// The foreign trust domain, e.g. partner.org.
    #[arg(long)]
    trust_domain: String,
}

#[derive(Debug, Args)]
pub(super) struct OutputArgs {
    /// Print JSON (times as Unix seconds) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Debug, Args)]
pub(super) struct EndpointArgs {
    /// The foreign trust domain, e.g. partner.org.
    #[arg(long)]
    trust_domain: String,
    /// Its bundle endpoint, an https URL.
    #[arg(long)]
    bundle_endpoint_url: String,
    /// How the endpoint is authenticated: https_web (Web PKI) or
    /// https_spiffe (an X509-SVID with --endpoint-spiffe-id).
    #[arg(long)]
    profile: String,
    /// https_spiffe: the SPIFFE ID the endpoint presents.
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// https_spiffe, endpoint in the trust domain itself: the bundle that
    /// authenticates the first fetch (SPIFFE bundle or PEM).
    #[arg(long)]
    bootstrap_bundle: Option<PathBuf>,
}

impl EndpointArgs {
    fn request(self) -> Result<pb::FederationRequest, String> {
        let bootstrap_bundle = match &self.bootstrap_bundle {
            Some(path) => read_bundle(path)?,
            None => Vec::new(),
        };
        Ok(pb::FederationRequest {
            federation: Some(pb::Federation {
                trust_domain: self.trust_domain,
                bundle_endpoint_url: self.bundle_endpoint_url,
                profile: self.profile,
                endpoint_spiffe_id: self.endpoint_spiffe_id.unwrap_or_default(),
                ..Default::default()
            }),
            bootstrap_bundle,
        })
    }
}

/// A bundle file, bounded.
fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_BUNDLE_FILE {
        return Err(format!(
            "{}: more than {MAX_BUNDLE_FILE} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn trust_domain(arg: TrustDomainArg) -> pb::TrustDomainRequest {
    pb::TrustDomainRequest {
        trust_domain: arg.trust_domain,
    }
}

pub(super) async fn run_federation(command: FederationCommand) -> Result<(), String> {
    match command {
        FederationCommand::Create { endpoint, output } => {
            let request = endpoint.request()?;
            let federation = admin(&output.socket)
                .await?
                .create_federation(request)
                .await
                .map_err(status)?
                .into_inner();
            print_federations(&[federation], output.json, false);
        }
        FederationCommand::Update { endpoint, output } => {
            let request = endpoint.request()?;
            let federation = admin(&output.socket)
                .await?
                .update_federation(request)
                .await
                .map_err(status)?
                .into_inner();
            print_federations(&[federation], output.json, false);
        }
        FederationCommand::Delete {
            trust_domain: td,
            socket,
        } => {
            let name = td.trust_domain.clone();
            admin(&socket)
                .await?
                .delete_federation(trust_domain(td))
                .await
                .map_err(status)?;
            workload_api::outln!("Deleted the federation relationship with {name} and its bundle");
        }
        FederationCommand::Show {
            trust_domain: td,
            output,
        } => {
            let federation = admin(&output.socket)
                .await?
                .get_federation(trust_domain(td))
                .await
                .map_err(status)?
                .into_inner();
            print_federations(&[federation], output.json, false);
        }
        FederationCommand::List { output } => {
            let federations = admin(&output.socket)
                .await?
                .list_federations(pb::Empty {})
                .await
                .map_err(status)?
                .into_inner()
                .federations;
            print_federations(&federations, output.json, true);
        }
        FederationCommand::Refresh {
            trust_domain: td,
            output,
        } => {
            let federation = admin(&output.socket)
                .await?
                .refresh_federation(trust_domain(td))
                .await
                .map_err(status)?
                .into_inner();
            print_federations(&[federation], output.json, false);
        }
    }
    Ok(())
}

pub(super) async fn run_bundle(command: BundleCommand) -> Result<(), String> {
    match command {
        BundleCommand::Show {
            trust_domain: None,
            format,
            json,
            socket,
        } => {
            let bundle = admin(&socket)
                .await?
                .get_bundle(pb::BundleRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                output::bundle_json(&bundle);
            } else {
                print_bundle_text(format, &bundle.pem, &bundle.jwks);
            }
        }
        BundleCommand::Show {
            trust_domain: Some(name),
            format,
            json,
            socket,
        } => {
            let bundle = admin(&socket)
                .await?
                .get_foreign_bundle(pb::TrustDomainRequest { trust_domain: name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&bundle_json(&bundle));
            } else {
                print_bundle_text(format, &bundle.pem, &bundle.jwks);
            }
        }
        BundleCommand::Set {
            trust_domain: td,
            path,
            output,
        } => {
            let bytes = read_bundle(&path)?;
            let bundle = admin(&output.socket)
                .await?
                .set_foreign_bundle(pb::SetBundleRequest {
                    trust_domain: td.trust_domain,
                    bundle: bytes,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_bundles(&[bundle], output.json, false);
        }
        BundleCommand::List { output } => {
            let bundles = admin(&output.socket)
                .await?
                .list_foreign_bundles(pb::Empty {})
                .await
                .map_err(status)?
                .into_inner()
                .bundles;
            print_bundles(&bundles, output.json, true);
        }
        BundleCommand::Delete {
            trust_domain: td,
            socket,
        } => {
            let name = td.trust_domain.clone();
            admin(&socket)
                .await?
                .delete_foreign_bundle(trust_domain(td))
                .await
                .map_err(status)?;
            workload_api::outln!("Deleted the bundle of {name}");
        }
    }
    Ok(())
}

fn print_bundle_text(format: BundleFormat, pem: &str, jwks: &[u8]) {
    match format {
        BundleFormat::Pem => workload_api::out!("{pem}"),
        BundleFormat::Spiffe => workload_api::outln!("{}", String::from_utf8_lossy(jwks)),
    }
}

fn print_json(value: &serde_json::Value) {
    workload_api::outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

fn bundle_json(b: &pb::ForeignBundle) -> serde_json::Value {
    let jwks: serde_json::Value =
        serde_json::from_slice(&b.jwks).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "trust_domain": b.trust_domain,
        "sequence": b.sequence,
        "origin": b.origin,
        "updated_at": b.updated_at,
        "bundle": jwks,
        "x509_authorities": b.pem,
    })
}

fn federation_json(f: &pb::Federation) -> serde_json::Value {
    serde_json::json!({
        "trust_domain": f.trust_domain,
        "bundle_endpoint_url": f.bundle_endpoint_url,
        "profile": f.profile,
        "endpoint_spiffe_id": f.endpoint_spiffe_id,
        "created_at": f.created_at,
        "updated_at": f.updated_at,
        "bundle": f.bundle.as_ref().map(bundle_json),
        "last_error": f.last_error,
        "last_polled_at": f.last_polled_at,
        "failed_polls": f.failed_polls,
    })
}

/// Items as JSON (with `list`, an array even of one) or as aligned text,
/// one block each.
fn print_items<T>(
    items: &[T],
    json: bool,
    list: bool,
    to_json: fn(&T) -> serde_json::Value,
    none: &str,
    text: fn(&T),
) {
    if json {
        let values: Vec<_> = items.iter().map(to_json).collect();
        return print_json(&if list {
            serde_json::Value::Array(values)
        } else {
            values.into_iter().next().unwrap_or_default()
        });
    }
    if items.is_empty() {
        workload_api::outln!("{none}");
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            workload_api::outln!();
        }
        text(item);
    }
}

fn print_federations(federations: &[pb::Federation], json: bool, list: bool) {
    print_items(
        federations,
        json,
        list,
        federation_json,
        "Found 0 federation relationships",
        federation_text,
    );
}

fn federation_text(f: &pb::Federation) {
    workload_api::outln!("Trust domain     : {}", f.trust_domain);
    workload_api::outln!("Endpoint URL     : {}", f.bundle_endpoint_url);
    workload_api::outln!("Profile          : {}", f.profile);
    if !f.endpoint_spiffe_id.is_empty() {
        workload_api::outln!("Endpoint ID      : {}", f.endpoint_spiffe_id);
    }
    match &f.bundle {
        Some(b) => workload_api::outln!(
            "Bundle           : sequence {}, {} at {}",
            b.sequence,
            b.origin,
            date(b.updated_at)
        ),
        None => workload_api::outln!("Bundle           : none yet"),
    }
    match f.last_polled_at {
        0 => workload_api::outln!("Last polled      : not yet"),
        at => workload_api::outln!(
            "Last polled      : {}, {} failed since the last good poll",
            date(at),
            f.failed_polls
        ),
    }
    if !f.last_error.is_empty() {
        workload_api::outln!("Last error       : {}", f.last_error);
    }
}

fn print_bundles(bundles: &[pb::ForeignBundle], json: bool, list: bool) {
    print_items(
        bundles,
        json,
        list,
        bundle_json,
        "Found 0 foreign bundles",
        bundle_text,
    );
}

fn bundle_text(b: &pb::ForeignBundle) {
    workload_api::outln!("Trust domain     : {}", b.trust_domain);
    workload_api::outln!("Sequence         : {}", b.sequence);
    workload_api::outln!("Origin           : {}", b.origin);
    workload_api::outln!("Updated at       : {}", date(b.updated_at));
}
