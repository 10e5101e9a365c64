-- Replicas of the provisioning service share the run requests: a tenant's runs are driven by
-- the replica that holds the tenant's lease. The holder renews it while it drives; a replica
-- that dies stops renewing, and once `expires_at` has passed another claims it and resumes the
-- run from its events. Expiry is judged by the database's clock, never a replica's.
CREATE TABLE run_leases (
    tenant_id  text        PRIMARY KEY,
    run_id     text        NOT NULL,
    owner      text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Row-level security as on every tenant-keyed table (20261210300001_row_level_security.sql).
ALTER TABLE run_leases ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_leases
    USING (tenant_id = current_setting('keel.tenant_id', true) AND tenant_id <> '*');
GRANT SELECT ON run_leases TO keel_provisioning_reader;

-- Retry is idempotent on the caller's request id: the request it made, and the run it retried.
ALTER TABLE run_requests ADD COLUMN request_id text, ADD COLUMN retry_of text;
CREATE UNIQUE INDEX run_requests_request_id ON run_requests (request_id) WHERE request_id IS NOT NULL;
