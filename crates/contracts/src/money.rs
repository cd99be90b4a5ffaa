use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency code this shop accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// The currencies we take. A fixed list: an unknown code is a client error, not a new
/// currency.
const KNOWN: &[&str] = &["AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "JPY", "NOK", "PLN", "SEK", "USD"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}: expected one of {known}", known = KNOWN.join(", "))]
    UnknownCurrency(String),
    #[error("amount {0} is negative")]
    Negative(i64),
    #[error("amount overflows")]
    Overflow,
    #[error("currencies differ: {0} and {1}")]
    Mismatch(Currency, Currency),
}

impl Currency {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("built from an ASCII code")
    }

    pub fn known() -> &'static [&'static str] {
        KNOWN
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, MoneyError> {
        if KNOWN.contains(&s) {
            let b = s.as_bytes();
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::UnknownCurrency(s.chars().take(16).collect()))
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(KNOWN.iter().copied()))
            .description(Some("ISO 4217 currency code"))
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

/// An amount of money: integer minor units (cents) and a currency, never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Minor units (e.g. cents), never negative.
    #[schema(minimum = 0)]
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount_minor < 0 {
            return Err(MoneyError::Negative(amount_minor));
        }
        Ok(Money { amount_minor, currency })
    }

    pub fn zero(currency: Currency) -> Self {
        Money { amount_minor: 0, currency }
    }

    /// `self + unit × quantity`, in one currency, without overflow.
    pub fn add_times(self, unit: Money, quantity: i64) -> Result<Money, MoneyError> {
        if unit.currency != self.currency {
            return Err(MoneyError::Mismatch(self.currency, unit.currency));
        }
        let amount = unit.amount_minor.checked_mul(quantity).and_then(|x| x.checked_add(self.amount_minor)).ok_or(MoneyError::Overflow)?;
        Money::new(amount, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        if self.currency.as_str() == "JPY" {
            write!(f, "{sign}{abs} {}", self.currency)
        } else {
            write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_parse_only_when_known() {
        assert_eq!("EUR".parse::<Currency>().unwrap().as_str(), "EUR");
        assert!(matches!("XXX".parse::<Currency>(), Err(MoneyError::UnknownCurrency(_))));
        assert!("eur".parse::<Currency>().is_err());
        assert!(serde_json::from_str::<Currency>("\"ZZZ\"").is_err());
    }

    #[test]
    fn sums_refuse_overflow_mixed_currencies_and_negatives() {
        let eur: Currency = "EUR".parse().unwrap();
        let usd: Currency = "USD".parse().unwrap();
        let total = Money::zero(eur).add_times(Money::new(250, eur).unwrap(), 3).unwrap();
        assert_eq!(total.amount_minor, 750);
        assert_eq!(total.to_string(), "7.50 EUR");
        assert_eq!(Money { amount_minor: -5, currency: eur }.to_string(), "-0.05 EUR");
        assert_eq!(Money::zero(eur).add_times(Money::new(i64::MAX, eur).unwrap(), 2), Err(MoneyError::Overflow));
        assert!(matches!(Money::zero(eur).add_times(Money::new(1, usd).unwrap(), 1), Err(MoneyError::Mismatch(..))));
        assert_eq!(Money::new(-1, eur), Err(MoneyError::Negative(-1)));
    }

    #[test]
    fn money_in_an_event_takes_fields_added_later() {
        // A request is strict at every depth (the platform's `Json` refuses `price.extra`);
        // an event is not: a field a newer publisher adds must not stop an older consumer.
        let m: Money = serde_json::from_str(r#"{"amount_minor": 5, "currency": "EUR", "tax_minor": 1}"#).unwrap();
        assert_eq!(m, Money::new(5, "EUR".parse().unwrap()).unwrap());
    }
}
