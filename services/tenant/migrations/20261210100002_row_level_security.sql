-- Row-level security on every tenant-keyed table of the tenant service, as the timeline has it.
-- Tenant-scoped reads (GetTenant, ListMembers, GetLicense, ListApiKeys and ListTenants of one
-- tenant) run as keel_tenant_reader with keel.tenant_id set for their transaction
-- (keel_store::rls::reader), so a query that forgets its WHERE clause still sees one tenant.
-- The service's own login owns the tables (or is a superuser) and is not restrained: writes and
-- operator-wide reads keep it. Operator keys (tenant_id '*') match no tenant.

-- Roles are cluster-wide and schemas share one: create it once, whoever comes first.
DO $$
BEGIN
    CREATE ROLE keel_tenant_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The service's login takes the role for those reads: a login that is not a superuser must be a
-- member of it.
GRANT keel_tenant_reader TO CURRENT_USER;

-- Each table: RLS on, the policy (the row's tenant is the one set for the transaction; '*', the
-- operators' rows, is no tenant whatever is set), and SELECT only for the reader.
DO $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO keel_tenant_reader', current_schema());
    FOREACH t IN ARRAY ARRAY['events', 'tenant_creates', 'tenant_data_keys', 'api_keys', 'licenses', 'tenants_view']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''keel.tenant_id'', true) AND tenant_id <> ''*'')',
            t);
        EXECUTE format('GRANT SELECT ON %I TO keel_tenant_reader', t);
    END LOOP;
END
$$;
