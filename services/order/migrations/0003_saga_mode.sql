-- The orchestrated saga (ARCHITECTURE §3b). Each order records the mode it started in and
-- ends in it, whatever the shop is switched to meanwhile; orders placed before there was a
-- choice ran the choreography.
ALTER TABLE orders ADD COLUMN saga_mode text NOT NULL DEFAULT 'choreography' CHECK (saga_mode IN ('choreography', 'orchestration'));

-- The coordinator cancels an order whose saga ran out of time.
ALTER TABLE orders DROP CONSTRAINT orders_reason_check,
    ADD CONSTRAINT orders_reason_check CHECK (reason IN ('out_of_stock', 'payment_declined', 'timeout'));
ALTER TABLE order_status_history DROP CONSTRAINT order_status_history_reason_check,
    ADD CONSTRAINT order_status_history_reason_check CHECK (reason IN ('out_of_stock', 'payment_declined', 'timeout'));
