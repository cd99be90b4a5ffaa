-- Templates, one per event type the service notifies about, in minijinja syntax. The API
-- replaces them; the worker renders the one stored when it handles an event.
CREATE TABLE templates (
    event_type text PRIMARY KEY CHECK (event_type IN ('order.confirmed', 'order.cancelled')),
    subject    text NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 200),
    body       text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 10000),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per notification delivered. Written only after the receiver answered 2xx, and
-- unique per (order, event type): the worker's "already notified?" check and the record
-- that keeps a replayed or repeated event from notifying twice. The unique index also
-- serves the per-order listing.
CREATE TABLE notifications (
    id           uuid PRIMARY KEY,
    order_id     uuid NOT NULL,
    event_type   text NOT NULL CHECK (event_type IN ('order.confirmed', 'order.cancelled')),
    customer_id  uuid NOT NULL,
    subject      text NOT NULL,
    body         text NOT NULL,
    -- Where the extra order data came from: the order API, or the event alone (fallback).
    data_source  text NOT NULL CHECK (data_source IN ('lookup', 'event')),
    -- The delivery attempt (of the queue message) that succeeded, 1 for the first.
    attempts     int NOT NULL CHECK (attempts >= 1),
    delivered_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, event_type)
);

INSERT INTO templates (event_type, subject, body) VALUES
('order.confirmed',
 'Your order {{ order_id }} is confirmed',
 'Hello,

your order {{ order_id }} of {{ placed_at }} is confirmed:
{% for line in lines %}
- {{ line.quantity }} x {{ line.name or line.product_id }} at {{ line.unit_price }}
{%- endfor %}

Total: {{ total }}

Thank you for shopping with Conveyor.'),
('order.cancelled',
 'Your order {{ order_id }} was cancelled',
 'Hello,

we are sorry: your order {{ order_id }} of {{ placed_at }} was cancelled because
{%- if reason == "out_of_stock" %} an item is out of stock{% else %} the payment was declined{% endif %}
({{ detail }}).
{% for line in lines %}
- {{ line.quantity }} x {{ line.name or line.product_id }} at {{ line.unit_price }}
{%- endfor %}

Nothing has been charged for it ({{ total }}).');
