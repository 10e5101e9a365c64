-- License signing keys: a key ring of their own, apart from the token keys in signing_keys. A
-- retired license key stays published for a license's whole life (validity and grace, a year
-- and a week), a retired token key only for a day.
CREATE TABLE license_signing_keys (
    kid          text        PRIMARY KEY,
    wrapped_seed bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
CREATE UNIQUE INDEX license_signing_keys_one_active ON license_signing_keys ((true)) WHERE retired_at IS NULL;

-- Licenses issued before this migration were signed with token keys. Those keys join the
-- license ring as retired (when they were retired, or now for the active one), so the license
-- JWKS keeps publishing them for as long as the licenses they signed can verify. They never
-- sign a license again: the ring's first active key is made on first use.
INSERT INTO license_signing_keys (kid, wrapped_seed, created_at, retired_at)
SELECT kid, wrapped_seed, created_at, COALESCE(retired_at, now()) FROM signing_keys
ON CONFLICT (kid) DO NOTHING;
