//! Reading the stored tree: tiles, proofs and exports. Each computation runs
//! once against a reader that notes the hashes it wants, then again over
//! those hashes fetched from the database in one query.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tlog_tiles::HashReader;

use super::tiles::TilePath;
use super::tree::{frontier_indexes, Dyn, Hash, MapReader, WantedHashes};
use crate::store::{LogHead, Store, StoreError};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The request asks for what the tree does not (yet) hold.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored tree is missing hashes: {0}")]
    Tree(tlog_tiles::Error),
}

/// The format name an export's header carries.
pub const EXPORT_FORMAT: &str = "sigil-event-log-export/1";

async fn with_hashes<T>(
    store: &Store,
    compute: impl Fn(&dyn HashReader) -> Result<T, tlog_tiles::Error>,
) -> Result<T, ReadError> {
    let wanted = WantedHashes::of(&compute);
    let found: HashMap<u64, Hash> = store
        .log_hashes(&wanted)
        .await?
        .into_iter()
        .map(|(i, h)| (i, Hash(h)))
        .collect();
    compute(&MapReader(found)).map_err(ReadError::Tree)
}

/// The latest checkpoint, or NotFound before the first is signed.
pub async fn head(store: &Store) -> Result<LogHead, ReadError> {
    store
        .log_head()
        .await?
        .ok_or_else(|| ReadError::NotFound("no checkpoint is signed yet".into()))
}

/// The tile at `path`, if the tree holds all of it.
pub async fn tile(store: &Store, path: &TilePath) -> Result<Vec<u8>, ReadError> {
    let size = head(store).await?.size;
    if !path.within(size) {
        return Err(ReadError::NotFound(format!(
            "{} is beyond the tree's {size} leaves",
            path.path()
        )));
    }
    match *path {
        TilePath::Hashes {
            level,
            index,
            width,
        } => {
            let tile =
                tlog_tiles::Tile::new(super::tiles::TILE_HEIGHT, level, index, width as u32, false);
            with_hashes(store, |r| tile.read_data(&Dyn(r))).await
        }
        TilePath::Entries { index, width } => {
            let first = index * super::tiles::TILE_WIDTH;
            let leaves = store.log_leaves(first, first + width).await?;
            if leaves.len() as u64 != width {
                return Err(ReadError::Tree(tlog_tiles::Error::IndexesNotInTree));
            }
            Ok(super::tiles::entry_bundle(
                leaves.iter().map(|l| l.as_bytes()),
            ))
        }
    }
}

fn within_head(what: &str, size: u64, head: &LogHead) -> Result<(), ReadError> {
    if size > head.size {
        return Err(ReadError::NotFound(format!(
            "{what} {size} is beyond the latest checkpoint's size {}",
            head.size
        )));
    }
    Ok(())
}

/// The RFC 6962 inclusion proof of leaf `index` in the tree of `size`.
pub async fn inclusion_proof(store: &Store, index: u64, size: u64) -> Result<Vec<Hash>, ReadError> {
    within_head("size", size, &head(store).await?)?;
    if index >= size {
        return Err(ReadError::BadRequest(format!(
            "index {index} is not below size {size}"
        )));
    }
    with_hashes(store, |r| tlog_tiles::prove_record(size, index, &Dyn(r))).await
}

/// The RFC 6962 consistency proof from the tree of `from` to that of `size`.
pub async fn consistency_proof(
    store: &Store,
    from: u64,
    size: u64,
) -> Result<Vec<Hash>, ReadError> {
    within_head("size", size, &head(store).await?)?;
    if from == 0 || from > size {
        return Err(ReadError::BadRequest(format!(
            "from {from} must be between 1 and size {size}"
        )));
    }
    with_hashes(store, |r| tlog_tiles::prove_tree(size, from, &Dyn(r))).await
}

/// Hashes as an export and the proof endpoints write them.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h.0)).collect()
}

/// An export's first line: what the leaves after it are checked against.
pub async fn export_header(
    store: &Store,
    origin: &str,
    verifier_key: &str,
    from: u64,
) -> Result<(serde_json::Value, LogHead), ReadError> {
    let head = head(store).await?;
    within_head("from", from, &head)?;
    let indexes = frontier_indexes(from);
    let found = store.log_hashes(&indexes).await?;
    let frontier: Vec<Hash> = indexes
        .iter()
        .map(|i| found.get(i).map(|h| Hash(*h)))
        .collect::<Option<_>>()
        .ok_or(ReadError::Tree(tlog_tiles::Error::IndexesNotInTree))?;
    let header = serde_json::json!({
        "format": EXPORT_FORMAT,
        "origin": origin,
        "log_key": verifier_key,
        "checkpoint": head.note,
        "from": from,
        "frontier": encode_hashes(&frontier),
    });
    Ok((header, head))
}
