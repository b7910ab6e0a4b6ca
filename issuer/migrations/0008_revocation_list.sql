-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- The owners' revocation list every replica serves. One replica at a time
-- signs it (the holder of the `revocations` lease), so its seq rises
-- across replicas and a verifier moving between them never goes back.
-- One row: id is always 1.
CREATE TABLE revocation_list (
    id         BIGINT PRIMARY KEY,
    -- The list's seq claim; a new list is written only over the one it
    -- was numbered after.
    seq        BIGINT NOT NULL,
    -- The signed list (compact JWS).
    jws        TEXT NOT NULL,
    -- Its exp claim (Unix seconds).
    expires_at BIGINT NOT NULL,
    -- The replica that signed it.
    replica    TEXT NOT NULL
);
