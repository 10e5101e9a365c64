-- Row-level security on every tenant-keyed table of the provisioning service, as the timeline
-- has it. Tenant-scoped reads (GetStatus, ListRuns of one tenant) run as
-- keel_provisioning_reader with keel.tenant_id set for their transaction
-- (keel_store::rls::reader). The service's own login owns the tables (or is a superuser) and is
-- not restrained: the saga, the trigger projection and operator-wide reads keep it.

-- Created by the database step on first use until now; created here so that it has its policy
-- from the start (same definition: the step's CREATE TABLE IF NOT EXISTS leaves it be).
CREATE TABLE IF NOT EXISTS tenant_credentials (
    tenant_id        text        PRIMARY KEY,
    role             text        NOT NULL,
    password_wrapped bytea       NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Roles are cluster-wide and schemas share one: create it once, whoever comes first.
DO $$
BEGIN
    CREATE ROLE keel_provisioning_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The service's login takes the role for those reads: a login that is not a superuser must be a
-- member of it.
GRANT keel_provisioning_reader TO CURRENT_USER;

-- Each table: RLS on, the policy (the row's tenant is the one set for the transaction; '*', the
-- operators' rows, is no tenant whatever is set), and SELECT only for the reader.
DO $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO keel_provisioning_reader', current_schema());
    FOREACH t IN ARRAY ARRAY['events', 'tenant_info', 'run_requests', 'tenant_credentials']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''keel.tenant_id'', true) AND tenant_id <> ''*'')',
            t);
        EXECUTE format('GRANT SELECT ON %I TO keel_provisioning_reader', t);
    END LOOP;
END
$$;
