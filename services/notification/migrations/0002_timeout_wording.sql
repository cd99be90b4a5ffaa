-- The orchestrated saga cancels an order whose steps ran out of time (reason timeout). The
-- seeded cancellation template said "the payment was declined" for any reason but
-- out_of_stock; it gets its own wording for timeout. A template an operator has replaced
-- (without the seeded sentence) is left as it is.
UPDATE templates
SET body = replace(body,
        '{% else %} the payment was declined{% endif %}',
        '{% elif reason == "timeout" %} it could not be completed in time{% else %} the payment was declined{% endif %}'),
    updated_at = now()
WHERE event_type = 'order.cancelled' AND strpos(body, '{% else %} the payment was declined{% endif %}') > 0;
