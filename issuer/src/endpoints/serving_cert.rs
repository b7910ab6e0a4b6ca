//! The `https_web` serving certificate (SPIFFE_Federation.md section
//! 5.2.1.3): a chain and private key read from PEM files, as a Web PKI CA or
//! an ACME client leaves them. The files are checked again at most once a
//! second, when a handshake needs the certificate, and reloaded when they
//! changed, so a renewed certificate is served without a restart. A new pair
//! that does not load (half written, mismatched) is logged, naming the file,
//! and the previous certificate is served until the files change again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The largest certificate or key file read.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// How often, at most, the files are looked at again.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate or key file could not be used; names the file, never
/// its contents.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct CertificateError {
    pub file: PathBuf,
    pub reason: String,
}

/// What identifies one version of a file: a rewrite or a rename over it
/// changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

struct Current {
    key: Arc<CertifiedKey>,
    /// The files' stamps when last loaded or tried.
    stamps: [Option<Stamp>; 2],
    checked_at: Instant,
}

/// A serving certificate kept in step with its PEM files.
pub struct ServingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Loads the pair; fails if either file does not hold what it should.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, CertificateError> {
        let stamps = [Stamp::of(cert_file), Stamp::of(key_file)];
        let key = load_pair(cert_file, key_file)?;
        Ok(ServingCertificate {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: Mutex::new(Current {
                key,
                stamps,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The certificate for a new connection, reloaded first if its files
    /// changed since they were last looked at.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().expect("serving certificate lock");
        if current.checked_at.elapsed() < CHECK_INTERVAL {
            return current.key.clone();
        }
        current.checked_at = Instant::now();
        let stamps = [Stamp::of(&self.cert_file), Stamp::of(&self.key_file)];
        if stamps == current.stamps {
            return current.key.clone();
        }
        // Tried once per change: a bad pair is logged once, not per handshake.
        current.stamps = stamps;
        match load_pair(&self.cert_file, &self.key_file) {
            Ok(key) => {
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    "bundle endpoint certificate reloaded"
                );
                current.key = key;
            }
            Err(error) => tracing::error!(
                %error,
                "bundle endpoint certificate not reloaded; serving the previous one"
            ),
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, CertificateError> {
    let failed = |reason: String| CertificateError {
        file: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(failed(format!("is larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Reads the chain (leaf first) and its key, and checks that they match.
fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, CertificateError> {
    let cert_error = |reason: String| CertificateError {
        file: cert_file.to_owned(),
        reason,
    };
    let key_error = |reason: String| CertificateError {
        file: key_file.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read_bounded(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error("holds no CERTIFICATE block".into()));
    }
    // The key's own parse errors are not quoted: they may echo its text.
    let key = PrivateKeyDer::from_pem_slice(&read_bounded(key_file)?).map_err(|e| {
        key_error(match e {
            pem::Error::NoItemsFound => {
                "holds no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block".into()
            }
            _ => "is not valid PEM".into(),
        })
    })?;
    let provider = super::tls::provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        key_error(format!(
            "cannot serve the certificate in {}: {e}",
            cert_file.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn leaf(certificate: &ServingCertificate) -> Vec<u8> {
        certificate.current().cert[0].to_vec()
    }

    /// Moves the check's clock past the interval instead of sleeping.
    fn due(certificate: &ServingCertificate) {
        certificate.current.lock().unwrap().checked_at -= CHECK_INTERVAL;
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key) = pair("one.example");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let serving = ServingCertificate::load(&cert_file, &key_file).unwrap();
        let first = leaf(&serving);

        // A new certificate with the old key does not match: kept out.
        let (cert2, key2) = pair("two.example");
        std::fs::write(&cert_file, &cert2).unwrap();
        due(&serving);
        assert_eq!(leaf(&serving), first);

        // Once the key follows, the new pair is served.
        std::fs::write(&key_file, &key2).unwrap();
        due(&serving);
        let second = leaf(&serving);
        assert_ne!(second, first);

        // Garbage keeps the previous certificate.
        std::fs::write(&cert_file, "not pem").unwrap();
        due(&serving);
        assert_eq!(leaf(&serving), second);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key) = pair("one.example");
        std::fs::write(&cert_file, &key).unwrap();
        std::fs::write(&key_file, &cert).unwrap();
        let error = ServingCertificate::load(&cert_file, &key_file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tls.crt") && error.contains("no CERTIFICATE"),
            "{error}"
        );
        std::fs::write(&cert_file, &cert).unwrap();
        let error = ServingCertificate::load(&cert_file, &key_file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tls.key") && error.contains("no PRIVATE KEY"),
            "{error}"
        );
        let missing = dir.path().join("absent.key");
        let error = ServingCertificate::load(&cert_file, &missing)
            .unwrap_err()
            .to_string();
        assert!(error.contains("absent.key"), "{error}");
    }
}
