//! Serial numbers of owner-bound X509-SVIDs: derived, not drawn at random,
//! so that revoking an owner can list every serial its entries may have
//! been given without the issuer recording each SVID as it signs it.
//!
//! The serial of the `counter`-th SVID of an entry under an authority is
//! HMAC-SHA256(serial key, authority id || 0 || entry id || 0 || counter)
//! cut to 16 bytes, positive and with a non-zero first byte: as
//! unpredictable as a random serial to anyone without the key, which never
//! leaves `<ca dir>/serial.key` (0600). Counters are reserved in the store
//! ahead of use (`crate::serials`), so a CRL lists the serials of every
//! counter below the reservation: the ones used, and a few never used.

use std::path::{Path, PathBuf};

use ring::hmac;
use zeroize::Zeroizing;

use super::error::CaError;
use super::keys::KeyError;

/// The serial key's file in the CA directory.
fn key_path(dir: &Path) -> PathBuf {
    dir.join("serial.key")
}

/// Which derived serial an owner-bound SVID gets: its entry, and the
/// counter reserved for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialCounter<'a> {
    pub entry_id: &'a str,
    pub counter: u64,
}

/// The secret serials are derived under. `Debug` never shows it.
pub(super) struct SerialKey(hmac::Key);

impl std::fmt::Debug for SerialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialKey([redacted])")
    }
}

impl SerialKey {
    /// Loads the key from `dir`, or makes and stores one.
    pub(super) fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let path = key_path(dir);
        let io = |source| {
            CaError::Key(KeyError::Io {
                path: path.clone(),
                source,
            })
        };
        let secret = match std::fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = Zeroizing::new(crate::ids::random_bytes::<32>().to_vec());
                workload_api::files::write_private(&path, &fresh).map_err(io)?;
                fresh
            }
            Err(e) => return Err(io(e)),
        };
        if secret.len() != 32 {
            return Err(CaError::Key(KeyError::Invalid {
                path,
                key_type: "32-byte serial",
            }));
        }
        Ok(SerialKey(hmac::Key::new(hmac::HMAC_SHA256, &secret)))
    }

    /// The serial of `counter` under `authority_id`.
    pub(super) fn serial(&self, authority_id: &str, counter: SerialCounter<'_>) -> [u8; 16] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(authority_id.as_bytes());
        context.update(&[0]);
        context.update(counter.entry_id.as_bytes());
        context.update(&[0]);
        context.update(&counter.counter.to_be_bytes());
        let tag = context.sign();
        let mut serial: [u8; 16] = tag.as_ref()[..16].try_into().expect("32-byte tag");
        // Positive, and 16 bytes long in DER: the top bit clear, the next set.
        serial[0] = (serial[0] & 0x7f) | 0x40;
        serial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_stable_distinct_and_positive() {
        let dir = tempfile::tempdir().unwrap();
        let key = SerialKey::load_or_create(dir.path()).unwrap();
        let at = |entry_id, counter| key.serial("a1", SerialCounter { entry_id, counter });
        assert_eq!(at("e1", 0), at("e1", 0));
        assert_ne!(at("e1", 0), at("e1", 1));
        assert_ne!(at("e1", 0), at("e2", 0));
        assert_ne!(
            at("e1", 0),
            key.serial(
                "a2",
                SerialCounter {
                    entry_id: "e1",
                    counter: 0
                }
            )
        );
        assert_eq!(at("e1", 7)[0] & 0xc0, 0x40);
        // The same key after a restart, from its 0600 file.
        let again = SerialKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.serial(
                "a1",
                SerialCounter {
                    entry_id: "e1",
                    counter: 0
                }
            ),
            at("e1", 0)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{key:?}"), "SerialKey([redacted])");
    }
}
