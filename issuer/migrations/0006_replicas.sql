-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- The trust domain's bundle when several issuer replicas share this
-- database: each replica keeps its own CA and signing keys and publishes
-- their public halves here; the bundle is every row. A replica replaces
-- its own rows when its keys change. A replica's keys stay after it is
-- gone until they expire, since what they signed is valid until then.
CREATE TABLE trust_keys (
    -- The replica that holds the private key (its data directory's id).
    replica    TEXT NOT NULL,
    -- x509, jwt or wit.
    kind       TEXT NOT NULL,
    -- The JWT/WIT key's kid; an X.509 authority's certificate SHA-256.
    id         TEXT NOT NULL,
    -- Unix seconds after which nothing the key signed is valid.
    not_after  BIGINT NOT NULL,
    -- The key as the bundle's JWK Set carries it (JSON).
    jwk        TEXT NOT NULL,
    PRIMARY KEY (replica, kind, id)
);

-- The bundle's spiffe_sequence: one counter for the whole trust domain,
-- moved on by whichever replica changes the bundle.
CREATE TABLE trust_bundle (
    id        BIGINT PRIMARY KEY,
    sequence  BIGINT NOT NULL
);
INSERT INTO trust_bundle (id, sequence) VALUES (1, 0);

-- The verifier key of the key that signs the event log: the first issuer to
-- open the log names it. Only replicas holding that key sequence the log;
-- others append to its queue. Several replicas share the key (a file each
-- is given) so that any of them can take the sequencer over.
CREATE TABLE log_key (
    id            BIGINT PRIMARY KEY,
    verifier_key  TEXT NOT NULL
);

-- The CRLs each replica signs for its own X.509 authorities: only it holds
-- their keys. Every replica serves all of them, so a relying party or agent
-- talking to any replica learns of every revocation.
CREATE TABLE replica_crls (
    replica     TEXT PRIMARY KEY,
    -- Unix seconds after which these CRLs are stale.
    expires_at  BIGINT NOT NULL,
    -- JSON array of {"authority_id", "der" (base64)}.
    crls        TEXT NOT NULL
);
