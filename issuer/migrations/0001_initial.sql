-- Portable SQL: the same statements run on SQLite and PostgreSQL.
CREATE TABLE entries (
    id             TEXT PRIMARY KEY,
    spiffe_id      TEXT NOT NULL,
    parent_id      TEXT NOT NULL,
    -- Sorted JSON array of {"type","value"}; selectors_key is its canonical
    -- "type:value" list so duplicates can be refused by a unique index.
    selectors      TEXT NOT NULL,
    selectors_key  TEXT NOT NULL,
    x509_svid_ttl  BIGINT NOT NULL,
    jwt_svid_ttl   BIGINT NOT NULL,
    dns_names      TEXT NOT NULL,
    hint           TEXT NOT NULL,
    federates_with TEXT NOT NULL,
    admin          BOOLEAN NOT NULL,
    downstream     BOOLEAN NOT NULL,
    expires_at     BIGINT NOT NULL,
    revision       BIGINT NOT NULL,
    -- Registration order: a workload's first matching entry is its default
    -- identity, so order must survive entries created in the same second.
    sequence       BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (spiffe_id, parent_id, selectors_key);
CREATE INDEX entries_parent ON entries (parent_id);
CREATE UNIQUE INDEX entries_sequence ON entries (sequence);

-- Join tokens are stored by the SHA-256 of their secret, never the secret.
CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE agents (
    spiffe_id        TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    -- Serial of the current agent SVID, and of the one handed out by the last
    -- renewal until the agent first uses it.
    serial           TEXT NOT NULL,
    new_serial       TEXT NOT NULL,
    expires_at       BIGINT NOT NULL,
    banned           BOOLEAN NOT NULL,
    attested_at      BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
