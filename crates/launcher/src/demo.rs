//! The demo data `cargo xtask up` loads: a few products and two customers, one of whom
//! cannot afford much (to show the compensation path).

use std::time::Duration;

use anyhow::Result;
use uuid::Uuid;

use crate::Shop;

pub const ALICE: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_a11c);
pub const BOB: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0b0b);

pub struct Demo {
    /// (name, id, price in minor units, initial stock)
    pub products: Vec<(String, Uuid, i64, i64)>,
    /// (name, id, balance in minor units)
    pub customers: Vec<(String, Uuid, i64)>,
}

const PRODUCTS: &[(&str, i64, i64)] = &[("Desk lamp", 2599, 25), ("Notebook", 450, 100), ("Espresso machine", 34900, 3)];
const CUSTOMERS: &[(&str, Uuid, i64)] = &[("Alice", ALICE, 100_000), ("Bob", BOB, 500)];

/// Creates what is missing (running `up` twice against one server adds nothing), then
/// waits until every product has reached the order and stock services.
pub async fn seed(shop: &Shop) -> Result<Demo> {
    let existing = shop.get("catalog", "/products?limit=100").await?.unwrap_or_default();
    let mut products = Vec::new();
    for (name, price, stock) in PRODUCTS {
        let known = existing["items"].as_array().into_iter().flatten().find(|p| p["name"] == *name);
        let id = match known.and_then(|p| p["id"].as_str()).and_then(|s| s.parse().ok()) {
            Some(id) => id,
            None => shop.create_product(name, *price, "EUR", *stock).await?,
        };
        products.push((name.to_string(), id, *price, *stock));
    }
    let mut customers = Vec::new();
    for (name, id, balance) in CUSTOMERS {
        if shop.get("payment", &format!("/customers/{id}")).await?.is_none() {
            shop.create_customer(*id, name, "EUR", *balance).await?;
        }
        customers.push((name.to_string(), *id, *balance));
    }
    for (_, id, _, _) in &products {
        shop.wait_synced(*id, Duration::from_secs(30)).await?;
    }
    Ok(Demo { products, customers })
}
