//! C2SP tlog-tiles paths and entry bundles (c2sp.org/tlog-tiles): tiles of
//! height 8 (256 hashes or entries), `tile/<L>/<N>[.p/<W>]` for hashes and
//! `tile/entries/<N>[.p/<W>]` for entries, N written in groups of three
//! digits, all but the last prefixed with `x`.

/// Hashes or entries per full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels per tile level.
pub const TILE_HEIGHT: u8 = 8;

/// A tile named by a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilePath {
    /// Hashes of tree level `8 * level`, numbers `index * 256 ..` `+ width`.
    Hashes { level: u8, index: u64, width: u64 },
    /// Entries `index * 256 ..` `+ width`.
    Entries { index: u64, width: u64 },
}

impl TilePath {
    /// Parses the path after the log's prefix (`tile/...`). Only the one
    /// spelling [`TilePath::path`] writes is accepted.
    pub fn parse(path: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{:?} is not a tile path",
                workload_api::display::shown(path)
            )
        };
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (kind, rest) = rest.split_once('/').ok_or_else(bad)?;
        let (number, width) = match rest.split_once(".p/") {
            Some((number, width)) => {
                let width: u64 = width.parse().map_err(|_| bad())?;
                if !(1..TILE_WIDTH).contains(&width) {
                    return Err(bad());
                }
                (number, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let mut index: u64 = 0;
        for group in number.split('/') {
            let digits = group.strip_prefix('x').unwrap_or(group);
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            index = index
                .checked_mul(1000)
                .and_then(|i| i.checked_add(digits.parse::<u64>().ok()?))
                .ok_or_else(bad)?;
        }
        let tile = if kind == "entries" {
            TilePath::Entries { index, width }
        } else {
            let level: u8 = kind.parse().map_err(|_| bad())?;
            if level > 63 / TILE_HEIGHT {
                return Err(bad());
            }
            TilePath::Hashes {
                level,
                index,
                width,
            }
        };
        if tile.path() != path {
            return Err(bad());
        }
        Ok(tile)
    }

    /// The tile's path, `tile/...`.
    pub fn path(&self) -> String {
        let (kind, index, width) = match *self {
            TilePath::Hashes {
                level,
                index,
                width,
            } => (level.to_string(), index, width),
            TilePath::Entries { index, width } => ("entries".to_string(), index, width),
        };
        let mut number = format!("{:03}", index % 1000);
        let mut rest = index / 1000;
        while rest > 0 {
            number = format!("x{:03}/{number}", rest % 1000);
            rest /= 1000;
        }
        let partial = if width == TILE_WIDTH {
            String::new()
        } else {
            format!(".p/{width}")
        };
        format!("tile/{kind}/{number}{partial}")
    }

    /// Whether a tree of `size` leaves holds the whole tile.
    pub fn within(&self, size: u64) -> bool {
        let (shift, index, width) = match *self {
            TilePath::Hashes {
                level,
                index,
                width,
            } => (u32::from(level) * 8, index, width),
            TilePath::Entries { index, width } => (0, index, width),
        };
        index
            .checked_mul(TILE_WIDTH)
            .and_then(|first| first.checked_add(width))
            .and_then(|end| end.checked_shl(shift).filter(|e| e >> shift == end))
            .is_some_and(|leaves| leaves <= size)
    }
}

/// An entry bundle: each entry as a big-endian 16-bit length and its bytes.
pub fn entry_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut bundle = Vec::new();
    for entry in entries {
        let len = u16::try_from(entry.len()).expect("leaves are under 64 KiB");
        bundle.extend_from_slice(&len.to_be_bytes());
        bundle.extend_from_slice(entry);
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_in_the_one_spelling() {
        for (path, tile) in [
            (
                "tile/0/000",
                TilePath::Hashes {
                    level: 0,
                    index: 0,
                    width: 256,
                },
            ),
            (
                "tile/1/x001/234.p/5",
                TilePath::Hashes {
                    level: 1,
                    index: 1234,
                    width: 5,
                },
            ),
            (
                "tile/entries/x001/x234/067",
                TilePath::Entries {
                    index: 1_234_067,
                    width: 256,
                },
            ),
            (
                "tile/entries/000.p/1",
                TilePath::Entries { index: 0, width: 1 },
            ),
        ] {
            assert_eq!(TilePath::parse(path), Ok(tile), "{path}");
            assert_eq!(tile.path(), path);
        }
        for bad in [
            "tile/0/0",
            "tile/0/x000/001",
            "tile/0/001.p/256",
            "tile/0/001.p/0",
            "tile/0/001.p/05",
            "tile/8/000",
            "tile/00/000",
            "tile/data/000",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/000",
            "tile/0/000/",
            "checkpoint",
        ] {
            assert!(TilePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tile_is_served_only_once_the_tree_holds_it() {
        let full0 = TilePath::Hashes {
            level: 0,
            index: 0,
            width: 256,
        };
        assert!(!full0.within(255) && full0.within(256));
        let level1 = TilePath::Hashes {
            level: 1,
            index: 0,
            width: 2,
        };
        assert!(!level1.within(511) && level1.within(512));
        let entries = TilePath::Entries { index: 1, width: 3 };
        assert!(!entries.within(258) && entries.within(259));
        assert!(!TilePath::Hashes {
            level: 7,
            index: u64::MAX / 256,
            width: 255
        }
        .within(u64::MAX));
    }

    #[test]
    fn bundles_frame_entries_with_their_length() {
        assert_eq!(
            entry_bundle([&b"ab"[..], b""]),
            vec![0, 2, b'a', b'b', 0, 0]
        );
    }
}
