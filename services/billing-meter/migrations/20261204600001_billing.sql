-- keel-billing: raw usage events (each once, by tenant, source and id), the windows whose
-- events changed since they were last recorded, and the meters usage is checked against.

-- The dedupe key is the primary key: an event is claimed by the same statement that stores it,
-- so a retried event is stored once and never zero times.
CREATE TABLE usage_events (
    tenant_id     text        NOT NULL,
    source        text        NOT NULL,
    event_id      text        NOT NULL,
    meter         text        NOT NULL,
    meter_version integer     NOT NULL,
    event_type    text        NOT NULL,
    subject       text        NOT NULL DEFAULT '',
    -- Valid time (when the usage happened) and recorded time (when Keel learned of it).
    valid_at      timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    value         numeric     NOT NULL,
    unique_key    text,
    group_key     text        NOT NULL DEFAULT '{}',
    properties    jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, source, event_id)
);
CREATE INDEX usage_events_by_meter ON usage_events (tenant_id, meter, valid_at);

-- A window to (re)record: set by the ingest of each event, cleared by the aggregator once it
-- recorded the window's value as of `generation` (a later event bumps it and keeps it dirty).
CREATE TABLE window_marks (
    tenant_id    text        NOT NULL,
    meter        text        NOT NULL,
    group_key    text        NOT NULL,
    window_start timestamptz NOT NULL,
    generation   bigint      NOT NULL DEFAULT 1,
    marked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, meter, group_key, window_start)
);
CREATE INDEX window_marks_by_start ON window_marks (window_start);

-- Custom meters' current definitions (the meter aggregates' events are the record).
CREATE TABLE meters (
    name       text    PRIMARY KEY,
    definition jsonb   NOT NULL,
    version    integer NOT NULL
);

DO $$
BEGIN
    CREATE ROLE keel_billing_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT keel_billing_reader TO CURRENT_USER;

DO $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO keel_billing_reader', current_schema());
    FOREACH t IN ARRAY ARRAY['events', 'usage_events', 'window_marks', 'audit_outbox']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''keel.tenant_id'', true) AND tenant_id <> ''*'')',
            t);
        EXECUTE format('GRANT SELECT ON %I TO keel_billing_reader', t);
    END LOOP;
    EXECUTE 'GRANT SELECT ON meters TO keel_billing_reader';
END
$$;
