//! `sigil-agent api ...` and `healthcheck`: Workload API client commands. The
//! endpoint comes from `--socket-path` or `SPIFFE_ENDPOINT_SOCKET`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use proto::workload as pb;
use workload_api::bundle::split_der_concat;
use workload_api::client::{self, EndpointAddress, WorkloadClient, ENDPOINT_ENV};
use workload_api::pem;

use crate::config::DEFAULT_SOCKET;

/// How a client command reaches the Workload API and how it prints.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The Workload API socket (a path or unix:///path); default: $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    socket_path: Option<String>,
    /// Print JSON (times as Unix seconds) instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

impl ClientArgs {
    pub(super) fn address(&self) -> Result<EndpointAddress, String> {
        if let Some(value) = &self.socket_path {
            return EndpointAddress::from_path_or_address(value)
                .map_err(|e| format!("--socket-path: {e}"));
        }
        match std::env::var(ENDPOINT_ENV) {
            Ok(value) => EndpointAddress::parse(&value).map_err(|e| format!("{ENDPOINT_ENV}: {e}")),
            Err(_) => Ok(EndpointAddress::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }

    pub(super) async fn connect(&self) -> Result<WorkloadClient, String> {
        client::connect(&self.address()?)
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch SVIDs or bundles.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate a token.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Print one line per X509-SVID update until interrupted.
    Watch(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetch X509-SVIDs.
    X509 {
        /// Write svid.pem, svid.key (0600) and bundle.pem here.
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        socket: ClientArgs,
    },
    /// Fetch JWT-SVIDs.
    Jwt {
        /// Audience; repeat for several.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Only for this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        socket: ClientArgs,
    },
    /// Fetch WIT-SVIDs and their private keys.
    Wit {
        /// Only for this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Write wit.jwt and wit.key.jwk (0600) here.
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        socket: ClientArgs,
    },
    /// Fetch the X.509, JWT and WIT bundles.
    Bundles(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt {
        /// The audience the token must name.
        #[arg(long)]
        audience: String,
        /// The JWT-SVID, compact serialization.
        #[arg(long)]
        token: String,
        #[command(flatten)]
        socket: ClientArgs,
    },
}

/// The first message of a server stream the Workload API opened.
pub(super) async fn first_message<T>(
    opened: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<T, String> {
    opened
        .map_err(status)?
        .into_inner()
        .message()
        .await
        .map_err(status)?
        .ok_or_else(|| "the Workload API closed the stream before answering".to_owned())
}

pub(super) fn status(e: tonic::Status) -> String {
    format!("{} ({:?})", e.message(), e.code())
}

fn expiry(chain: &[u8]) -> String {
    split_der_concat(chain)
        .ok()
        .and_then(|c| {
            c.first()
                .and_then(|leaf| workload_api::x509svid::check_leaf(leaf).ok())
        })
        .map(|leaf| humantime::format_rfc3339_seconds(leaf.not_after).to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn execute(command: ApiCommand) -> Result<(), String> {
    match command {
        ApiCommand::Fetch(FetchCommand::X509 { write, socket }) => {
            fetch_x509(&socket, write.as_deref()).await
        }
        ApiCommand::Fetch(FetchCommand::Jwt {
            audience,
            spiffe_id,
            socket,
        }) => {
            let response = socket
                .connect()
                .await?
                .fetch_jwtsvid(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if socket.json {
                let tokens = response
                    .svids
                    .iter()
                    .map(|s| (&s.spiffe_id, &s.hint, &s.svid));
                print_json(&tokens_json("token", tokens));
                return Ok(());
            }
            for svid in response.svids {
                workload_api::outln!("token({}):\n\t{}", svid.spiffe_id, svid.svid);
                if !svid.hint.is_empty() {
                    workload_api::outln!("hint:\n\t{}", svid.hint);
                }
            }
            Ok(())
        }
        ApiCommand::Fetch(FetchCommand::Wit {
            spiffe_id,
            write,
            socket,
        }) => fetch_wit(&socket, spiffe_id, write.as_deref()).await,
        ApiCommand::Fetch(FetchCommand::Bundles(socket)) => {
            let mut client = socket.connect().await?;
            let x509 =
                first_message(client.fetch_x509_bundles(pb::X509BundlesRequest {}).await).await?;
            let jwt =
                first_message(client.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await).await?;
            let wit =
                first_message(client.fetch_wit_bundles(pb::WitBundlesRequest {}).await).await?;
            let mut domains: Vec<_> = x509.bundles.keys().cloned().collect();
            domains.sort();
            if socket.json {
                let mut bundles = Vec::new();
                for td in domains {
                    let x509_pem: String = split_der_concat(&x509.bundles[&td])
                        .map_err(|e| e.to_string())?
                        .iter()
                        .map(|c| pem::certificate(c))
                        .collect();
                    let parse = |json: Option<&[u8]>| {
                        json.and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
                    };
                    bundles.push(serde_json::json!({
                        "trust_domain": td,
                        "x509_authorities": x509_pem,
                        "jwt_bundle": parse(jwt.bundles.get(&td).map(Vec::as_slice)),
                        "wit_bundle": parse(wit.bundles.get(&td).map(String::as_bytes)),
                    }));
                }
                print_json(&bundles.into());
                return Ok(());
            }
            for td in domains {
                workload_api::outln!("X.509 bundle for {td}:");
                for cert in split_der_concat(&x509.bundles[&td]).map_err(|e| e.to_string())? {
                    workload_api::out!("{}", pem::certificate(&cert));
                }
                if let Some(jwks) = jwt.bundles.get(&td) {
                    workload_api::outln!("JWT bundle for {td}:\n{}", String::from_utf8_lossy(jwks));
                }
                if let Some(jwks) = wit.bundles.get(&td) {
                    workload_api::outln!("WIT bundle for {td}:\n{jwks}");
                }
            }
            Ok(())
        }
        ApiCommand::Validate(ValidateCommand::Jwt {
            audience,
            token,
            socket,
        }) => {
            let response = socket
                .connect()
                .await?
                .validate_jwtsvid(pb::ValidateJwtsvidRequest {
                    audience,
                    svid: token,
                })
                .await
                .map_err(status)?
                .into_inner();
            if socket.json {
                let claims = response
                    .claims
                    .as_ref()
                    .map(|c| serde_json::from_str::<serde_json::Value>(&struct_json(c)))
                    .transpose()
                    .map_err(|e| e.to_string())?;
                print_json(&serde_json::json!({
                    "valid": true,
                    "spiffe_id": response.spiffe_id,
                    "claims": claims,
                }));
                return Ok(());
            }
            workload_api::outln!("SVID is valid.");
            workload_api::outln!("SPIFFE ID : {}", response.spiffe_id);
            if let Some(claims) = response.claims {
                workload_api::outln!("Claims    : {}", struct_json(&claims));
            }
            Ok(())
        }
        ApiCommand::Watch(socket) => {
            let mut stream = socket
                .connect()
                .await?
                .fetch_x509svid(pb::X509svidRequest {})
                .await
                .map_err(status)?
                .into_inner();
            while let Some(update) = stream.message().await.map_err(status)? {
                if socket.json {
                    let svids: Vec<_> = update
                        .svids
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "spiffe_id": s.spiffe_id,
                                "expires_at": not_after(&s.x509_svid),
                            })
                        })
                        .collect();
                    // One object a line, so a reader can follow the stream.
                    workload_api::outln!(
                        "{}",
                        serde_json::json!({ "received_at": unix_now(), "svids": svids })
                    );
                    continue;
                }
                let parts: Vec<String> = update
                    .svids
                    .iter()
                    .map(|s| format!("{} (expires {})", s.spiffe_id, expiry(&s.x509_svid)))
                    .collect();
                workload_api::outln!(
                    "{} received {} SVID(s): {}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                    update.svids.len(),
                    parts.join(", ")
                );
            }
            Err("the Workload API closed the stream".into())
        }
    }
}

async fn fetch_x509(socket: &ClientArgs, write: Option<&Path>) -> Result<(), String> {
    let mut client = socket.connect().await?;
    let response = first_message(client.fetch_x509svid(pb::X509svidRequest {}).await).await?;
    if let Some(dir) = write {
        for (i, svid) in response.svids.iter().enumerate() {
            write_svid(dir, &numbered(i), svid)?;
        }
    }
    if socket.json {
        let svids: Vec<_> = response
            .svids
            .iter()
            .map(|s| -> Result<serde_json::Value, String> {
                Ok(serde_json::json!({
                    "spiffe_id": s.spiffe_id,
                    "hint": s.hint,
                    "expires_at": not_after(&s.x509_svid),
                    "x509_svid": pems(&s.x509_svid)?,
                    "bundle": pems(&s.bundle)?,
                }))
            })
            .collect::<Result<_, _>>()?;
        print_json(&svids.into());
        return Ok(());
    }
    workload_api::outln!("Received {} svid after fetching", response.svids.len());
    for svid in &response.svids {
        workload_api::outln!();
        workload_api::outln!("SPIFFE ID:\t{}", svid.spiffe_id);
        workload_api::outln!("SVID Valid Until:\t{}", expiry(&svid.x509_svid));
        if !svid.hint.is_empty() {
            workload_api::outln!("Hint:\t\t{}", svid.hint);
        }
    }
    if let Some(dir) = write {
        workload_api::outln!(
            "\nWrote svid.pem, svid.key and bundle.pem to {}",
            dir.display()
        );
    }
    Ok(())
}

async fn fetch_wit(
    socket: &ClientArgs,
    spiffe_id: Option<String>,
    write: Option<&Path>,
) -> Result<(), String> {
    let mut client = socket.connect().await?;
    let request = pb::WitsvidRequest {
        spiffe_id: spiffe_id.unwrap_or_default(),
    };
    let response = first_message(client.fetch_witsvid(request).await).await?;
    if let Some(dir) = write {
        for (i, svid) in response.svids.iter().enumerate() {
            let suffix = numbered(i);
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let wit_path = dir.join(format!("wit{suffix}.jwt"));
            std::fs::write(&wit_path, &svid.wit_svid)
                .map_err(|e| format!("{}: {e}", wit_path.display()))?;
            let key_path = dir.join(format!("wit{suffix}.key.jwk"));
            workload_api::files::write_private(&key_path, svid.wit_svid_key.as_bytes())
                .map_err(|e| format!("{}: {e}", key_path.display()))?;
        }
    }
    if socket.json {
        // The private key is written by --write only, never printed.
        let tokens = response
            .svids
            .iter()
            .map(|s| (&s.spiffe_id, &s.hint, &s.wit_svid));
        print_json(&tokens_json("wit_svid", tokens));
        return Ok(());
    }
    workload_api::outln!("Received {} WIT-SVID(s)", response.svids.len());
    for svid in &response.svids {
        workload_api::outln!();
        workload_api::outln!("SPIFFE ID:\t{}", svid.spiffe_id);
        workload_api::outln!("WIT Valid Until:\t{}", wit_expiry(&svid.wit_svid));
        if !svid.hint.is_empty() {
            workload_api::outln!("Hint:\t\t{}", svid.hint);
        }
        workload_api::outln!("WIT:\t\t{}", svid.wit_svid);
    }
    if let Some(dir) = write {
        workload_api::outln!("\nWrote wit.jwt and wit.key.jwk to {}", dir.display());
    }
    Ok(())
}

/// `""` for the first of several files, `.1`, `.2`... for the others.
fn numbered(i: usize) -> String {
    if i == 0 {
        String::new()
    } else {
        format!(".{i}")
    }
}

/// JWT-SVIDs or WIT-SVIDs as JSON: each with its SPIFFE ID, hint, `exp`
/// (Unix seconds) and the token under `field`.
fn tokens_json<'a>(
    field: &str,
    tokens: impl Iterator<Item = (&'a String, &'a String, &'a String)>,
) -> serde_json::Value {
    tokens
        .map(|(spiffe_id, hint, token)| {
            let mut item = serde_json::json!({
                "spiffe_id": spiffe_id,
                "hint": hint,
                "expires_at": jwt_expiry(token),
            });
            item[field] = token.as_str().into();
            item
        })
        .collect()
}

fn print_json(value: &serde_json::Value) {
    workload_api::outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The leaf's notAfter in Unix seconds, for JSON output.
fn not_after(chain: &[u8]) -> Option<u64> {
    let leaf = split_der_concat(chain).ok()?.into_iter().next()?;
    let leaf = workload_api::x509svid::check_leaf(&leaf).ok()?;
    leaf.not_after
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// DER certificates as PEM text.
fn pems(der: &[u8]) -> Result<String, String> {
    Ok(split_der_concat(der)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|c| pem::certificate(c))
        .collect())
}

/// The `exp` of a JWT, Unix seconds.
fn jwt_expiry(token: &str) -> Option<u64> {
    workload_api::jws::parse(token)
        .ok()
        .and_then(|jws| jws.numeric_date("exp").ok().flatten())
}

/// The `exp` of a WIT, as RFC 3339.
fn wit_expiry(token: &str) -> String {
    jwt_expiry(token)
        .map(|exp| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp),
            )
            .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn write_svid(dir: &Path, suffix: &str, svid: &pb::X509svid) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_pem = pem::encode("PRIVATE KEY", &svid.x509_svid_key);
    let write = |name: &str, bytes: &[u8], private: bool| -> Result<(), String> {
        let path = dir.join(name);
        if private {
            workload_api::files::write_private(&path, bytes)
        } else {
            std::fs::write(&path, bytes)
        }
        .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        &format!("svid{suffix}.pem"),
        pems(&svid.x509_svid)?.as_bytes(),
        false,
    )?;
    write(&format!("svid{suffix}.key"), key_pem.as_bytes(), true)?;
    write(
        &format!("bundle{suffix}.pem"),
        pems(&svid.bundle)?.as_bytes(),
        false,
    )
}

fn struct_json(s: &prost_types::Struct) -> String {
    fn value(v: &prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        match &v.kind {
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            // Struct numbers are doubles; show whole ones (exp, iat) as integers.
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                serde_json::json!(*n as i64)
            }
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(value).collect())
            }
            Some(Kind::StructValue(s)) => object(s),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    fn object(s: &prost_types::Struct) -> serde_json::Value {
        serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect(),
        )
    }
    object(s).to_string()
}

/// Prints the agent's health; fails when the agent has failed.
pub async fn healthcheck(args: &ClientArgs) -> Result<(), String> {
    use proto::agent::health_response::State;
    let channel = client::channel(&args.address()?)
        .await
        .map_err(|e| e.to_string())?;
    let answer = proto::agent::agent_health_client::AgentHealthClient::new(channel)
        .check(proto::agent::HealthRequest {})
        .await
        .map_err(|s| format!("agent is unhealthy: {}", status(s)))?
        .into_inner();
    let state = match answer.state() {
        State::Healthy => "healthy",
        State::Degraded => "degraded",
        State::Failed | State::Unspecified => "failed",
    };
    if args.json {
        workload_api::outln!(
            "{}",
            serde_json::json!({
                "state": state,
                "reason": answer.reason,
                "issuer_unreachable_since": answer.issuer_unreachable_since,
                "svids": answer.svids,
                "agent_id": answer.agent_id,
            })
        );
    } else if state == "healthy" {
        workload_api::outln!(
            "Agent is healthy: {} ({} SVIDs valid).",
            answer.agent_id,
            answer.svids
        );
    } else {
        workload_api::outln!("Agent is {state}: {}", answer.reason);
    }
    if state == "failed" {
        return Err(format!("agent has failed: {}", answer.reason));
    }
    Ok(())
}
