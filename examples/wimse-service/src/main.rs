//! An HTTP service protected by Sigil's WIMSE layer: every request must carry
//! a `Workload-Identity-Token` and either a WPT, in `Authorization: WPT <jwt>`
//! (draft-ietf-wimse-wpt-02) or in `Workload-Proof-Token` (-01), or an HTTP
//! Message Signature for this service's audience. The WIT trust bundles and
//! the service's own WIT (to sign responses when asked) come from the local
//! Workload API and are kept current from its streams.
//!
//! ```text
//! wimse-service --listen 127.0.0.1:8080 --audience https://orders.example.org
//! ```
//!
//! `GET /orders` and `POST /orders` answer with the caller's verified
//! identity (and its owner, when its WIT is bound to one). Refused requests get an RFC 9457 problem naming the failed
//! check: 401 with `WWW-Authenticate: WPT` for the Authorization form, 400
//! for the header form and HTTP signatures. `--wpt-forms` picks the WPT
//! forms accepted (both by default).
//!
//! Owners: `--accept-owner ID` (repeatable) lets through only callers whose
//! WIT is bound to one of those owners (others: 403, check `owner`).
//! `--revocations-url` points the service at the issuer's revocation list,
//! which it then follows (a long poll, plain HTTP: the list is signed by the
//! trust domain's WIT authority):
//!
//! ```text
//! wimse-service --audience https://orders.example.org \
//!     --revocations-url http://127.0.0.1:8082/v1/revocations \
//!     --accept-owner mailto:alice@example.org
//! ```
//!
//! A caller whose owner is revoked is then refused 403, check
//! `wit.owner_revoked`, at once even if its WIT was accepted before; and
//! while the service holds no current list (none yet, or past its expiry)
//! every owner-bound caller is refused 403, check `revocations`. Callers
//! without an owner are not affected.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json, Router};
use clap::Parser;
use proto::workload as pb;
use workload_api::client::{connect, EndpointAddress, ENDPOINT_ENV};
use workload_api::keypair::KeyPair;
use workload_api::wimse::layer::{ServiceIdentity, WimseLayer};
use workload_api::wimse::usage::UsageReporter;
use workload_api::wimse::{AcceptedForms, Profile, Proof, Verified, Verifier, VerifierConfig};
use workload_api::{Bundle, TrustDomain};

#[derive(Debug, Parser)]
#[command(
    name = "wimse-service",
    about = "An example service that verifies WIMSE proofs"
)]
struct Args {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// This service's audience: its origin (https://host) or full URIs.
    #[arg(long = "audience", required = true)]
    audiences: Vec<String>,
    /// The Workload API socket; default: $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    socket_path: Option<String>,
    /// spiffe (WIT-SVID) or wimse (generic).
    #[arg(long, default_value = "spiffe")]
    profile: String,
    /// The WPT forms accepted: both, authorization (Authorization: WPT) or
    /// header (Workload-Proof-Token).
    #[arg(long, default_value = "both")]
    wpt_forms: String,
    /// Accept only callers bound to this owner id (repeatable); without it,
    /// any caller, owned or not.
    #[arg(long = "accept-owner", value_name = "ID")]
    accept_owners: Vec<String>,
    /// The issuer's revocation list to follow, plain http, e.g.
    /// http://127.0.0.1:8082/v1/revocations; owner-bound callers are
    /// refused until a current list arrives.
    #[arg(long, value_name = "URL")]
    revocations_url: Option<String>,
    /// How long accepted proofs are aggregated before they are reported to
    /// the agent for the event log (refusals are reported one by one).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    usage_report_interval: std::time::Duration,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let profile = Profile::parse(&args.profile)
        .ok_or_else(|| format!("--profile: {:?} is not spiffe or wimse", args.profile))?;
    let forms = AcceptedForms::parse(&args.wpt_forms).ok_or_else(|| {
        format!(
            "--wpt-forms: {:?} is not both, authorization or header",
            args.wpt_forms
        )
    })?;
    let mut config = VerifierConfig::new(args.audiences);
    config.profile = profile;
    let verifier = Arc::new(Verifier::new(config));

