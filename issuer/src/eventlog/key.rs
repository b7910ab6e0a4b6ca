//! The log key: the Ed25519 key that signs checkpoints and leaves. Auditors
//! pin its verifier key (C2SP signed-note form), so it never rotates; it is
//! made on first start and kept 0600 in the data directory.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use workload_api::jwk::{Algorithm, PublicKey};
use workload_api::keypair::KeyPair;

/// Why the log key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogKeyError {
    #[error("log key {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("log key {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("log name {0:?} is not a valid signed-note key name (no spaces or '+')")]
    Name(String),
}

/// The signed-note algorithm byte for Ed25519.
const ALG_ED25519: u8 = 0x01;

/// The log's signing key and its signed-note identity.
pub struct LogKey {
    name: String,
    pair: KeyPair,
    public: [u8; 32],
    id: u32,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("verifier_key", &self.verifier_key())
            .finish_non_exhaustive()
    }
}

/// A signed-note key name: non-empty, no Unicode spaces, no '+'.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl LogKey {
    /// Loads the key at `path` (a private JWK), making it first if absent.
    pub fn load_or_create(path: &Path, name: &str) -> Result<Self, LogKeyError> {
        if !valid_key_name(name) {
            return Err(LogKeyError::Name(name.to_string()));
        }
        let shown = || path.display().to_string();
        let pair = match std::fs::read_to_string(path) {
            Ok(json) => KeyPair::from_jwk_json(&json).map_err(|e| LogKeyError::Invalid {
                path: shown(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair =
                    KeyPair::generate(Algorithm::EdDSA).map_err(|e| LogKeyError::Invalid {
                        path: shown(),
                        reason: e.to_string(),
                    })?;
                if let Some(dir) = path.parent() {
                    workload_api::files::create_private_dir(dir).map_err(|source| {
                        LogKeyError::File {
                            path: shown(),
                            source,
                        }
                    })?;
                }
                workload_api::files::write_private(path, pair.to_jwk_json().as_bytes()).map_err(
                    |source| LogKeyError::File {
                        path: shown(),
                        source,
                    },
                )?;
                pair
            }
            Err(source) => {
                return Err(LogKeyError::File {
                    path: shown(),
                    source,
                })
            }
        };
        Self::from_pair(name, pair).map_err(|reason| LogKeyError::Invalid {
            path: shown(),
            reason,
        })
    }

    fn from_pair(name: &str, pair: KeyPair) -> Result<Self, String> {
        let public: [u8; 32] = match pair.public_key() {
            PublicKey::Ed25519 { x } => x
                .as_slice()
                .try_into()
                .map_err(|_| "the Ed25519 public key is not 32 bytes".to_string())?,
            _ => return Err("the log key must be an Ed25519 key".into()),
        };
        let id = signed_note::key_id(name, &encoded_public(&public));
        Ok(LogKey {
            name: name.to_string(),
            pair,
            public,
            id,
        })
    }

    /// The key's name: the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<name>+<hex key id>+<base64(0x01 || public key)>`: what auditors pin.
    pub fn verifier_key(&self) -> String {
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(encoded_public(&self.public))
        )
    }

    /// An Ed25519 signature over `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message)
    }
}

fn encoded_public(public: &[u8; 32]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(33);
    encoded.push(ALG_ED25519);
    encoded.extend_from_slice(public);
    encoded
}

impl signed_note::Signer for LogKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.sign_bytes(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_kept_private_and_named_as_a_signed_note_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log").join("log.jwk");
        let key = LogKey::load_or_create(&path, "example.org/sigil-log").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = LogKey::load_or_create(&path, "example.org/sigil-log").unwrap();
        assert_eq!(key.verifier_key(), again.verifier_key());
        // The signed_note crate reads the verifier key and checks signatures.
        use signed_note::Verifier as _;
        let verifier = signed_note::StandardVerifier::new(&key.verifier_key()).unwrap();
        assert!(verifier.verify(b"hello\n", &key.sign_bytes(b"hello\n")));
        assert!(!format!("{key:?}").contains("\"d\""));
        assert!(matches!(
            LogKey::load_or_create(&path, "a b"),
            Err(LogKeyError::Name(_))
        ));
    }
}
