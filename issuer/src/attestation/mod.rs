//! Node attestation. Join tokens: single-use, expiring secrets handed to an
//! agent out of band. Only a SHA-256 of each secret is stored, and the agent's
//! SPIFFE ID names the token's id, never its secret. No SPIFFE standard covers
//! node attestation; this follows SPIRE's `join_token` attestor, with agent IDs
//! `spiffe://<td>/agent/join_token/<id>` (SPIFFE-ID.md section 2 path rules).

use std::time::{Duration, SystemTime};

use workload_api::id::{SpiffeId, TrustDomain};

use crate::clock::unix_secs;
use crate::store::{Store, StoreError};

/// A freshly generated join token. `Debug` hides the secret.
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// The agent SPIFFE ID for a join token id.
pub fn join_token_agent_id(trust_domain: &TrustDomain, token_id: &str) -> SpiffeId {
    SpiffeId::from_segments(trust_domain.clone(), &["agent", "join_token", token_id])
        .expect("token ids are hex and form a valid path")
}

/// Creates and records a join token valid for `ttl`.
pub async fn generate_join_token(
    store: &Store,
    ttl: Duration,
    now: SystemTime,
) -> Result<JoinToken, StoreError> {
    let id = hex::encode(crate::ids::random_bytes::<8>());
    let secret = hex::encode(crate::ids::random_bytes::<20>());
    let expires_at = now + ttl;
    store
        .create_join_token(
            &id,
            &hash_secret(&secret),
            unix_secs(expires_at),
            unix_secs(now),
        )
        .await?;
    Ok(JoinToken {
        id,
        secret,
        expires_at,
    })
}

/// Claims a join token. On success the token can never be used again.
pub async fn redeem_join_token(
    store: &Store,
    secret: &str,
    now: SystemTime,
) -> Result<String, StoreError> {
    let record = store
        .consume_join_token(&hash_secret(secret), unix_secs(now))
        .await?;
    Ok(record.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_store_only_a_hash_and_hide_their_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let now = SystemTime::now();
        let token = generate_join_token(&store, Duration::from_secs(60), now)
            .await
            .unwrap();
        assert!(!format!("{token:?}").contains(&token.secret));
        let db = std::fs::read(dir.path().join("db-wal"))
            .into_iter()
            .chain(std::fs::read(dir.path().join("db")))
            .flatten()
            .collect::<Vec<u8>>();
        assert!(!db
            .windows(token.secret.len())
            .any(|w| w == token.secret.as_bytes()));
        assert_eq!(
            redeem_join_token(&store, &token.secret, now).await.unwrap(),
            token.id
        );
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(
            join_token_agent_id(&td, &token.id).to_string(),
            format!("spiffe://example.org/agent/join_token/{}", token.id)
        );
    }
}
