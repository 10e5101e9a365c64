-- Wakes the saga executor when a run is requested instead of making it poll every 25 ms: one
-- NOTIFY per inserting statement, delivered at commit, on `keel_runs_<schema>` (cut to 63
-- bytes as PostgreSQL cuts identifiers; see keel_store::wakeup::channel).
CREATE FUNCTION notify_run_requested() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left('keel_runs_' || TG_TABLE_SCHEMA, 63), '');
    RETURN NULL;
END
$$;

CREATE TRIGGER run_requests_notify
    AFTER INSERT ON run_requests
    FOR EACH STATEMENT EXECUTE FUNCTION notify_run_requested();
