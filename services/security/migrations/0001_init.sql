-- Append-only, hash-chained audit log. seq is assigned by the appender under
-- an advisory lock, so it is contiguous: a gap means a deleted row.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY CHECK (seq > 0),
    ts         TIMESTAMPTZ NOT NULL,
    category   TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    resource   TEXT NOT NULL,
    ip         TEXT,
    detail     TEXT NOT NULL,            -- canonical JSON, exactly as hashed
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_category_action ON audit_log (category, action, seq);

-- The chain head: last seq and hash, so a deleted tail is detected too.
CREATE TABLE audit_head (
    id        SMALLINT PRIMARY KEY CHECK (id = 1),
    last_seq  BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- The head only ever moves forward.
CREATE FUNCTION audit_head_forward_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.last_seq <= OLD.last_seq THEN
        RAISE EXCEPTION 'audit_head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    roles        TEXT[] NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,   -- hex sha256 of the key; the key itself is never stored
    key_prefix   TEXT NOT NULL,          -- first characters, to recognise a key in listings
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

CREATE TABLE credentials (
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
