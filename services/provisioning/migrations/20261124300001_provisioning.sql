-- Tables of the provisioning service beside its event store.

-- What the saga needs to know about each tenant, learnt from the tenant service's events.
CREATE TABLE tenant_info (
    tenant_id  text        PRIMARY KEY,
    slug       text        NOT NULL,
    tier       text        NOT NULL,
    suspended  boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per triggering event: the run to execute (run_id = the event id, so a redelivered
-- event maps to the same run). Written in the trigger projection's transaction.
CREATE TABLE run_requests (
    run_id      text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    kind        text        NOT NULL,
    slug        text        NOT NULL,
    tier        text        NOT NULL,
    suspended   boolean     NOT NULL,
    traceparent text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the run has completed or failed.
    finished_at timestamptz,
    status      text        NOT NULL DEFAULT 'pending'
);
CREATE INDEX run_requests_open ON run_requests (tenant_id, requested_at) WHERE finished_at IS NULL;
CREATE INDEX run_requests_tenant ON run_requests (tenant_id, requested_at DESC);
