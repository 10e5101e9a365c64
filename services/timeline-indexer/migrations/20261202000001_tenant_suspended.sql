-- Whether the tenant is suspended or being deleted (from the tenant service's events): open
-- tails of such a tenant end with PERMISSION_DENIED.
ALTER TABLE tenant_policies ADD COLUMN IF NOT EXISTS suspended boolean NOT NULL DEFAULT false;
