-- What billing knows of each tenant, from the tenant service's events (applied in each tenant's
-- order): its tier (which prices apply) and status (only ACTIVE tenants can be stale).
CREATE TABLE tenant_info (
    tenant_id  text        PRIMARY KEY,
    tier       text        NOT NULL,
    status     text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_info ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_info
    USING (tenant_id = current_setting('keel.tenant_id', true) AND tenant_id <> '*');
GRANT SELECT ON tenant_info TO keel_billing_reader;

-- The watcher reads each tenant's latest usage.
CREATE INDEX usage_events_by_recorded ON usage_events (tenant_id, recorded_at);
