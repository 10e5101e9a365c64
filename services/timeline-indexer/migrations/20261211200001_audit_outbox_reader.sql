-- The audit outbox (keel-store's, created before this service's migrations) is tenant-keyed
-- like every other table here: its reader sees one tenant's records.
GRANT SELECT ON audit_outbox TO keel_timeline_reader;
