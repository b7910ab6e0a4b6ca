//! Attested agents: their SPIFFE IDs, the serials of their current and
//! renewed X509-SVIDs (an SVID that is no longer current is refused), bans
//! and evictions.

use sqlx::Row;

use super::notify::Change;
use super::{Agent, Selector, Store, StoreError};

/// `banned` is a BOOLEAN, read as a number (see [`super::bool_column`]).
const AGENT_COLUMNS: &str = "spiffe_id, attestation_type, serial, new_serial, expires_at, \
    CAST(banned AS INTEGER) AS banned, attested_at, selectors";

impl Store {
    /// Records an attested agent. An agent attesting again under the same
    /// SPIFFE ID (k8s_psat: the same node) replaces its old record, unless
    /// it is banned, which only eviction lifts.
    pub async fn upsert_agent(&self, agent: &Agent, now: i64) -> Result<(), StoreError> {
        let selectors = serde_json::to_string(&agent.selectors).expect("selectors serialize");
        let upsert = sqlx::query(
            "INSERT INTO agents (spiffe_id, attestation_type, serial, new_serial, expires_at, banned, \
             attested_at, updated_at, selectors) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (spiffe_id) DO UPDATE SET attestation_type = $2, serial = $3, \
             new_serial = $4, expires_at = $5, banned = $6, attested_at = $7, updated_at = $8, \
             selectors = $9 WHERE agents.banned = FALSE",
        )
        .bind(&agent.spiffe_id)
        .bind(&agent.attestation_type)
        .bind(&agent.serial)
        .bind(&agent.new_serial)
        .bind(agent.expires_at)
        .bind(agent.banned)
        .bind(agent.attested_at)
        .bind(now)
        .bind(&selectors);
        self.change_row(upsert, Change::Agent(agent.spiffe_id.clone()), || {
            StoreError::AgentBanned(agent.spiffe_id.clone())
        })
        .await
    }

    /// Records the serial of a renewed agent SVID as the next accepted one.
    pub async fn set_agent_new_serial(
        &self,
        spiffe_id: &str,
        new_serial: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET new_serial = $2, expires_at = $3, updated_at = $4 WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .bind(new_serial)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AgentNotFound(spiffe_id.to_owned()));
        }
        Ok(())
    }

    /// Promotes the renewed serial once the agent has used it.
    pub async fn promote_agent_serial(&self, spiffe_id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET serial = new_serial, new_serial = '', updated_at = $2 \
             WHERE spiffe_id = $1 AND new_serial <> ''",
        )
        .bind(spiffe_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_agent(&self, spiffe_id: &str) -> Result<Agent, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE spiffe_id = $1"
        ))
        .bind(spiffe_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::AgentNotFound(spiffe_id.to_owned()))?;
        agent_from_row(&row)
    }

    /// What node attestation found for the agent; none for an unknown agent.
    pub async fn agent_selectors(&self, spiffe_id: &str) -> Result<Vec<Selector>, StoreError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT selectors FROM agents WHERE spiffe_id = $1")
                .bind(spiffe_id)
                .fetch_optional(&self.pool)
                .await?;
        text.map_or(Ok(Vec::new()), |text| {
            serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
                column: "agents.selectors",
                source,
            })
        })
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY attested_at, spiffe_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// The agents among `spiffe_ids`; an ID not returned has no record.
    pub async fn agents_with_ids(&self, spiffe_ids: &[String]) -> Result<Vec<Agent>, StoreError> {
        let select = |placeholders: &str| {
            format!("SELECT {AGENT_COLUMNS} FROM agents WHERE spiffe_id IN ({placeholders})")
        };
        self.fetch_by_ids(select, spiffe_ids, agent_from_row).await
    }

    /// Forgets an agent: it must attest again.
    pub async fn delete_agent(&self, spiffe_id: &str) -> Result<(), StoreError> {
        let delete = sqlx::query("DELETE FROM agents WHERE spiffe_id = $1").bind(spiffe_id);
        self.change_row(delete, Change::Agent(spiffe_id.to_owned()), || {
            StoreError::AgentNotFound(spiffe_id.to_owned())
        })
        .await
    }

    /// Bans an agent: it is refused until the ban is lifted by eviction.
    pub async fn ban_agent(&self, spiffe_id: &str, now: i64) -> Result<(), StoreError> {
        let ban = sqlx::query(
            "UPDATE agents SET banned = $2, serial = '', new_serial = '', updated_at = $3 \
             WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .bind(true)
        .bind(now);
        self.change_row(ban, Change::Agent(spiffe_id.to_owned()), || {
            StoreError::AgentNotFound(spiffe_id.to_owned())
        })
        .await
    }
}

fn agent_from_row(row: &sqlx::any::AnyRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        spiffe_id: row.try_get("spiffe_id")?,
        attestation_type: row.try_get("attestation_type")?,
        serial: row.try_get("serial")?,
        new_serial: row.try_get("new_serial")?,
        expires_at: row.try_get("expires_at")?,
        banned: super::bool_column(row, "banned")?,
        attested_at: row.try_get("attested_at")?,
        selectors: serde_json::from_str(&row.try_get::<String, _>("selectors")?).map_err(
            |source| StoreError::Corrupt {
                column: "agents.selectors",
                source,
            },
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::temp_store;
    use super::*;

    #[tokio::test]
    async fn agents_are_found_by_id_however_many_are_asked_for() {
        let (_dir, store) = temp_store().await;
        let agent = |n: usize| Agent {
            spiffe_id: format!("spiffe://td/agent/join_token/{n}"),
            attestation_type: "join_token".into(),
            serial: "01".into(),
            new_serial: String::new(),
            expires_at: 100,
            banned: false,
            attested_at: 1,
            selectors: Vec::new(),
        };
        for n in [0, 499, 500, 1199] {
            store.upsert_agent(&agent(n), 1).await.unwrap();
        }
        // More ids than one query binds, most of them unknown.
        let asked: Vec<String> = (0..1200).map(|n| agent(n).spiffe_id).collect();
        let mut found: Vec<String> = store
            .agents_with_ids(&asked)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.spiffe_id)
            .collect();
        found.sort();
        let mut expected: Vec<String> = [0, 499, 500, 1199].map(|n| agent(n).spiffe_id).into();
        expected.sort();
        assert_eq!(found, expected);
        assert!(store.agents_with_ids(&[]).await.unwrap().is_empty());
    }
}
