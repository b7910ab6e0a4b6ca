-- Portable SQL: the same statements run on SQLite and PostgreSQL.

-- Federation relationships (SPIFFE_Federation.md section 5.1): the foreign
-- trust domain, where its bundle endpoint is and how to authenticate it.
CREATE TABLE federations (
    trust_domain        TEXT PRIMARY KEY,
    bundle_endpoint_url TEXT NOT NULL,
    -- https_web or https_spiffe.
    profile             TEXT NOT NULL,
    -- https_spiffe: the SPIFFE ID the endpoint's X509-SVID must carry; empty otherwise.
    endpoint_spiffe_id  TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- The latest bundle of each foreign trust domain (section 4.2): fetched from
-- its endpoint, set by an operator, or the bootstrap bundle of an
-- https_spiffe relationship. Bundles of different trust domains are never
-- merged: one row each.
CREATE TABLE foreign_bundles (
    trust_domain TEXT PRIMARY KEY,
    -- The SPIFFE bundle (JWK Set JSON) as received or set.
    bundle       TEXT NOT NULL,
    -- Its spiffe_sequence; 0 when it has none.
    sequence     BIGINT NOT NULL,
    -- endpoint, operator or bootstrap.
    origin       TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);
