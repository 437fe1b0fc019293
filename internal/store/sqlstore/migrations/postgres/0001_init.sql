-- Initial schema. Timestamps are Unix microseconds (0 = unset), durations
-- milliseconds, lists JSON arrays, so the same queries run on both dialects.
CREATE TABLE entries (
    id                TEXT PRIMARY KEY,
    spiffe_id         TEXT NOT NULL,
    parent_id         TEXT NOT NULL,
    selectors         TEXT NOT NULL,
    unique_key        TEXT NOT NULL UNIQUE,
    x509_svid_ttl_ms  BIGINT NOT NULL DEFAULT 0,
    jwt_svid_ttl_ms   BIGINT NOT NULL DEFAULT 0,
    dns_names         TEXT NOT NULL DEFAULT '[]',
    admin             BOOLEAN NOT NULL DEFAULT FALSE,
    hint              TEXT NOT NULL DEFAULT '',
    expires_at        BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    revision          BIGINT NOT NULL
);
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE agents (
    spiffe_id        TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    selectors        TEXT NOT NULL,
    cert_serial      TEXT NOT NULL,
    cert_not_after   BIGINT NOT NULL,
    banned           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE x509_authorities (
    fingerprint TEXT PRIMARY KEY,
    cert_der    BYTEA NOT NULL,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE jwt_keys (
    key_id         TEXT PRIMARY KEY,
    public_key_der BYTEA NOT NULL,
    not_after      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE bundle_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL
);
INSERT INTO bundle_meta (id, sequence) VALUES (1, 0);
