//! Reads what the rules check: each service's database in one read-only repeatable-read
//! transaction of its own connection (the databases concurrently), and the receiver's list.
//! Aggregates that need no join across databases (movement sums, ledger sums) are computed
//! by PostgreSQL; rows are kept only as far as the rules need them (one per order, item,
//! customer), and queue rows only as counts and the first few as examples.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_contracts::service;
use futures::future::try_join_all;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use super::snapshot::{Charges, Customer, DeadLetter, Delivery, Item, Order, Orders, Payment, PaymentRow, Projected, Queue, Reservation, Sink, Snapshot, Status, Stock};
use super::{Options, Targets};

/// What one database gave.
enum Part {
    Orders(Orders),
    Stock(Stock),
    Payment(Payment),
    Notifications(HashMap<Uuid, BTreeMap<String, i64>>),
    QueueOnly,
}

pub(crate) async fn snapshot(targets: &Targets, options: &Options) -> Result<Snapshot> {
    let reads = targets.databases.iter().map(|(svc, url)| async move {
        let mut conn = connect(svc, url).await?;
        let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let part = read_service(svc, &mut tx).await.with_context(|| format!("reading the {svc} database"))?;
        let queue = read_queue(svc, &mut tx, options).await.with_context(|| format!("reading the {svc} database's queue tables"))?;
        tx.rollback().await?;
        Ok::<_, anyhow::Error>((part, queue))
    });
    let sink = async { if targets.sink.is_empty() { Ok(None) } else { read_sink(&targets.sink).await.map(Some) } };
    let (parts, sink) = futures::try_join!(try_join_all(reads), sink)?;
    let mut snapshot = Snapshot { sink, accepted: targets.accepted.clone(), ..Snapshot::default() };
    for (part, queue) in parts {
        match part {
            Part::Orders(o) => snapshot.orders = Some(o),
            Part::Stock(s) => snapshot.stock = Some(s),
            Part::Payment(p) => snapshot.payment = Some(p),
            Part::Notifications(n) => snapshot.notifications = Some(n),
            Part::QueueOnly => {}
        }
        snapshot.queues.push(queue);
    }
    Ok(snapshot)
}

async fn connect(svc: &str, url: &str) -> Result<PgConnection> {
    let opts = PgConnectOptions::from_str(url).with_context(|| format!("the {svc} database URL is not a PostgreSQL URL"))?.application_name("conveyor-audit");
    // Named without the password.
    let place = format!("{}:{}/{}", opts.get_host(), opts.get_port(), opts.get_database().unwrap_or("?"));
    match tokio::time::timeout(Duration::from_secs(10), opts.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("cannot connect to the {svc} database at {place}"))),
        Err(_) => bail!("cannot connect to the {svc} database at {place}: no answer within 10 s"),
    }
}

async fn read_service(svc: &str, conn: &mut PgConnection) -> Result<Part> {
    Ok(match svc {
        service::ORDER => Part::Orders(read_orders(conn).await?),
        service::STOCK => Part::Stock(read_stock(conn).await?),
        service::PAYMENT => Part::Payment(read_payment(conn).await?),
        service::NOTIFICATION => {
            let rows: Vec<(Uuid, String, i64)> = sqlx::query_as("SELECT order_id, event_type, count(*) FROM notifications GROUP BY 1, 2").fetch_all(conn).await?;
            let mut records: HashMap<Uuid, BTreeMap<String, i64>> = HashMap::new();
            for (order, event_type, n) in rows {
                records.entry(order).or_default().insert(event_type, n);
            }
            Part::Notifications(records)
        }
        _ => Part::QueueOnly,
    })
}

