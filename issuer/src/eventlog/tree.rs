//! The Merkle tree (RFC 6962) through the tlog algorithms of the
//! `tlog_tiles` crate: node hashes live at stored-hash indexes, and the
//! tree of size n is determined by its frontier, the roots of the complete
//! subtrees covering leaves 0..n. The sequencer keeps a frontier to append
//! leaves; an auditor's verifier keeps one to recompute the tree from an
//! export in constant memory.

use std::cell::RefCell;
use std::collections::HashMap;

pub use tlog_tiles::Hash;
use tlog_tiles::{stored_hash_index, sub_tree_index, HashReader};

/// Hashes by stored-hash index; a missing one is an error, never a guess.
#[derive(Debug, Default)]
pub struct MapReader(pub HashMap<u64, Hash>);

impl HashReader for MapReader {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// A reader that only notes which hashes are asked for: the first pass of
/// a computation whose hashes must be fetched from the database first.
#[derive(Debug, Default)]
pub struct WantedHashes(RefCell<Vec<u64>>);

impl HashReader for WantedHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Err(tlog_tiles::Error::IndexesNotInTree)
    }
}

impl WantedHashes {
    /// Runs `compute` to learn the indexes it reads.
    pub fn of<T>(compute: impl Fn(&dyn HashReader) -> Result<T, tlog_tiles::Error>) -> Vec<u64> {
        let wanted = WantedHashes::default();
        let _ = compute(&wanted);
        wanted.0.into_inner()
    }
}

/// A `dyn HashReader` where the crate's functions want a sized reader.
pub struct Dyn<'a>(pub &'a dyn HashReader);

impl std::fmt::Debug for Dyn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dyn(HashReader)")
    }
}

impl HashReader for Dyn<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.read_hashes(indexes)
    }
}

/// The stored-hash indexes of the frontier of a tree of `size` leaves,
/// left to right.
pub fn frontier_indexes(size: u64) -> Vec<u64> {
    if size == 0 {
        return Vec::new();
    }
    sub_tree_index(0, size, Vec::new())
}

/// The tree's right edge: enough to append leaves and compute the root.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    hashes: HashMap<u64, Hash>,
}

/// A hash the frontier needs was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tree's hash at stored index {0} is missing")]
pub struct MissingHash(pub u64);

impl Frontier {
    /// The frontier of a tree of `size` leaves from its hashes (at least
    /// those at [`frontier_indexes`]`(size)`).
    pub fn new(size: u64, hashes: &HashMap<u64, Hash>) -> Result<Self, MissingHash> {
        let mut kept = HashMap::new();
        for index in frontier_indexes(size) {
            kept.insert(index, *hashes.get(&index).ok_or(MissingHash(index))?);
        }
        Ok(Frontier { size, hashes: kept })
    }

    /// The frontier from its hashes in order, as an export carries it.
    pub fn from_list(size: u64, list: &[Hash]) -> Result<Self, String> {
        let indexes = frontier_indexes(size);
        if indexes.len() != list.len() {
            return Err(format!(
                "a tree of {size} leaves has {} frontier hashes, not {}",
                indexes.len(),
                list.len()
            ));
        }
        Ok(Frontier {
            size,
            hashes: indexes.into_iter().zip(list.iter().copied()).collect(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier's hashes, left to right.
    pub fn list(&self) -> Vec<Hash> {
        frontier_indexes(self.size)
            .iter()
            .map(|i| self.hashes[i])
            .collect()
    }

    /// Appends a leaf. Returns the stored-hash index of its leaf hash and
    /// the hashes to store from there on: the leaf's, then those of the
    /// subtrees it completes.
    pub fn append(&mut self, leaf: &[u8]) -> (u64, Vec<Hash>) {
        let n = self.size;
        let reader = MapReader(std::mem::take(&mut self.hashes));
        let new = tlog_tiles::stored_hashes(n, leaf, &reader)
            .expect("the frontier holds every hash an append reads");
        let mut hashes = reader.0;
        let first = stored_hash_index(0, n);
        for (offset, hash) in new.iter().enumerate() {
            hashes.insert(first + offset as u64, *hash);
        }
        self.size += 1;
        let keep = frontier_indexes(self.size);
        hashes.retain(|index, _| keep.contains(index));
        self.hashes = hashes;
        (first, new)
    }

    /// The tree's root (RFC 6962 MTH).
    pub fn root(&self) -> Hash {
        tlog_tiles::tree_hash(self.size, &MapReader(self.hashes.clone()))
            .expect("the frontier holds every hash of the root")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of transparency-dev/merkle's test constants, whose roots
    /// ../shared/vectors/rfc6962-roots.txt lists.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn the_published_rfc_6962_roots_are_reproduced() {
        let mut frontier = Frontier::default();
        assert_eq!(hex::encode(frontier.root().0), ROOTS[0]);
        for (i, leaf) in LEAVES.iter().enumerate() {
            frontier.append(&hex::decode(leaf).unwrap());
            assert_eq!(
                hex::encode(frontier.root().0),
                ROOTS[i + 1],
                "size {}",
                i + 1
            );
        }
    }

    #[test]
    fn a_frontier_rebuilt_from_stored_hashes_or_its_list_goes_on_alike() {
        let mut all = HashMap::new();
        let mut frontier = Frontier::default();
        for i in 0..300u32 {
            let (first, new) = frontier.append(&i.to_be_bytes());
            for (k, h) in new.into_iter().enumerate() {
                all.insert(first + k as u64, h);
            }
            if i == 129 {
                let from_store = Frontier::new(130, &all).unwrap();
                let from_list = Frontier::from_list(130, &frontier.list()).unwrap();
                assert_eq!(from_store.root(), frontier.root());
                assert_eq!(from_list.root(), frontier.root());
            }
        }
        // The stored hashes answer the crate's proofs, checked by the crate.
        let reader = MapReader(all);
        let root = frontier.root();
        let proof = tlog_tiles::prove_record(300, 17, &reader).unwrap();
        let leaf = tlog_tiles::record_hash(&17u32.to_be_bytes());
        tlog_tiles::check_record(&proof, 300, root, 17, leaf).unwrap();
        let at_130 = Frontier::new(130, &reader.0).unwrap().root();
        let proof = tlog_tiles::prove_tree(300, 130, &reader).unwrap();
        tlog_tiles::check_tree(&proof, 300, root, 130, at_130).unwrap();
        assert!(Frontier::new(5, &HashMap::new()).is_err());
    }

    #[test]
    fn wanted_hashes_are_learned_before_they_are_read() {
        let wanted = WantedHashes::of(|r| tlog_tiles::prove_record(300, 17, &Dyn(r)));
        assert!(!wanted.is_empty());
    }
}
