-- The coordinator's own tables (ARCHITECTURE §3b): one saga per order placed in
-- orchestration mode, and every command it sent with the reply it got. A transition is one
-- transaction: the saga's new state, the steps it starts, and their commands in the outbox.

CREATE TABLE sagas (
    order_id    uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    -- The order as the saga started with it: what the commands carry.
    summary     jsonb       NOT NULL,
    state       text        NOT NULL CHECK (state IN ('reserving', 'paying', 'confirming', 'cancelling', 'confirmed', 'cancelled')),
    -- When the reply the saga waits for is due (reserving, paying); NULL otherwise.
    deadline    timestamptz,
    reason      text        CHECK (reason IN ('out_of_stock', 'payment_declined', 'timeout')),
    detail      text,
    payment_id  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    CHECK ((state IN ('confirmed', 'cancelled')) = (ended_at IS NOT NULL)),
    CHECK ((state = 'cancelled') <= (reason IS NOT NULL))
);

-- Finding sagas that are not over (`GET /sagas?state=…&older_than=…`, the in-flight gauge)
-- reads only those.
CREATE INDEX sagas_open_idx ON sagas (state, updated_at) WHERE ended_at IS NULL;

CREATE TABLE saga_steps (
    order_id     uuid        NOT NULL REFERENCES sagas ON DELETE CASCADE,
    n            int         NOT NULL CHECK (n >= 1),
    step         text        NOT NULL CHECK (step IN ('reserve_stock', 'capture_payment', 'confirm_order', 'cancel_order', 'release_stock', 'refund_payment')),
    -- A compensation undoes an earlier step's effect (release, refund).
    compensation boolean     NOT NULL,
    command      jsonb       NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    deadline     timestamptz,
    -- Set when the deadline passed with no reply; a reply may still come later.
    timed_out_at timestamptz,
    reply        jsonb,
    outcome      text,
    replied_at   timestamptz,
    PRIMARY KEY (order_id, n),
    CHECK ((reply IS NULL) = (replied_at IS NULL))
);
