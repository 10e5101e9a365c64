-- Tables of the timeline indexer beside the per-generation timeline table (created from Rust,
-- see src/store/ddl.rs, because a rebuild creates a fresh one and swaps it in).

CREATE SEQUENCE timeline_seq;

-- Which table is live. A rebuild bumps the generation (tail cursors name their generation).
CREATE TABLE timeline_state (
    id          int  PRIMARY KEY CHECK (id = 1),
    live_table  text NOT NULL,
    generation  int  NOT NULL
);

-- What retention needs to know about each tenant, learnt from its events.
CREATE TABLE tenant_policies (
    tenant_id  text        PRIMARY KEY,
    tier       text,
    legal_hold boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Queries run as this role, so row-level security applies to them (the service's own login
-- may be a superuser, which RLS does not restrain). Roles are cluster-wide: create it once.
DO $$
BEGIN
    CREATE ROLE keel_timeline_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO keel_timeline_reader', current_schema());
END
$$;
