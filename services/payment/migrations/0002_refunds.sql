-- Refunds (the orchestrated saga's compensation, payment.refund): a captured payment can be
-- given back once. It becomes `refunded`, keeping its amount and with no reason (the CHECKs
-- of 0001 on reason and amount hold for it as they stand), and the ledger gets a `refund`
-- entry of +amount for the order: 0 or more, as a capture is 0 or less (an order of free
-- products), which the sign CHECK of 0001 (ledger_check1: anything else >= 0) says already.
-- The CHECKs that change were named by PostgreSQL; dropped and added again by those names.
ALTER TABLE payments
    DROP CONSTRAINT payments_status_check,
    ADD CONSTRAINT payments_status_check CHECK (status IN ('captured', 'declined', 'refunded'));

ALTER TABLE ledger
    DROP CONSTRAINT ledger_kind_check,
    ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('open', 'top_up', 'capture', 'refund')),
    -- An entry names its order exactly when it is a capture or a refund.
    DROP CONSTRAINT ledger_check,
    ADD CONSTRAINT ledger_check CHECK ((kind IN ('capture', 'refund')) = (order_id IS NOT NULL));

-- A last guard behind the payment's status: an order is refunded once.
CREATE UNIQUE INDEX ledger_refund_once_idx ON ledger (order_id) WHERE kind = 'refund';