async fn read_orders(conn: &mut PgConnection) -> Result<Orders> {
    type Row = (Uuid, String, Option<String>, Uuid, i64, String, i64);
    let rows: Vec<Row> = sqlx::query_as("SELECT id, status, reason, customer_id, total_minor, currency::text, extract(epoch FROM now() - created_at)::bigint FROM orders")
        .fetch_all(&mut *conn)
        .await?;
    let mut orders = HashMap::with_capacity(rows.len());
    for (id, status, reason, customer, total, currency, age_secs) in rows {
        let status = status_of(id, &status)?;
        orders.insert(id, Order { status, reason, customer, total, currency, age_secs });
    }
    // The lines only of confirmed orders: what their reservations must hold.
    let lines: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT l.order_id, l.product_id, sum(l.quantity)::bigint FROM order_lines l JOIN orders o ON o.id = l.order_id
         WHERE o.status = 'confirmed' GROUP BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_order: HashMap<Uuid, BTreeMap<Uuid, i64>> = HashMap::new();
    for (order, product, qty) in lines {
        by_order.entry(order).or_default().insert(product, qty);
    }
    type ViewRow = (Uuid, i32, i64, Option<i32>, Option<String>);
    let views: Vec<ViewRow> = sqlx::query_as(
        "SELECT e.order_id, e.version, extract(epoch FROM now() - e.at)::bigint, v.version, v.status
         FROM (SELECT DISTINCT ON (order_id) order_id, version, at FROM order_events ORDER BY order_id, version DESC) e
         LEFT JOIN order_views v ON v.id = e.order_id",
    )
    .fetch_all(conn)
    .await?;
    let mut projected = HashMap::with_capacity(views.len());
    for (id, stream_version, last_age_secs, view_version, view_status) in views {
        let view = match (view_version, view_status) {
            (Some(v), Some(s)) => Some((v, status_of(id, &s)?)),
            _ => None,
        };
        projected.insert(id, Projected { stream_version, last_age_secs, view });
    }
    Ok(Orders { orders, lines: by_order, projected })
}

fn status_of(id: Uuid, status: &str) -> Result<Status> {
    Ok(match status {
        "placed" => Status::Placed,
        "confirmed" => Status::Confirmed,
        "cancelled" => Status::Cancelled,
        other => bail!("order {id} has a status the audit does not know: {other:?}"),
    })
}

#[derive(Deserialize)]
struct Line {
    product_id: Uuid,
    quantity: i64,
}

