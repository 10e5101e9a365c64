-- Operator keys beside the bootstrap key (CreateOperatorKey): an operator account name is held
-- by at most one active key, so two keys cannot both claim to be `sa_op-<name>`.
CREATE UNIQUE INDEX api_keys_active_operator_account ON api_keys (account_id)
    WHERE tenant_id = '*' AND revoked_at IS NULL;

-- ListApiKeys of one tenant, in key id order.
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, key_id);
