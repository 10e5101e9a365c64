-- Rebuilds as jobs that survive their caller and a restart, and the generations they swapped in.

-- One row per swap: which table became live, which one it replaced (kept until the next rebuild
-- starts, so that tail cursors of the replaced generation can still resume), and the new table's
-- tail position at the swap. Rows of the new table at or before it that the replaced table also
-- had were already delivered to tails of the old generation.
CREATE TABLE timeline_generations (
    generation     int         PRIMARY KEY,
    live_table     text        NOT NULL,
    previous_table text,
    bridge_tx      xid8,
    bridge_seq     bigint,
    swapped_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO timeline_generations (generation, live_table)
SELECT generation, live_table FROM timeline_state
ON CONFLICT (generation) DO NOTHING;

-- A rebuild: claimed by one replica at a time with a lease, resumed by any replica once the
-- lease has expired (its consumers are durable, every step is idempotent).
CREATE TABLE rebuild_jobs (
    id            uuid        PRIMARY KEY,
    generation    int         NOT NULL UNIQUE,
    state         text        NOT NULL DEFAULT 'running'
                              CHECK (state IN ('running', 'swapped', 'different', 'failed')),
    phase         text        NOT NULL DEFAULT 'queued',
    requested_by  text        NOT NULL,
    attempts      int         NOT NULL DEFAULT 0,
    lease_owner   uuid,
    lease_until   timestamptz,
    rows_rebuilt  bigint      NOT NULL DEFAULT 0,
    carried_over  bigint      NOT NULL DEFAULT 0,
    missing       bigint      NOT NULL DEFAULT 0,
    extra         bigint      NOT NULL DEFAULT 0,
    changed       bigint      NOT NULL DEFAULT 0,
    sample        jsonb       NOT NULL DEFAULT '[]',
    error         text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- At most one rebuild at a time.
CREATE UNIQUE INDEX rebuild_jobs_one_running ON rebuild_jobs ((true)) WHERE state = 'running';

-- The keys on which a job's rebuilt table and the live one differed, per comparison pass.
CREATE TABLE rebuild_diffs (
    job_id    uuid        NOT NULL REFERENCES rebuild_jobs (id) ON DELETE CASCADE,
    pass      smallint    NOT NULL,
    kind      text        NOT NULL,
    tenant_id text        NOT NULL,
    ts        timestamptz NOT NULL,
    event_id  uuid        NOT NULL,
    PRIMARY KEY (job_id, pass, tenant_id, ts, event_id)
);
