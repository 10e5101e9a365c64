-- The audit outbox of one service schema (DESIGN.md §5): every audit record is written here,
-- in the same statement as the change it records when there is one, and the audit relay
-- carries it to `keel.audit.<tenant>.<service>.<action>` exactly as the event relay carries
-- `events`: in (tx_id, position) commit order, `Nats-Msg-Id` = record id, checkpoint after ack.
-- Runs after keel-store's event migrations where a schema has them (hence IF NOT EXISTS on the
-- checkpoint table, which they create), and on its own in a schema without aggregates.

CREATE TABLE IF NOT EXISTS relay_checkpoints (
    relay           text        PRIMARY KEY,
    tx_id           xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_outbox (
    position    bigserial   PRIMARY KEY,
    tx_id       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    record_id   uuid        NOT NULL UNIQUE,
    tenant_id   text        NOT NULL,
    record      jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_outbox_relay_order ON audit_outbox (tx_id, position);

-- Wakes the relays of this schema at commit (the same channel as the events trigger).
CREATE FUNCTION notify_audit_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left('keel_outbox_' || TG_TABLE_SCHEMA, 63), '');
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_outbox_notify
    AFTER INSERT ON audit_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_audit_recorded();

-- A tenant's records are its own (row-level security, as on `events`): a service grants its
-- reader role SELECT in its own migrations.
ALTER TABLE audit_outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_outbox USING (tenant_id = current_setting('keel.tenant_id', true));
