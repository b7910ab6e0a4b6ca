-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- How the last polls of each relationship's bundle endpoint went, whichever
-- replica polled, so that every replica reports the same.
CREATE TABLE federation_polls (
    trust_domain TEXT PRIMARY KEY,
    -- When the last poll ended (Unix seconds).
    polled_at    BIGINT NOT NULL,
    -- Polls that failed since the last good one.
    failures     BIGINT NOT NULL,
    -- Why the last poll failed, or why the bundle it fetched was refused;
    -- empty after a good one.
    last_error   TEXT NOT NULL,
    -- The replica that polled.
    replica      TEXT NOT NULL
);
