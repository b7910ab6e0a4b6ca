-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- Owners are the people or services that consent to entries being bound to
-- them. Their ids are URIs (mailto:, https: or spiffe:) and are never reused:
-- a revoked owner keeps its row so its id cannot be registered again.
CREATE TABLE owners (
    id          TEXT PRIMARY KEY,
    -- The owner's public key as a JWK (JSON); consents are checked against it.
    public_key  TEXT NOT NULL,
    -- RFC 7638 SHA-256 thumbprint of that key, base64url: one key, one owner.
    thumbprint  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    -- Unix seconds of the revocation; 0 while the owner is in good standing.
    -- A number rather than NULL keeps "= 0" comparisons simple and portable.
    revoked_at  BIGINT NOT NULL
);

-- The owner an entry is bound to. Empty strings mean "no owner", so existing
-- rows need no rewrite and the columns stay NOT NULL.
-- owner_thumbprint pins the key that signed the consent, so a consent stays
-- attributable to one key even if the owner's record changes.
ALTER TABLE entries ADD COLUMN owner_id TEXT NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN owner_thumbprint TEXT NOT NULL DEFAULT '';
-- The consent JWS exactly as the owner signed it, kept as evidence.
ALTER TABLE entries ADD COLUMN consent TEXT NOT NULL DEFAULT '';
-- For an entry a workload registered under its own (delegated registration):
-- the id of the parent entry. Deleting the parent deletes the children.
ALTER TABLE entries ADD COLUMN delegated_from TEXT NOT NULL DEFAULT '';
-- JSON array of the delegation chain's SPIFFE IDs, outermost first.
ALTER TABLE entries ADD COLUMN actors TEXT NOT NULL DEFAULT '[]';
-- Revocation and authorization look entries up by owner; deletion walks the
-- delegation tree by parent entry.
CREATE INDEX entries_owner ON entries (owner_id);
CREATE INDEX entries_delegated_from ON entries (delegated_from);

-- X509-SVIDs minted for owner-bound entries, so that revoking an owner or
-- deleting an entry can put the serials of still-valid SVIDs on a CRL. One
-- row per entry per signing call, holding all its serials: recording costs
-- one row however many SVIDs a call signs, which keeps what owner binding
-- adds to issuance small.
CREATE TABLE bound_x509_svids (
    -- Id of the X.509 authority that signed them: each authority has its own CRL.
    authority   TEXT NOT NULL,
    entry_id    TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    -- The serials, hex as the CA reports them, separated by spaces.
    serials     TEXT NOT NULL,
    -- The latest expiry among them: the row is pruned once it has passed,
    -- when no CRL need list them any more.
    not_after   BIGINT NOT NULL,
    -- Unix seconds of the revocation; 0 unless revoked.
    revoked_at  BIGINT NOT NULL
);
CREATE INDEX bound_x509_svids_owner ON bound_x509_svids (owner_id);
CREATE INDEX bound_x509_svids_entry ON bound_x509_svids (entry_id);
