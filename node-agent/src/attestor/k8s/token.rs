//! Service account tokens read from the files Kubernetes projects into the
//! agent's pod. Read afresh at each use: the kubelet rotates them in place.
//! No error holds the token.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The largest token file read; projected tokens are about a kilobyte.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Why a token file gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("service account token {}: {kind}", .path.display())]
    Read {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("service account token {} is empty or too large", .path.display())]
    Size { path: PathBuf },
    /// Not printable ASCII: no JWT, and not sendable in an HTTP header.
    #[error("service account token {} is not a token (it holds bytes a JWT cannot)", .path.display())]
    Invalid { path: PathBuf },
}

/// The token in `path`, trimmed.
pub async fn read_token(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    use tokio::io::AsyncReadExt;
    let unreadable = |e: std::io::Error| TokenError::Read {
        path: path.to_owned(),
        kind: e.kind(),
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    let token = bytes.trim_ascii();
    if token.is_empty() || bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(TokenError::Size {
            path: path.to_owned(),
        });
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.to_owned(),
        });
    }
    let token = std::str::from_utf8(token).expect("ASCII is UTF-8");
    Ok(Zeroizing::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_is_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "eyJhbGciOi.s3cr3t.sig\n").unwrap();
        assert_eq!(
            read_token(&path).await.unwrap().as_str(),
            "eyJhbGciOi.s3cr3t.sig"
        );
        // Rotated in place: the next read has the new token.
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(read_token(&path).await.unwrap().as_str(), "rotated");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            read_token(&path).await,
            Err(TokenError::Size { .. })
        ));
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_token(&path).await,
            Err(TokenError::Size { .. })
        ));
        let missing = read_token(&dir.path().join("absent")).await.unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
        std::fs::write(&path, "s3cr3t\u{7f}x").unwrap();
        let err = read_token(&path).await.unwrap_err();
        assert!(matches!(err, TokenError::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
