-- Keys are kept for a retention window (order-worker --idempotency-retention), then pruned
-- oldest first through this index.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
