//! The hot phase's questions to the databases, and their answers parsed. The SQL reads
//! the services' own tables (orders, reservations, items, payments), not the queue's.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use uuid::Uuid;

use super::check::{Item, OrderRow};

/// Stock database: messages not handled yet.
pub const PENDING_SQL: &str = "SELECT count(*) FROM conveyor.inbox WHERE state IN ('pending', 'running')";

/// Order database: the orders of the hot products (`list`: quoted ids) — id, status,
/// reason, placed (unix seconds).
pub fn orders_sql(list: &str) -> String {
    format!(
        "SELECT o.id, o.status, coalesce(o.reason, ''), extract(epoch FROM o.created_at) FROM orders o \
         WHERE o.id IN (SELECT order_id FROM order_lines WHERE product_id IN ({list}))"
    )
}

pub fn parse_orders(text: &str) -> Result<Vec<OrderRow>> {
    rows(text, 4)?
        .into_iter()
        .map(|f| Ok(OrderRow { id: f[0].parse()?, status: f[1].to_owned(), reason: f[2].to_owned(), placed: f[3].parse()? }))
        .collect()
}

/// Stock database: the orders whose reservation of a hot product still holds its units.
pub fn reserved_sql(list: &str) -> String {
    format!(
        "SELECT r.order_id FROM reservations r WHERE r.state = 'reserved' \
         AND EXISTS (SELECT 1 FROM jsonb_array_elements(r.lines) l WHERE (l->>'product_id')::uuid IN ({list}))"
    )
}

pub fn parse_ids(text: &str) -> Result<BTreeSet<Uuid>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().with_context(|| format!("not an id: {l:?}"))).collect()
}

/// Order database, per hot product: units asked by every order, units of confirmed ones.
pub fn units_sql(list: &str) -> String {
    format!(
        "SELECT l.product_id, sum(l.quantity), coalesce(sum(l.quantity) FILTER (WHERE o.status = 'confirmed'), 0) \
         FROM order_lines l JOIN orders o ON o.id = l.order_id WHERE l.product_id IN ({list}) GROUP BY l.product_id"
    )
}

/// Stock database, per hot item: available, reserved, and the units of its `reserved`
/// reservations.
pub fn levels_sql(list: &str) -> String {
    format!(
        "SELECT i.product_id, i.available, i.reserved, \
         (SELECT coalesce(sum((l->>'quantity')::bigint), 0) FROM reservations r, jsonb_array_elements(r.lines) l \
          WHERE r.state = 'reserved' AND (l->>'product_id')::uuid = i.product_id) \
         FROM items i WHERE i.product_id IN ({list})"
    )
}

pub fn parse_items(products: &[Uuid], stock: i64, ordered: &str, levels: &str) -> Result<Vec<Item>> {
    let numbers = |text: &str| -> Result<BTreeMap<Uuid, Vec<i64>>> { rows(text, 0)?.into_iter().map(|f| Ok((f[0].parse()?, f[1..].iter().map(|v| v.parse()).collect::<Result<_, _>>()?))).collect() };
    let (ordered, levels) = (numbers(ordered)?, numbers(levels)?);
    products
        .iter()
        .map(|p| {
            let [asked, sold] = ordered.get(p).map_or([0, 0], |v| [v[0], v[1]]);
            let l = levels.get(p).filter(|v| v.len() == 3).with_context(|| format!("no stock item for the hot product {p}"))?;
            Ok(Item { product: *p, stock, asked, sold, available: l[0], reserved: l[1], held: l[2] })
        })
        .collect()
}

/// Payment database: the payments declined since `from` (unix seconds) — order, when.
pub fn declined_sql(from: f64) -> String {
    format!("SELECT order_id, extract(epoch FROM created_at) FROM payments WHERE status = 'declined' AND created_at >= to_timestamp({from})")
}

/// Stock database: the reservations released since `from` — order, when.
pub fn released_sql(from: f64) -> String {
    format!("SELECT order_id, extract(epoch FROM updated_at) FROM reservations WHERE state = 'released' AND updated_at >= to_timestamp({from})")
}

/// Stock database: the messages of `topic` (what makes stock release: `payment.declined`,
/// or the coordinator's `stock.release`) waiting (or running) and dead.
pub fn releases_waiting_sql(topic: &str) -> String {
    format!(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), count(*) FILTER (WHERE state = 'dead') \
         FROM conveyor.inbox WHERE topic = '{topic}'"
    )
}

pub fn parse_times(text: &str) -> Result<Vec<(Uuid, f64)>> {
    rows(text, 2)?.into_iter().map(|f| Ok((f[0].parse()?, f[1].parse()?))).collect()
}

/// psql's `a|b|c` lines, each with `fields` fields (0: any number).
pub fn rows(text: &str, fields: usize) -> Result<Vec<Vec<&str>>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            anyhow::ensure!(fields == 0 || f.len() == fields, "unexpected line from the database: {l:?}");
            Ok(f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_databases_answers_parse() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let rows = parse_orders(&format!("{a}|confirmed||100.5\n{b}|cancelled|out_of_stock|101\n")).unwrap();
        assert_eq!((rows[1].id, rows[1].reason.as_str(), rows[1].placed), (b, "out_of_stock", 101.0));
        assert!(parse_orders("x|confirmed||1").is_err());
        assert_eq!(parse_ids(&format!("{a}\n\n{b}\n")).unwrap().len(), 2);
        let items = parse_items(&[a, b], 50, &format!("{a}|80|30"), &format!("{a}|20|30|30\n{b}|50|0|0")).unwrap();
        assert_eq!(items[0], Item { product: a, stock: 50, asked: 80, sold: 30, available: 20, reserved: 30, held: 30 });
        assert_eq!((items[1].asked, items[1].sold, items[1].available), (0, 0, 50));
        assert!(parse_items(&[a, b], 50, "", &format!("{a}|20|30|30")).unwrap_err().to_string().contains("no stock item"));
        assert_eq!(parse_times(&format!("{a}|100.25\n{b}|101")).unwrap(), vec![(a, 100.25), (b, 101.0)]);
        assert!(parse_times(&format!("{a}|x")).is_err());
    }
}
