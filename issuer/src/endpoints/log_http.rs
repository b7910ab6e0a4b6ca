//! The event log over HTTP: C2SP tlog-tiles under `/log/`, plus proofs and
//! exports. Everything served is either signed by the log key or checkable
//! against what is, so none of it needs authentication.
//!
//! - `GET /log/checkpoint`: the latest checkpoint (C2SP signed note).
//! - `GET /log/tile/<L>/<N>[.p/<W>]`, `GET /log/tile/entries/<N>[.p/<W>]`:
//!   hash tiles and entry bundles (immutable once served).
//! - `GET /log/key`: the verifier key. Auditors should pin theirs from a
//!   channel they trust; this is for convenience.
//! - `GET /log/proof/inclusion?index=I&size=S`,
//!   `GET /log/proof/consistency?from=M&size=N`: RFC 6962 proofs as JSON
//!   (`hashes`, base64).
//! - `GET /log/export[?from=N]`: the export `audit verify` checks (JSON
//!   lines: a header, then one leaf per line).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio_stream::wrappers::ReceiverStream;

use super::web::{numbers, problem, reply};
use crate::eventlog::reads::{self, ReadError};
use crate::eventlog::tiles::TilePath;
use crate::state::IssuerState;

/// Leaves read per query while an export streams.
const EXPORT_PAGE: u64 = 1024;

pub(super) fn routes() -> Router<IssuerState> {
    Router::new()
        .route("/log/checkpoint", get(checkpoint))
        .route("/log/key", get(key))
        .route("/log/tile/{*path}", get(tile))
        .route("/log/proof/inclusion", get(inclusion))
        .route("/log/proof/consistency", get(consistency))
        .route("/log/export", get(export))
}

fn read_failed(error: ReadError) -> Response {
    match error {
        ReadError::NotFound(detail) => problem(StatusCode::NOT_FOUND, detail),
        ReadError::BadRequest(detail) => problem(StatusCode::BAD_REQUEST, detail),
        other => {
            tracing::error!(error = %other, "event log read failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the event log could not be read; see the issuer log".into(),
            )
        }
    }
}

async fn checkpoint(State(state): State<IssuerState>) -> Response {
    match reads::head(&state.store).await {
        Ok(head) => reply("text/plain; charset=utf-8", head.note),
        Err(error) => read_failed(error),
    }
}

async fn key(State(state): State<IssuerState>) -> Response {
    reply(
        "text/plain; charset=utf-8",
        format!("{}\n", state.events.key().verifier_key()),
    )
}

async fn tile(State(state): State<IssuerState>, Path(path): Path<String>) -> Response {
    let path = match TilePath::parse(&format!("tile/{path}")) {
        Ok(path) => path,
        Err(detail) => return problem(StatusCode::NOT_FOUND, detail),
    };
    match reads::tile(&state.store, &path).await {
        Ok(data) => {
            let mut response = reply("application/octet-stream", data);
            // A tile's bytes never change once the tree holds it.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            response
        }
        Err(error) => read_failed(error),
    }
}

fn json(value: serde_json::Value) -> Response {
    reply("application/json", value.to_string())
}

/// The named numbers of a query, all required.
fn required(query: Option<&str>, names: &[&str]) -> Result<Vec<u64>, String> {
    let found = numbers(query, names)?;
    names
        .iter()
        .map(|name| {
            found
                .get(*name)
                .copied()
                .ok_or_else(|| format!("{name} is required"))
        })
        .collect()
}

async fn inclusion(State(state): State<IssuerState>, RawQuery(query): RawQuery) -> Response {
    let (index, size) = match required(query.as_deref(), &["index", "size"]) {
        Ok(v) => (v[0], v[1]),
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    match reads::inclusion_proof(&state.store, index, size).await {
        Ok(proof) => json(serde_json::json!({
            "index": index, "size": size, "hashes": reads::encode_hashes(&proof),
        })),
        Err(error) => read_failed(error),
    }
}

async fn consistency(State(state): State<IssuerState>, RawQuery(query): RawQuery) -> Response {
    let (from, size) = match required(query.as_deref(), &["from", "size"]) {
        Ok(v) => (v[0], v[1]),
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    match reads::consistency_proof(&state.store, from, size).await {
        Ok(proof) => json(serde_json::json!({
            "from": from, "size": size, "hashes": reads::encode_hashes(&proof),
        })),
        Err(error) => read_failed(error),
    }
}

async fn export(State(state): State<IssuerState>, RawQuery(query): RawQuery) -> Response {
    let from = match numbers(query.as_deref(), &["from"]) {
        Ok(found) => found.get("from").copied().unwrap_or(0),
        Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
    };
    let log = &state.events;
    let (header, head) =
        match reads::export_header(&state.store, log.origin(), &log.key().verifier_key(), from)
            .await
        {
            Ok(found) => found,
            Err(error) => return read_failed(error),
        };
    // Leaves stream a page at a time, up to the checkpoint's size.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let store = state.store.clone();
    tokio::spawn(async move {
        if tx.send(Ok(format!("{header}\n"))).await.is_err() {
            return;
        }
        let mut at = from;
        while at < head.size {
            let to = (at + EXPORT_PAGE).min(head.size);
            let page = match store.log_leaves(at, to).await {
                Ok(leaves) if leaves.len() as u64 == to - at => leaves,
                Ok(_) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("leaves are missing")))
                        .await;
                    return;
                }
                Err(error) => {
                    let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for leaf in page {
                chunk.push_str(&leaf);
                chunk.push('\n');
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            at = to;
        }
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    response
}
