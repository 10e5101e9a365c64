-- Tables of the tenant service beside its event store (same schema).

-- Idempotency of CreateTenant and uniqueness of slugs.
CREATE TABLE tenant_creates (
    request_id text        PRIMARY KEY,
    tenant_id  text        NOT NULL UNIQUE,
    slug       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Per-tenant data keys, wrapped by the master key. Deleting the row crypto-shreds every value
-- the tenant's events hold encrypted (member e-mail addresses).
CREATE TABLE tenant_data_keys (
    tenant_id   text        PRIMARY KEY,
    key_id      text        NOT NULL UNIQUE,
    wrapped_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Ed25519 signing keys of tokens and licenses, seeds wrapped by the master key.
CREATE TABLE signing_keys (
    kid          text        PRIMARY KEY,
    wrapped_seed bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE retired_at IS NULL;

-- API keys of service accounts (and the bootstrap operator key), stored hashed.
CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,
    account_id  text        NOT NULL,
    tenant_id   text        NOT NULL,
    scopes      text[]      NOT NULL,
    secret_hash bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE licenses (
    license_id text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    tier       text        NOT NULL,
    jwt        text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX licenses_tenant ON licenses (tenant_id, issued_at DESC);

-- Read model for ListTenants, projected from KEEL_EVENTS.
CREATE TABLE tenants_view (
    tenant_id     text        PRIMARY KEY,
    slug          text        NOT NULL,
    name          text        NOT NULL,
    tier          text        NOT NULL,
    status        text        NOT NULL,
    status_reason text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);
CREATE INDEX tenants_view_status ON tenants_view (status, tenant_id);
