//! The JWT-SVID cache: one token per (entry, audiences), refreshed once past
//! half its life. While the issuer is unreachable, a cached token is served
//! until it expires, so workloads keep working through short outages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::issuer as pb;
use tonic::Status;

use crate::node::Node;

/// Cached tokens above this count are pruned (expired first, then all).
const CACHE_LIMIT: usize = 10_000;

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    issued_at: u64,
    expires_at: u64,
}

/// The JWT-SVID cache.
#[derive(Debug, Default)]
pub struct JwtCache {
    tokens: Mutex<HashMap<(String, Vec<String>), Cached>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtCache {
    /// A token for `entry_id` and `audience`, fresh or cached.
    pub async fn fetch(
        &self,
        node: &Node,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, Status> {
        let mut sorted = audience.to_vec();
        sorted.sort();
        sorted.dedup();
        let key = (entry_id.to_owned(), sorted);
        let now = now_secs();
        let cached = self.tokens.lock().expect("jwt cache").get(&key).cloned();
        if let Some(c) = &cached {
            let half_life = c.issued_at + (c.expires_at.saturating_sub(c.issued_at)) / 2;
            if now < half_life {
                return Ok(c.token.clone());
            }
        }
        let signed = node
            .client()
            .sign_jwt_svid(pb::SignJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await;
        match signed {
            Ok(response) => {
                let response = response.into_inner();
                let mut tokens = self.tokens.lock().expect("jwt cache");
                if tokens.len() >= CACHE_LIMIT {
                    tokens.retain(|_, c| c.expires_at > now);
                    if tokens.len() >= CACHE_LIMIT {
                        tokens.clear();
                    }
                }
                tokens.insert(
                    key,
                    Cached {
                        token: response.token.clone(),
                        issued_at: now,
                        expires_at: response.expires_at.max(0) as u64,
                    },
                );
                Ok(response.token)
            }
            Err(status) => match cached {
                Some(c) if now < c.expires_at => {
                    tracing::warn!(error = %status.message(), "issuer unavailable; serving a cached JWT-SVID");
                    Ok(c.token)
                }
                _ => match status.code() {
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => Err(status),
                    _ => Err(Status::unavailable(format!(
                        "JWT-SVID cannot be signed right now: {}",
                        status.message()
                    ))),
                },
            },
        }
    }
}
