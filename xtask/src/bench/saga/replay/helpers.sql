-- ===== helpers: what the services compute in Rust =====
-- A time-ordered id like Uuid::now_v7 (milliseconds first, then random bits).
CREATE FUNCTION saga_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 'hex')::uuid
$$;
-- The n-th product and customer, and a product's price in cents.
CREATE FUNCTION saga_product(n int) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$ SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
CREATE FUNCTION saga_customer(n int) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$ SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
CREATE FUNCTION saga_price(n int) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT 100 + (n % 900)::bigint $$;
-- A notification's id: the service's is a UUID v5 of order and event type (the same
-- delivery always has the same id); a hash of the same here.
CREATE FUNCTION saga_notification_id(order_id uuid, event_type text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
  SELECT md5(order_id || ':' || event_type)::uuid
$$;
-- Money as it prints (conveyor_contracts::Money's Display; the replay's are EUR, not negative).
CREATE FUNCTION saga_money(m jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT ((m->>'amount_minor')::bigint / 100) || '.' || lpad(((m->>'amount_minor')::bigint % 100)::text, 2, '0') || ' ' || (m->>'currency')
$$;

-- The order's events as the event store keeps them (conveyor_order::stream::OrderEvent).
CREATE FUNCTION saga_placed_event(customer_id uuid, product_id uuid, name text, quantity int, unit_price bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('type', 'placed', 'customer_id', customer_id,
    'lines', jsonb_build_array(jsonb_build_object('product_id', product_id, 'name', name, 'quantity', quantity,
                                                  'unit_price', jsonb_build_object('amount_minor', unit_price, 'currency', 'EUR'))),
    'total', jsonb_build_object('amount_minor', unit_price * quantity, 'currency', 'EUR'), 'saga_mode', 'choreography')
$$;
-- From the messages the order worker records: stock.reserved, payment.captured, notification.sent.
CREATE FUNCTION saga_reserved_event(stock_reserved jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('type', 'stock_reserved',
    'lines', (SELECT jsonb_agg(jsonb_build_object('product_id', l->'product_id', 'quantity', l->'quantity') ORDER BY n)
              FROM jsonb_array_elements(stock_reserved->'order'->'lines') WITH ORDINALITY AS x(l, n)))
$$;
CREATE FUNCTION saga_captured_event(payment_captured jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('type', 'payment_captured', 'payment_id', payment_captured->'payment_id', 'amount', payment_captured->'amount')
$$;
CREATE FUNCTION saga_notified_event(notification_sent jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('type', 'notified') || (notification_sent - 'order_id')
$$;

-- The messages' payloads. conveyor_contracts::OrderSummary from the order's placed event,
-- as conveyor_order::domain::summary makes it.
CREATE FUNCTION saga_summary(order_id uuid, placed jsonb, placed_at timestamptz) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('order_id', order_id, 'customer_id', placed->'customer_id',
    'lines', (SELECT jsonb_agg(l - 'name' ORDER BY n) FROM jsonb_array_elements(placed->'lines') WITH ORDINALITY AS x(l, n)),
    'total', placed->'total', 'placed_at', placed_at)
$$;
-- order.placed (and stock.reserved, which carries the same summary).
CREATE FUNCTION saga_placed(order_id uuid, placed jsonb, placed_at timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('order', saga_summary(order_id, placed, placed_at))::text
$$;
CREATE FUNCTION saga_captured(order_id uuid, payment_id uuid, amount bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT json_build_object('order_id', order_id, 'payment_id', payment_id, 'amount', json_build_object('amount_minor', amount, 'currency', 'EUR'))::text
$$;
CREATE FUNCTION saga_confirmed(order_id uuid, placed jsonb, placed_at timestamptz, confirmed_at timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('order', saga_summary(order_id, placed, placed_at), 'confirmed_at', confirmed_at)::text
$$;
CREATE FUNCTION saga_sent(order_id uuid, notification_id uuid, event_type text, subject text, delivered_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT json_build_object('order_id', order_id, 'notification_id', notification_id, 'event_type', event_type, 'subject', subject,
                           'delivered_at', delivered_at)::text
$$;

-- An order's view from its stream, by version (conveyor_order::views::OrderView::from_stream):
-- what the projector writes to order_views, and what POST /orders answers (the view of the
-- placed event alone). PL/pgSQL: its plans are kept for the session (an SQL function's are
-- made again for every statement that calls it). The details of the kinds of event the
-- replay never appends are shorter than the service's.
CREATE FUNCTION saga_order_view(order_id uuid, versions int[], ats timestamptz[], events jsonb[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  placed jsonb := events[1];
  terminal jsonb := '{}';
  updated timestamptz := ats[1];
  history jsonb := '[]';
  ranks int[] := '{}';
  steps jsonb[] := '{}';
  e jsonb;
  kind text;
BEGIN
  FOR i IN 1 .. cardinality(events) LOOP
    e := events[i];
    kind := e->>'type';
    IF kind IN ('confirmed', 'cancelled') THEN
      terminal := e;
      updated := ats[i];
    END IF;
    IF kind IN ('placed', 'confirmed', 'cancelled') THEN
      history := history || jsonb_build_array(jsonb_build_object('status', kind, 'reason', e->'reason', 'at', ats[i]));
    END IF;
    -- Where the step sits in the saga (views.rs rank): the timeline's order.
    ranks := ranks || CASE kind WHEN 'placed' THEN 0 WHEN 'stock_reserved' THEN 1 WHEN 'stock_rejected' THEN 1 WHEN 'payment_captured' THEN 2
        WHEN 'payment_declined' THEN 2 WHEN 'confirmed' THEN 3 WHEN 'cancelled' THEN 3 WHEN 'notified' THEN 5 ELSE 4 END;
    steps := steps || (jsonb_build_object('step', kind, 'at', ats[i], 'detail', CASE kind
        WHEN 'placed' THEN 'placed: ' || jsonb_array_length(e->'lines') || ' line(s), ' || saga_money(e->'total')
        WHEN 'stock_reserved' THEN 'stock reserved: ' || (SELECT sum((l->>'quantity')::bigint) FROM jsonb_array_elements(e->'lines') AS l)
                                   || ' unit(s) of ' || jsonb_array_length(e->'lines') || ' product(s)'
        WHEN 'payment_captured' THEN 'payment captured: ' || saga_money(e->'amount')
        WHEN 'confirmed' THEN 'confirmed: ' || saga_money(placed->'total')
        WHEN 'cancelled' THEN 'cancelled (' || (e->>'reason') || '): ' || (e->>'detail')
        WHEN 'notified' THEN 'customer notified of ' || (e->>'event_type') || ': "' || (e->>'subject') || '"'
        ELSE replace(kind, '_', ' ') END)
      || CASE kind
        WHEN 'stock_reserved' THEN jsonb_build_object('reserved', e->'lines')
        WHEN 'payment_captured' THEN jsonb_build_object('amount', e->'amount', 'payment_id', e->'payment_id')
        WHEN 'notified' THEN jsonb_build_object('notification_id', e->'notification_id')
        ELSE '{}' END);
  END LOOP;
  RETURN jsonb_build_object('id', order_id, 'customer_id', placed->'customer_id', 'status', coalesce(terminal->>'type', 'placed'),
    'reason', terminal->'reason', 'reason_detail', terminal->'detail', 'lines', placed->'lines', 'total', placed->'total',
    'saga_mode', placed->'saga_mode', 'created_at', ats[1], 'updated_at', updated, 'history', history,
    'timeline', (SELECT jsonb_agg(s ORDER BY r, n) FROM unnest(ranks, steps) WITH ORDINALITY AS t(r, s, n)),
    'version', versions[cardinality(versions)]);
END $$;

-- The rendered notification (the worker renders the stored template in Rust).
CREATE FUNCTION saga_subject(order_id uuid) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'Your order ' || order_id || ' is confirmed' $$;
CREATE FUNCTION saga_body(order_id uuid) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT 'Hello,' || chr(10) || chr(10) || 'your order ' || order_id || ' of today is confirmed' || chr(10)
      || '- 1 x Saga product at 4.50 EUR' || chr(10) || chr(10) || 'Total 4.50 EUR' || chr(10) || chr(10)
      || 'Thank you for shopping with Conveyor.'
$$;
