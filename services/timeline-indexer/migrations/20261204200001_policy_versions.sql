-- Each policy a tenant's events set remembers which event set it, so that events applied in any
-- order leave the same policy: tier and suspension follow the tenant aggregate's sequence; a
-- legal hold follows (time, sequence) of the events and audit records that place and release it,
-- so a late or redelivered "placed" cannot undo the release that followed it.
ALTER TABLE tenant_policies
    ADD COLUMN IF NOT EXISTS tier_seq      bigint      NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS suspended_seq bigint      NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS hold_at       timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN IF NOT EXISTS hold_seq      bigint      NOT NULL DEFAULT 0;
