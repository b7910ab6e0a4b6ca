-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- The signed event log. An append is a durable row in log_queue; the
-- sequencer (one holder of the 'log-sequencer' lease at a time) moves
-- queued records into the Merkle tree in id order, assigning indexes,
-- storing the tree's hashes and signing a checkpoint in one transaction.
-- No tree state lives anywhere else.

-- Records waiting for an index. The id orders them: zero-padded
-- milliseconds, then a per-writer counter, then the writer.
CREATE TABLE log_queue (
    id      TEXT PRIMARY KEY,
    -- Canonical JSON (RFC 8785) of the record: the event, and for events
    -- an agent signed, that signature.
    record  TEXT NOT NULL
);

-- The tree's leaves: canonical JSON, with the index and the log's signature.
CREATE TABLE log_leaves (
    idx   BIGINT PRIMARY KEY,
    leaf  TEXT NOT NULL
);

-- Every node hash of the tree by its stored-hash index (the layout of the
-- tlog algorithms: each leaf adds its hash and those of the subtrees it
-- completes), lower-case hex. Tiles and proofs read them.
CREATE TABLE log_hashes (
    idx   BIGINT PRIMARY KEY,
    hash  TEXT NOT NULL
);

-- Every checkpoint signed, by tree size: one size has one root, forever.
CREATE TABLE log_checkpoints (
    size       BIGINT PRIMARY KEY,
    root       TEXT NOT NULL,
    -- The C2SP signed note.
    note       TEXT NOT NULL,
    signed_at  BIGINT NOT NULL
);

-- Singleton jobs run under a lease: whoever holds the row until expires_at
-- (Unix milliseconds) does the job; another takes over once it lapses.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Facts logged once (a key prepared, activated, retired), by name. The mark
-- is written after the event is appended, so a crash in between repeats
-- the event rather than losing it.
CREATE TABLE log_marks (
    name       TEXT PRIMARY KEY,
    marked_at  BIGINT NOT NULL
);

-- The last event each agent had logged: agents number their events from 1
-- with no gaps, so a record resent after a lost answer is taken once.
CREATE TABLE agent_event_seqs (
    agent_id  TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL
);
