-- The catalog's products. Money is integer minor units with its currency.
CREATE TABLE products (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_minor   bigint NOT NULL CHECK (price_minor >= 0),
    currency      char(3) NOT NULL,
    initial_stock bigint NOT NULL CHECK (initial_stock >= 0),
    -- Grows with every change; receivers keep the newest copy.
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
