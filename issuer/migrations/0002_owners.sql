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

-- Serials of owner-bound X509-SVIDs are derived from the signing
-- authority, the entry and a counter (HMAC under the CA's serial key), so
-- revoking an owner or deleting an entry can list every serial the entry
-- may have been given without a row per SVID. The counters below
-- `reserved` may have been used: they are reserved here before use, in
-- blocks, so most signing calls write nothing.
CREATE TABLE bound_serials (
    entry_id    TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL,
    reserved    BIGINT NOT NULL,
    -- Unix seconds of the revocation (owner revoked, entry deleted); 0
    -- unless revoked. Revoked rows go once no authority valid then is.
    revoked_at  BIGINT NOT NULL
);
CREATE INDEX bound_serials_owner ON bound_serials (owner_id);