async fn read_stock(conn: &mut PgConnection) -> Result<Stock> {
    type Row = (Uuid, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.product_id, i.available, i.reserved, coalesce(m.initial, 0), coalesce(m.restock, 0), coalesce(m.reserve, 0), coalesce(m.release, 0)
         FROM items i LEFT JOIN (
             SELECT product_id,
                    sum(quantity) FILTER (WHERE kind = 'initial')::bigint AS initial,
                    sum(quantity) FILTER (WHERE kind = 'restock')::bigint AS restock,
                    sum(quantity) FILTER (WHERE kind = 'reserve')::bigint AS reserve,
                    sum(quantity) FILTER (WHERE kind = 'release')::bigint AS release
             FROM movements GROUP BY product_id
         ) m USING (product_id)
         ORDER BY i.product_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let items = rows
        .into_iter()
        .map(|(product, available, reserved, initial, restock, reserve, release)| Item { product, available, reserved, initial, restock, reserve, release })
        .collect();
    type Held = Option<Json<Vec<Line>>>;
    let rows: Vec<(Uuid, String, Held)> = sqlx::query_as("SELECT order_id, state, CASE WHEN state = 'reserved' THEN lines END FROM reservations").fetch_all(conn).await?;
    let mut reservations = HashMap::with_capacity(rows.len());
    for (order, state, lines) in rows {
        let mut held = BTreeMap::new();
        for l in lines.map(|j| j.0).unwrap_or_default() {
            *held.entry(l.product_id).or_insert(0) += l.quantity;
        }
        reservations.insert(order, Reservation { state, lines: held });
    }
    Ok(Stock { items, reservations })
}

async fn read_payment(conn: &mut PgConnection) -> Result<Payment> {
    let rows: Vec<(Uuid, i64, String, String)> =
        sqlx::query_as("SELECT order_id, amount_minor, currency::text, status FROM payments WHERE status IN ('captured', 'refunded')").fetch_all(&mut *conn).await?;
    let payments = rows.into_iter().map(|(order, amount, currency, status)| PaymentRow { order, amount, currency, status }).collect();
    let rows: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FILTER (WHERE kind = 'capture'),
                coalesce(sum(amount_minor) FILTER (WHERE kind = 'capture'), 0)::bigint,
                coalesce(sum(amount_minor) FILTER (WHERE kind = 'refund'), 0)::bigint
         FROM ledger WHERE order_id IS NOT NULL GROUP BY order_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let charges = rows.into_iter().map(|(order, captures, captured, refunded)| (order, Charges { captures, captured, refunded })).collect();
    type Row = (Uuid, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.id, c.balance_minor, coalesce(l.total, 0), coalesce(l.open, 0), coalesce(l.top_ups, 0), coalesce(l.captures, 0), coalesce(l.refunds, 0), coalesce(l.other, 0)
         FROM customers c LEFT JOIN (
             SELECT customer_id,
                    sum(amount_minor)::bigint AS total,
                    sum(amount_minor) FILTER (WHERE kind = 'open')::bigint AS open,
                    sum(amount_minor) FILTER (WHERE kind = 'top_up')::bigint AS top_ups,
                    sum(amount_minor) FILTER (WHERE kind = 'capture')::bigint AS captures,
                    sum(amount_minor) FILTER (WHERE kind = 'refund')::bigint AS refunds,
                    sum(amount_minor) FILTER (WHERE kind NOT IN ('open', 'top_up', 'capture', 'refund'))::bigint AS other
             FROM ledger GROUP BY customer_id
         ) l ON l.customer_id = c.id
         ORDER BY c.id",
    )
    .fetch_all(conn)
    .await?;
    let customers =
        rows.into_iter().map(|(id, balance, ledger, open, top_ups, captures, refunds, other)| Customer { id, balance, ledger, open, top_ups, captures, refunds, other }).collect();
    Ok(Payment { payments, charges, customers })
}

async fn read_queue(svc: &str, conn: &mut PgConnection, options: &Options) -> Result<Queue> {
    let limit = options.examples as i64;
    let grace = options.grace.as_secs_f64();
    // Pulled rows every subscriber has read wait only for the pruner: not counted.
    let (outbox, relaying): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE created_at < now() - make_interval(secs => $1)), count(*) FILTER (WHERE created_at >= now() - make_interval(secs => $1))
         FROM conveyor.outbox AS o WHERE NOT {}",
        conveyor_queue::pull::PASSED
    )))
    .bind(grace)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT message_id, topic, extract(epoch FROM now() - created_at)::bigint FROM conveyor.outbox AS o
         WHERE created_at < now() - make_interval(secs => $1) AND NOT {} ORDER BY message_id LIMIT $2",
        conveyor_queue::pull::PASSED
    )))
    .bind(grace)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let outbox_examples = rows.into_iter().map(|(id, topic, age)| format!("{topic} message {id}, published {age} s ago, not relayed or pulled")).collect();
    let (overdue, waiting): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE visible_at < now() - make_interval(secs => $1)), count(*) FILTER (WHERE visible_at >= now() - make_interval(secs => $1))
         FROM conveyor.inbox WHERE state IN ('pending', 'running')",
    )
    .bind(grace)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<(Uuid, String, String, i32, i64)> = sqlx::query_as(
        "SELECT message_id, topic, state, attempts, extract(epoch FROM now() - visible_at)::bigint FROM conveyor.inbox
         WHERE state IN ('pending', 'running') AND visible_at < now() - make_interval(secs => $1) ORDER BY visible_at LIMIT $2",
    )
    .bind(grace)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let overdue_examples = rows
        .into_iter()
        .map(|(id, topic, state, attempts, late)| {
            let what = if state == "running" { "leased, its lease ended" } else { "pending, due" };
            format!("{topic} message {id} {what} {late} s ago (attempts {attempts})")
        })
        .collect();
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM conveyor.inbox WHERE state = 'dead'").fetch_one(&mut *conn).await?;
    let rows: Vec<(Uuid, String, i32, Option<String>)> =
        sqlx::query_as("SELECT message_id, topic, attempts, errors -> -1 ->> 'error' FROM conveyor.inbox WHERE state = 'dead' ORDER BY topic, message_id LIMIT $1")
            .bind(limit)
            .fetch_all(conn)
            .await?;
    let dead_examples = rows.into_iter().map(|(id, topic, attempts, last_error)| DeadLetter { id, topic, attempts, last_error }).collect();
    Ok(Queue { service: svc.to_owned(), outbox, relaying, outbox_examples, overdue, overdue_examples, waiting, dead, dead_examples })
}

#[derive(Deserialize)]
struct Received {
    delivered: Vec<Record>,
    #[serde(default)]
    duplicates: u64,
}

#[derive(Deserialize)]
struct Record {
    idempotency_key: Option<String>,
    body: serde_json::Value,
}

async fn read_sink(base: &str) -> Result<Sink> {
    let url = format!("{}/notifications", base.trim_end_matches('/'));
    let resp = reqwest::Client::new().get(&url).timeout(Duration::from_secs(60)).send().await.with_context(|| format!("cannot reach the webhook receiver at {url}"))?;
    if !resp.status().is_success() {
        bail!("the webhook receiver at {url} answered {}", resp.status());
    }
    let received: Received = resp.json().await.with_context(|| format!("the webhook receiver at {url} did not answer a list of notifications"))?;
    let deliveries = received
        .delivered
        .into_iter()
        .map(|r| Delivery {
            key: r.idempotency_key,
            order: r.body.get("order_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok()),
            event_type: r.body.get("event_type").and_then(|v| v.as_str()).map(str::to_owned),
        })
        .collect();
    Ok(Sink { deliveries, repeats: received.duplicates })
}
