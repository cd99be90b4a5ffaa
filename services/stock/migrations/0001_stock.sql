-- Stock levels per product. `available` can be reserved by new orders; `reserved` is held
-- for orders in flight (or confirmed). Units on hand (both together) stay within
-- limits::MAX_STOCK, so no sum of levels can overflow and a release never exceeds the cap.
CREATE TABLE items (
    product_id uuid PRIMARY KEY,
    available  bigint NOT NULL CHECK (available >= 0),
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (available + reserved <= 1000000000)
);

-- One row per order that reached stock: the order id is the key that makes order.placed
-- and payment.declined idempotent (a second reservation or release finds this row).
CREATE TABLE reservations (
    order_id   uuid PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('reserved', 'rejected', 'released')),
    -- [{product_id, quantity}], one entry per product (an order's lines summed), sorted.
    lines      jsonb NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'rejected') = (reason IS NOT NULL))
);

-- Every change of a level, so that each item's levels are the sum of its movements:
-- available = initial + restock + release - reserve; reserved = reserve - release.
CREATE TABLE movements (
    id         bigserial PRIMARY KEY,
    product_id uuid NOT NULL REFERENCES items (product_id),
    order_id   uuid,
    kind       text NOT NULL CHECK (kind IN ('initial', 'reserve', 'release', 'restock')),
    quantity   bigint NOT NULL CHECK (quantity >= 0),
    at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((order_id IS NOT NULL) = (kind IN ('reserve', 'release')))
);
CREATE INDEX movements_product_idx ON movements (product_id, id);
-- A last guard behind the reservation row: an order reserves and releases a product once.
CREATE UNIQUE INDEX movements_order_once_idx ON movements (order_id, product_id, kind) WHERE order_id IS NOT NULL;
-- An item is created once, so it has one initial movement.
CREATE UNIQUE INDEX movements_initial_once_idx ON movements (product_id) WHERE kind = 'initial';
