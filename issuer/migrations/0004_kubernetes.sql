-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- The selectors node attestation found for an agent (k8s_psat: its cluster,
-- service account, pod and node), as a JSON array of {type, value}.
ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';

-- Who keeps an entry, when not an operator: `k8s/<cluster>/<rule>/<pod uid>`
-- for an entry an identity rule made for a pod. Empty for entries made by
-- hand. Such entries follow their pods and are refused to hand edits.
ALTER TABLE entries ADD COLUMN managed_by TEXT NOT NULL DEFAULT '';
CREATE INDEX entries_managed_by ON entries (managed_by) WHERE managed_by <> '';
