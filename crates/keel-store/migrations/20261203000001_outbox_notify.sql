-- Wakes the outbox relay at commit instead of making it poll: one NOTIFY per appending
-- statement (PostgreSQL folds identical notifications of a transaction into one, and delivers
-- them only at commit). The channel is `keel_outbox_<schema>`, cut to 63 bytes as PostgreSQL
-- cuts identifiers (`keel_store::wakeup::outbox_channel`).
CREATE FUNCTION notify_events_appended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left('keel_outbox_' || TG_TABLE_SCHEMA, 63), '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify_outbox
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events_appended();
