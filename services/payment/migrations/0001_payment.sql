-- Customers and their balances: integer minor units in the customer's one currency. A
-- balance can never go below zero; it stays within limits::MAX_BALANCE_MINOR so no
-- top-up can overflow.
CREATE TABLE customers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency      char(3) NOT NULL,
    balance_minor bigint NOT NULL CHECK (balance_minor >= 0 AND balance_minor <= 1000000000000000),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One payment per order, captured or declined: the UNIQUE order id is what makes a
-- capture happen at most once, however often stock.reserved arrives.
CREATE TABLE payments (
    id           uuid PRIMARY KEY,
    order_id     uuid NOT NULL UNIQUE,
    -- Not a foreign key: an order for an unknown customer is declined, and kept.
    customer_id  uuid NOT NULL,
    -- What the order asked for (its total), as the event stated it.
    amount_minor bigint NOT NULL,
    currency     char(3) NOT NULL,
    status       text NOT NULL CHECK (status IN ('captured', 'declined')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'declined') = (reason IS NOT NULL)),
    CHECK (status = 'declined' OR amount_minor >= 0)
);

-- Every change of a balance, signed, so that a balance is the sum of its entries.
CREATE TABLE ledger (
    id           bigserial PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers (id),
    kind         text NOT NULL CHECK (kind IN ('open', 'top_up', 'capture')),
    amount_minor bigint NOT NULL,
    order_id     uuid,
    at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'capture') = (order_id IS NOT NULL)),
    CHECK (CASE kind WHEN 'capture' THEN amount_minor <= 0 WHEN 'top_up' THEN amount_minor > 0 ELSE amount_minor >= 0 END)
);
CREATE INDEX ledger_customer_idx ON ledger (customer_id, id);
-- A last guard behind payments.order_id: an order is charged once.
CREATE UNIQUE INDEX ledger_capture_once_idx ON ledger (order_id) WHERE kind = 'capture';
