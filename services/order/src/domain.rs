//! The rules of an order, apart from HTTP and SQL: what a request to place one may say,
//! how it is priced from the local copy of the catalog, and the statuses it goes through.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use conveyor_contracts::{Money, OrderLine, OrderSummary, limits};
use conveyor_platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A request to place an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub customer_id: Uuid,
    /// 1 to 50 lines, each product at most once.
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<LineRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub product_id: Uuid,
    /// 1 to 10,000 units. Read as i64 so that an absurd number gets a range message
    /// rather than a type error.
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i64,
}

/// A request that passed every rule that needs no database.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    pub customer_id: Uuid,
    pub lines: Vec<(Uuid, i32)>,
}

impl PlaceOrder {
    pub fn validate(&self) -> ApiResult<ValidOrder> {
        let n = self.lines.len();
        if n == 0 || n > limits::MAX_LINES {
            return Err(ApiError::Unprocessable(format!("an order has 1 to {} lines, not {n}", limits::MAX_LINES)));
        }
        let mut seen = HashSet::with_capacity(n);
        let mut lines = Vec::with_capacity(n);
        for (i, line) in self.lines.iter().enumerate() {
            let quantity = i32::try_from(line.quantity).ok().filter(|q| (1..=limits::MAX_QUANTITY).contains(q)).ok_or_else(|| {
                ApiError::Unprocessable(format!("lines[{i}].quantity must be between 1 and {}, not {}", limits::MAX_QUANTITY, line.quantity))
            })?;
            if !seen.insert(line.product_id) {
                return Err(ApiError::Unprocessable(format!(
                    "product {} appears in more than one line; put its whole quantity in one line",
                    line.product_id
                )));
            }
            lines.push((line.product_id, quantity));
        }
        Ok(ValidOrder { customer_id: self.customer_id, lines })
    }

    /// The request as the idempotency check compares it: re-serialised from the parsed
    /// form, so whitespace, key order and the case of UUIDs do not make two requests differ.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("a parsed request serialises")
    }
}

/// A product as the local copy knows it.
#[derive(Debug, Clone)]
pub struct KnownProduct {
    pub name: String,
    pub price: Money,
}

/// A line as priced when the order was placed: name and price as they were then, so later
/// catalog changes do not rewrite history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub lines: Vec<PricedLine>,
    pub total: Money,
}

impl ValidOrder {
    pub fn product_ids(&self) -> Vec<Uuid> {
        self.lines.iter().map(|(id, _)| *id).collect()
    }

    /// Prices every line from `products`: each must be known, all in one currency, and
    /// the total must not overflow.
    pub fn price(&self, products: &HashMap<Uuid, KnownProduct>) -> ApiResult<Priced> {
        let mut lines = Vec::with_capacity(self.lines.len());
        let mut total: Option<Money> = None;
        for (i, &(product_id, quantity)) in self.lines.iter().enumerate() {
            let product = products.get(&product_id).ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "lines[{i}]: product {product_id} is not known to the order service; \
                     if it was just created in the catalog it may not be synchronized yet, retry shortly"
                ))
            })?;
            let sum = total.unwrap_or_else(|| Money::zero(product.price.currency));
            if sum.currency != product.price.currency {
                return Err(ApiError::Unprocessable(format!(
                    "all lines must be in one currency: lines[{i}] (product {product_id}) is in {}, earlier lines in {}",
                    product.price.currency, sum.currency
                )));
            }
            total = Some(sum.add_times(product.price, i64::from(quantity)).map_err(|e| {
                ApiError::Unprocessable(format!("the order total cannot be computed at lines[{i}]: {e}"))
            })?);
            lines.push(PricedLine { product_id, name: product.name.clone(), quantity, unit_price: product.price });
        }
        let total = total.expect("validated orders have at least one line");
        Ok(Priced { lines, total })
    }
}

impl Priced {
    pub fn summary(&self, order_id: Uuid, customer_id: Uuid, placed_at: DateTime<Utc>) -> OrderSummary {
        summary(order_id, customer_id, &self.lines, self.total, placed_at)
    }
}

/// What every saga event carries about an order.
pub fn summary(order_id: Uuid, customer_id: Uuid, lines: &[PricedLine], total: Money, placed_at: DateTime<Utc>) -> OrderSummary {
    let lines = lines.iter().map(|l| OrderLine { product_id: l.product_id, quantity: l.quantity, unit_price: l.unit_price }).collect();
    OrderSummary { order_id, customer_id, lines, total, placed_at }
}

/// An `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(value: &[u8]) -> ApiResult<String> {
    if value.is_empty() || value.len() > 255 || !value.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest("the Idempotency-Key header must have 1 to 255 visible ASCII characters (no spaces)".into()));
    }
    Ok(String::from_utf8(value.to_vec()).expect("ASCII is UTF-8"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub const ALL: [OrderStatus; 3] = [OrderStatus::Placed, OrderStatus::Confirmed, OrderStatus::Cancelled];

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(amount_minor: i64) -> Money {
        Money { amount_minor, currency: "EUR".parse().unwrap() }
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        assert_eq!(parse_idempotency_key(b"abc-123_X").unwrap(), "abc-123_X");
        assert!(parse_idempotency_key(&[b'k'; 255]).is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"has space", b"tab\t", "é".as_bytes()] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pricing_sums_lines_and_refuses_unknown_products_and_mixed_currencies() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let order = ValidOrder { customer_id: Uuid::now_v7(), lines: vec![(a, 2), (b, 3)] };
        let mut products = HashMap::from([(a, KnownProduct { name: "A".into(), price: eur(250) })]);
        let err = order.price(&products).unwrap_err().to_string();
        assert!(err.contains(&b.to_string()) && err.contains("synchronized"), "{err}");
        products.insert(b, KnownProduct { name: "B".into(), price: eur(100) });
        assert_eq!(order.price(&products).unwrap().total, eur(800));
        products.get_mut(&b).unwrap().price.currency = "USD".parse().unwrap();
        assert!(order.price(&products).unwrap_err().to_string().contains("one currency"));
        products.get_mut(&b).unwrap().price = eur(i64::MAX / 2);
        assert!(order.price(&products).unwrap_err().to_string().contains("overflows"));
    }
}
