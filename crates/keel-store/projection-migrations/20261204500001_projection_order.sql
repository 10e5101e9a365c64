-- Order-independent projections (keel_store::projection::order): each projection records, per
-- aggregate, the last sequence it has applied, and keeps the events that arrived ahead of a gap
-- until the gap is filled (or declared lost after the projection's gap timeout).
CREATE TABLE IF NOT EXISTS projection_positions (
    projection text        NOT NULL,
    stream     text        NOT NULL,
    applied    bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, stream)
);

CREATE TABLE IF NOT EXISTS projection_parked (
    projection text        NOT NULL,
    stream     text        NOT NULL,
    sequence   bigint      NOT NULL,
    tenant_id  text        NOT NULL,
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, stream, sequence)
);
CREATE INDEX IF NOT EXISTS projection_parked_age ON projection_parked (projection, parked_at);

-- Parked rows are tenants' events: the second wall applies to them as to every tenant-keyed
-- table (no reader role is granted them; the service's own login, their owner, is not restrained).
ALTER TABLE projection_parked ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON projection_parked;
CREATE POLICY tenant_isolation ON projection_parked
    USING (tenant_id = current_setting('keel.tenant_id', true) AND tenant_id <> '*');

-- The schema's reader roles (keel_<service>_reader, created by the service's own migrations,
-- which run before any projection starts) read parked rows as they read every tenant table:
-- through the policy, one tenant at a time.
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN SELECT rolname FROM pg_roles
             WHERE rolname LIKE 'keel\_%\_reader' AND has_schema_privilege(rolname, current_schema(), 'USAGE')
    LOOP
        EXECUTE format('GRANT SELECT ON projection_parked TO %I', r);
    END LOOP;
END
$$;
