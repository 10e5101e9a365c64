-- CreateServiceAccount in one atomic write. A tenant account's key row is stored first, pending:
-- refused by ExchangeApiKey and absent from listings. The command's events (ServiceAccountCreated
-- and ApiKeyIssued) are then appended in one statement, and this trigger activates the key in that
-- same statement, so in that same transaction: the key is usable exactly when its events are
-- committed. A crash before the append leaves a pending row that nothing accepts (and no
-- account); after it, an account whose key works.
ALTER TABLE api_keys ADD COLUMN pending boolean NOT NULL DEFAULT false;

CREATE FUNCTION activate_issued_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'UPDATE %I.api_keys SET pending = false WHERE key_id = $1 AND tenant_id = $2 AND pending',
        TG_TABLE_SCHEMA)
    USING NEW.payload -> 'ApiKeyIssued' ->> 'key_id', NEW.tenant_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_activate_api_key
    AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'ApiKeyIssued')
    EXECUTE FUNCTION activate_issued_api_key();
