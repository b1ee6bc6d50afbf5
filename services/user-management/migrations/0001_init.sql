-- user-management schema: users, RBAC, refresh-token families, signing keys.

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE permissions (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission TEXT NOT NULL REFERENCES permissions (name) ON DELETE CASCADE,
    PRIMARY KEY (role, permission)
);

CREATE TABLE users (
    id                  UUID PRIMARY KEY,
    email               TEXT NOT NULL,
    display_name        TEXT NOT NULL DEFAULT '',
    password_hash       TEXT NOT NULL,
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    failed_logins       INTEGER NOT NULL DEFAULT 0,
    locked_until        TIMESTAMPTZ,
    last_login_at       TIMESTAMPTZ,
    password_changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE user_roles (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role    TEXT NOT NULL REFERENCES roles (name),
    PRIMARY KEY (user_id, role)
);

-- One family per login session; every refresh rotates the token inside it.
CREATE TABLE token_families (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT
);
CREATE INDEX token_families_user_idx ON token_families (user_id);

CREATE TABLE refresh_tokens (
    id         UUID PRIMARY KEY,
    family_id  UUID NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,          -- SHA-256 of the opaque token
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ                       -- set when rotated
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

-- Ed25519 signing keys. private_key is AES-256-GCM encrypted when
-- JWT_SIGNING_KEY_SECRET is configured (encrypted = true, nonce set).
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL,
    private_key BYTEA NOT NULL,
    nonce       BYTEA,
    encrypted   BOOLEAN NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at  TIMESTAMPTZ                      -- NULL for the active key
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;

INSERT INTO roles (name, description) VALUES
    ('admin',     'Full access, user and key administration'),
    ('developer', 'Builds and operates 1C integrations, uses the assistant'),
    ('analyst',   'Reads and exports analytics, uses the assistant'),
    ('viewer',    'Read-only access');

INSERT INTO permissions (name, description) VALUES
    ('users:read',        'List and read user accounts'),
    ('users:write',       'Create and update user accounts'),
    ('users:delete',      'Delete user accounts'),
    ('roles:assign',      'Assign roles to users'),
    ('keys:rotate',       'Rotate the JWT signing key'),
    ('security:read',     'Read audit logs and security state'),
    ('assistant:use',     'Ask the AI assistant'),
    ('integration:read',  'Read 1C integration data'),
    ('integration:write', 'Change 1C integration data and run syncs'),
    ('analytics:read',    'Read analytics dashboards and reports'),
    ('analytics:export',  'Export analytics data');

INSERT INTO role_permissions (role, permission)
SELECT 'admin', name FROM permissions;

INSERT INTO role_permissions (role, permission) VALUES
    ('developer', 'assistant:use'),
    ('developer', 'integration:read'),
    ('developer', 'integration:write'),
    ('developer', 'analytics:read'),
    ('analyst',   'assistant:use'),
    ('analyst',   'integration:read'),
    ('analyst',   'analytics:read'),
    ('analyst',   'analytics:export'),
    ('viewer',    'assistant:use'),
    ('viewer',    'analytics:read');
