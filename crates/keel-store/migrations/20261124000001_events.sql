-- The append-only event store of one service (DESIGN.md §2). Runs in the service's own schema
-- (search_path), so every name here is unqualified.

CREATE TABLE events (
    global_position bigserial   NOT NULL,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL UNIQUE,
    tenant_id       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The optimistic-concurrency check: two writers of the same sequence cannot both commit.
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The outbox relay reads in (tx_id, global_position) order.
CREATE INDEX events_relay_order ON events (tx_id, global_position);
CREATE INDEX events_tenant ON events (tenant_id, global_position);

CREATE FUNCTION reject_event_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION reject_event_mutation();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_event_mutation();

CREATE TABLE snapshots (
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    last_sequence    bigint      NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint      NOT NULL CHECK (current_snapshot >= 1),
    payload          jsonb       NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Where each outbox relay has got to: everything at or before (tx_id, global_position) is acked.
CREATE TABLE relay_checkpoints (
    relay           text        PRIMARY KEY,
    tx_id           xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