    let endpoint = match &args.socket_path {
        Some(path) => EndpointAddress::from_path_or_address(path)
            .map_err(|e| format!("--socket-path: {e}"))?,
        None => {
            let value = std::env::var(ENDPOINT_ENV)
                .map_err(|_| format!("set --socket-path or {ENDPOINT_ENV}"))?;
            EndpointAddress::parse(&value).map_err(|e| format!("{ENDPOINT_ENV}: {e}"))?
        }
    };
    let mut client = connect(&endpoint).await.map_err(|e| e.to_string())?;
    let mut bundles = client
        .fetch_wit_bundles(pb::WitBundlesRequest {})
        .await
        .map_err(|s| format!("FetchWITBundles: {}", s.message()))?
        .into_inner();
    // Serve only once the first bundles are in; keep them current after.
    let first = bundles
        .message()
        .await
        .map_err(|s| format!("FetchWITBundles: {}", s.message()))?
        .ok_or("the Workload API closed the bundle stream")?;
    trust(&verifier, &first);
    let updated = verifier.clone();
    tokio::spawn(async move {
        while let Ok(Some(message)) = bundles.message().await {
            trust(&updated, &message);
        }
        tracing::warn!("the WIT bundle stream ended; keeping the last bundles");
    });

    // Its own WIT, to sign responses with; the service works without one
    // (signed responses are then refused with 501).
    let identity = Arc::new(ServiceIdentity::default());
    match client.fetch_witsvid(pb::WitsvidRequest::default()).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            if let Ok(Some(first)) = stream.message().await {
                keep_identity(&identity, &first);
            }
            let kept = identity.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    keep_identity(&kept, &message);
                }
            });
        }
        Err(status) => tracing::warn!(
            error = status.message(),
            "no WIT of its own: responses cannot be signed"
        ),
    }

    // Every verification, accepted or refused, goes to the agent for the
    // signed event log.
    let usage = UsageReporter::start_every(endpoint.clone(), args.usage_report_interval)
        .map_err(|e| e.to_string())?;
    let mut layer = WimseLayer::new(verifier)
        .accepting(forms)
        .signing_responses_as(identity)
        .reporting_usage(usage);
    if !args.accept_owners.is_empty() {
        layer = layer.accepting_owners(args.accept_owners);
    }
    if let Some(url) = &args.revocations_url {
        layer = layer
            .following_revocations(url)
            .map_err(|e| format!("--revocations-url: {e}"))?;
        tracing::info!(url = %url, "following the revocation list");
    }
    let app = Router::new()
        .route("/orders", get(orders).post(place_order))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{local}");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// Trusts the WIT bundles of a FetchWITBundles message, and no others: a
/// federation that ended drops out of the next message.
fn trust(verifier: &Verifier, message: &pb::WitBundlesResponse) {
    let mut bundles = Vec::with_capacity(message.bundles.len());
    for (id, json) in &message.bundles {
        let parsed = id
            .strip_prefix("spiffe://")
            .and_then(|td| TrustDomain::new(td).ok())
            .ok_or_else(|| format!("not a trust domain ID: {id:?}"))
            .and_then(|td| Bundle::from_jwks_json(td, json.as_bytes()).map_err(|e| e.to_string()));
        match parsed {
            Ok(bundle) => bundles.push(bundle),
            Err(error) => tracing::warn!(%error, bundle = %id, "WIT bundle ignored"),
        }
    }
    verifier.set_bundles(bundles);
}

/// Keeps the first WIT-SVID of a FetchWITSVID message.
fn keep_identity(identity: &ServiceIdentity, message: &pb::WitsvidResponse) {
    let Some(svid) = message.svids.first() else {
        return;
    };
    match KeyPair::from_jwk_json(&svid.wit_svid_key) {
        Ok(key) => identity.set(svid.wit_svid.clone(), key),
        Err(error) => tracing::warn!(%error, "WIT key from the Workload API refused"),
    }
}

fn proof_kind(caller: &Verified) -> &'static str {
    match caller.proof {
        Proof::Wpt(_) => "wpt",
        Proof::HttpSignature(_) => "http-signature",
    }
}

async fn orders(Extension(caller): Extension<Verified>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "caller": caller.subject(),
        "owner": caller.owner().map(|o| o.owner_id.as_str()),
        "proof": proof_kind(&caller),
    }))
}

async fn place_order(
    Extension(caller): Extension<Verified>,
    Json(order): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "caller": caller.subject(),
        "owner": caller.owner().map(|o| o.owner_id.as_str()),
        "proof": proof_kind(&caller),
        "accepted": order,
    }))
}
