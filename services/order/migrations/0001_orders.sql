-- The order service's schema. Money is integer minor units with its currency.

-- The local copy of the catalog's products (data synchronization: placing an order needs
-- no call to catalog). Kept from product.created / product.updated; `version` decides
-- which copy is newer, since events may arrive out of order.
CREATE TABLE products (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    price_minor bigint NOT NULL CHECK (price_minor >= 0),
    currency    char(3) NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE orders (
    id            uuid PRIMARY KEY, -- UUID v7: ids sort by creation time
    customer_id   uuid NOT NULL,
    status        text NOT NULL CHECK (status IN ('placed', 'confirmed', 'cancelled')),
    reason        text CHECK (reason IN ('out_of_stock', 'payment_declined')),
    reason_detail text,
    total_minor   bigint NOT NULL CHECK (total_minor >= 0),
    currency      char(3) NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- A reason exactly when cancelled: the saga never leaves one half-written.
    CHECK ((status = 'cancelled') = (reason IS NOT NULL))
);
-- A customer's orders, newest first (keyset on id descending).
CREATE INDEX orders_customer_idx ON orders (customer_id, id DESC);

CREATE TABLE order_lines (
    order_id         uuid NOT NULL REFERENCES orders (id),
    line_no          int NOT NULL CHECK (line_no >= 1),
    product_id       uuid NOT NULL,
    -- Name and price as they were when the order was placed: later catalog changes do
    -- not rewrite history.
    product_name     text NOT NULL,
    quantity         int NOT NULL CHECK (quantity >= 1),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

-- Every status an order went through. An order enters each status at most once
-- (placed, then confirmed or cancelled), so the key also refuses a repeated transition.
CREATE TABLE order_status_history (
    order_id uuid NOT NULL REFERENCES orders (id),
    status   text NOT NULL CHECK (status IN ('placed', 'confirmed', 'cancelled')),
    reason   text CHECK (reason IN ('out_of_stock', 'payment_declined')),
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, status)
);

-- POST /orders by Idempotency-Key. The row is inserted first in the placing transaction,
-- so a concurrent request with the same key waits on it and then answers from it; the
-- response columns are filled before that transaction commits, so no other transaction
-- ever sees them empty.
CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    -- The canonical JSON of the parsed request: the same key with another request is a 409.
    request         text NOT NULL,
    -- Deferred: the key is inserted before the order it names.
    order_id        uuid NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
