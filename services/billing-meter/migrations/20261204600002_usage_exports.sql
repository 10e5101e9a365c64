-- Usage records sent to the billing queue (SQS): a row per record id, its attempts (written
-- before each send, so a send whose outcome is lost still counts as exported) and the queue's
-- acknowledgement (its message id, written in the transaction that acks the record's message).
CREATE TABLE usage_exports (
    record_id       text        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    meter           text        NOT NULL,
    window_start    timestamptz NOT NULL,
    version         integer     NOT NULL,
    quantity        numeric     NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    first_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    message_id      text,
    acknowledged_at timestamptz
);
CREATE INDEX usage_exports_by_window ON usage_exports (window_start);

ALTER TABLE usage_exports ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_exports
    USING (tenant_id = current_setting('keel.tenant_id', true) AND tenant_id <> '*');
GRANT SELECT ON usage_exports TO keel_billing_reader;
