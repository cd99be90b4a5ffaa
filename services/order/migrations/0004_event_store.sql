-- The order becomes event-sourced (ARCHITECTURE §3c; docs/cqrs.md).
--
-- Write side: every change to an order is an event appended to its stream, at the next
-- version. The primary key makes two concurrent appends at one version conflict
-- (optimistic concurrency: the loser re-reads the stream and decides again), and each
-- kind of event happens at most once in an order's life, so a duplicate or replayed fact
-- can never be appended twice.
CREATE TABLE order_events (
    order_id uuid NOT NULL,
    version  int NOT NULL CHECK (version >= 1),
    type     text NOT NULL CHECK (type IN ('placed', 'stock_reserved', 'stock_rejected', 'stock_released', 'payment_captured',
                                           'payment_declined', 'payment_refunded', 'confirmed', 'cancelled', 'notified')),
    -- The event itself, `type` included (the Rust `OrderEvent`).
    data     jsonb NOT NULL CHECK (data ->> 'type' = type),
    at       timestamptz NOT NULL DEFAULT now(),
    -- The position projections read the store by: the appending transaction, then the
    -- order of appends. A projection reads only transactions older than every one still
    -- running (pg_snapshot_xmin), so an append that commits late is never skipped.
    seq      bigint GENERATED ALWAYS AS IDENTITY,
    tx       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (order_id, version),
    UNIQUE (order_id, type),
    -- A stream starts with the order being placed.
    CHECK ((version = 1) = (type = 'placed'))
);
CREATE INDEX order_events_position_idx ON order_events (tx, seq);
-- A customer's orders, for the views below and operators' queries.
CREATE INDEX order_events_customer_idx ON order_events (((data ->> 'customer_id')::uuid), order_id DESC) WHERE type = 'placed';

-- Orders placed before this migration become streams: placed, then confirmed or
-- cancelled, at the times their history recorded.
INSERT INTO order_events (order_id, version, type, data, at)
SELECT o.id, 1, 'placed',
       jsonb_build_object(
           'type', 'placed',
           'customer_id', o.customer_id,
           'lines', (SELECT jsonb_agg(jsonb_build_object(
                                'product_id', l.product_id, 'name', l.product_name, 'quantity', l.quantity,
                                'unit_price', jsonb_build_object('amount_minor', l.unit_price_minor, 'currency', o.currency::text))
                            ORDER BY l.line_no)
                     FROM order_lines l WHERE l.order_id = o.id),
           'total', jsonb_build_object('amount_minor', o.total_minor, 'currency', o.currency::text),
           'saga_mode', o.saga_mode),
       o.created_at
FROM orders o ORDER BY o.id;

INSERT INTO order_events (order_id, version, type, data, at)
SELECT o.id, 2, o.status,
       CASE o.status WHEN 'confirmed' THEN jsonb_build_object('type', 'confirmed')
                     ELSE jsonb_build_object('type', 'cancelled', 'reason', o.reason, 'detail', coalesce(o.reason_detail, '')) END,
       coalesce((SELECT h.at FROM order_status_history h WHERE h.order_id = o.id AND h.status = o.status), o.updated_at)
FROM orders o WHERE o.status <> 'placed' ORDER BY o.id;

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_order_id_fkey;
DROP TABLE order_status_history, order_lines, orders;

-- The tables the order service had are now views of the streams, with the same columns,
-- for operators' SQL and the cross-service audit. Nothing writes them.
CREATE VIEW orders AS
SELECT p.order_id AS id,
       (p.data ->> 'customer_id')::uuid AS customer_id,
       coalesce(t.type, 'placed') AS status,
       t.data ->> 'reason' AS reason,
       t.data ->> 'detail' AS reason_detail,
       (p.data -> 'total' ->> 'amount_minor')::bigint AS total_minor,
       (p.data -> 'total' ->> 'currency')::char(3) AS currency,
       p.data ->> 'saga_mode' AS saga_mode,
       p.at AS created_at,
       coalesce(t.at, p.at) AS updated_at
FROM order_events p
LEFT JOIN order_events t ON t.order_id = p.order_id AND t.type IN ('confirmed', 'cancelled')
WHERE p.type = 'placed';

CREATE VIEW order_lines AS
SELECT p.order_id,
       l.n::int AS line_no,
       (l.line ->> 'product_id')::uuid AS product_id,
       l.line ->> 'name' AS product_name,
       (l.line ->> 'quantity')::int AS quantity,
       (l.line -> 'unit_price' ->> 'amount_minor')::bigint AS unit_price_minor
FROM order_events p, jsonb_array_elements(p.data -> 'lines') WITH ORDINALITY AS l(line, n)
WHERE p.type = 'placed';

CREATE VIEW order_status_history AS
SELECT order_id, type AS status, data ->> 'reason' AS reason, at
FROM order_events WHERE type IN ('placed', 'confirmed', 'cancelled');

-- Read side: a customer's orders with their whole timeline, one row per order holding the
-- answer of GET /orders/{id} (`view`), kept by the order worker's projector from the
-- event store (`version`: the last event of the order it reflects). Rebuilt from the
-- store into a fresh table and swapped in (`cargo xtask projections rebuild`).
CREATE TABLE order_views (
    id          uuid PRIMARY KEY,
    customer_id uuid NOT NULL,
    status      text NOT NULL,
    version     int NOT NULL,
    view        jsonb NOT NULL
);
-- GET /customers/{id}/orders newest first, with and without ?status=.
CREATE INDEX order_views_customer_idx ON order_views (customer_id, id DESC);
CREATE INDEX order_views_customer_status_idx ON order_views (customer_id, status, id DESC);

-- Each projection's position in the event store: the last event it applied.
CREATE TABLE projections (
    name       text PRIMARY KEY,
    tx         xid8 NOT NULL DEFAULT '0',
    seq        bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projections (name) VALUES ('order_views');
