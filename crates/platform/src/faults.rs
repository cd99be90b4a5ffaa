//! Fault flags switched at run time, for demos and chaos runs (docs/faults.md).
//!
//! A service declares its flags ([`Flag`]: name, meaning, range); operators set them through
//! the API (`GET/PATCH/DELETE /admin/faults`, see `http/faults.rs`), which stores them in the
//! service's database (`conveyor.fault_flags`, migrated by every migrator with the platform's
//! own migrations). Every process of the service reads them through [`Faults`]: a copy in
//! atomics, refreshed from the database once a second by a background task, so a handler's
//! read costs one atomic load and every replica follows a change within about a second.
//! Each flag's value is also the gauge `conveyor_fault_flag{flag}`, 0 while it is off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

/// How often [`Faults::watch`] reads the flags again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One flag a service declares. All flags are numbers; 0 is always "off".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flag {
    pub name: &'static str,
    /// What the flag does, for `--help`-like listings and the docs.
    pub description: &'static str,
    pub min: f64,
    pub max: f64,
    /// Whole numbers only (milliseconds, on/off).
    pub integer: bool,
}

impl Flag {
    /// `value` if it is a number this flag takes; otherwise why not, naming the flag.
    pub fn check(&self, value: f64) -> Result<f64, String> {
        let name = self.name;
        if !value.is_finite() {
            return Err(format!("fault flag {name:?}: {value} is not a number"));
        }
        if value < self.min || value > self.max {
            return Err(format!("fault flag {name:?}: {value} is out of range ({} to {})", self.min, self.max));
        }
        if self.integer && value.fract() != 0.0 {
            return Err(format!("fault flag {name:?}: {value} is not a whole number"));
        }
        Ok(value)
    }

    fn clamp(&self, value: f64) -> f64 {
        if value.is_finite() { value.clamp(self.min, self.max) } else { 0.0 }
    }
}

/// The flags of `body` (a JSON object of flag names to numbers), each checked against its
/// declaration in `flags`; the first problem found otherwise, naming the flag.
pub fn parse_changes(flags: &'static [Flag], body: &serde_json::Map<String, Value>) -> Result<Vec<(&'static Flag, f64)>, String> {
    if body.is_empty() {
        return Err(format!("name at least one fault flag to set; this service has: {}", names(flags)));
    }
    body.iter()
        .map(|(name, value)| {
            let flag = find(flags, name)?;
            let number = value.as_f64().ok_or_else(|| format!("fault flag {name:?}: {value} is not a number"))?;
            Ok((flag, flag.check(number)?))
        })
        .collect()
}

/// The declaration of `name`, or an error listing the flags there are.
pub fn find(flags: &'static [Flag], name: &str) -> Result<&'static Flag, String> {
    flags.iter().find(|f| f.name == name).ok_or_else(|| match flags.len() {
        0 => format!("unknown fault flag {name:?}: this service has none"),
        _ => format!("unknown fault flag {name:?}; this service has: {}", names(flags)),
    })
}

fn names(flags: &[Flag]) -> String {
    flags.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

const READ: &str = "SELECT name, value FROM conveyor.fault_flags WHERE name = ANY($1)";
const WRITE: &str = "\
INSERT INTO conveyor.fault_flags (name, value) SELECT * FROM UNNEST($1::text[], $2::float8[])
ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()";
const CLEAR: &str = "DELETE FROM conveyor.fault_flags WHERE name = ANY($1)";

/// Every flag of `flags` with its stored value (0 when none is stored), clamped to its range.
pub async fn read(pool: &PgPool, flags: &'static [Flag]) -> Result<BTreeMap<&'static str, f64>, sqlx::Error> {
    let names: Vec<&str> = flags.iter().map(|f| f.name).collect();
    let stored: Vec<(String, f64)> = sqlx::query_as(READ).bind(&names).fetch_all(pool).await?;
    Ok(flags
        .iter()
        .map(|f| {
            let value = stored.iter().find(|(n, _)| n == f.name).map_or(0.0, |(_, v)| f.clamp(*v));
            (f.name, value)
        })
        .collect())
}

/// Stores checked values (see [`parse_changes`]), all in one statement.
pub async fn write(pool: &PgPool, changes: &[(&'static Flag, f64)]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = changes.iter().map(|(f, _)| f.name).collect();
    let values: Vec<f64> = changes.iter().map(|(_, v)| *v).collect();
    sqlx::query(WRITE).bind(&names).bind(&values).execute(pool).await?;
    Ok(())
}

/// Every flag of `flags` back to 0.
pub async fn clear(pool: &PgPool, flags: &'static [Flag]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = flags.iter().map(|f| f.name).collect();
    sqlx::query(CLEAR).bind(&names).execute(pool).await?;
    Ok(())
}

/// A service's flags as this process last read them; cheap to clone and to read.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    flags: &'static [Flag],
    /// `f64` bits, in the order of `flags`.
    values: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.inner.flags.iter().map(|flag| (flag.name, self.get(flag.name)))).finish()
    }
}

impl Faults {
    /// All flags off until [`refresh`](Self::refresh) reads them (tests refresh by hand;
    /// processes use [`watch`](Self::watch)). Exports each flag's gauge at 0.
    pub fn new(pool: PgPool, flags: &'static [Flag]) -> Self {
        let values = flags.iter().map(|_| AtomicU64::new(0f64.to_bits())).collect();
        let faults = Faults { inner: Arc::new(Inner { pool, flags, values }) };
        faults.export();
        faults
    }

    /// Reads the flags now and then every [`REFRESH`], in a background task that lives as
    /// long as a clone of the returned value (call it inside a Tokio runtime). A failed read
    /// keeps the last values (all off at first) and is logged; `require_migrated` has made
    /// sure the table exists.
    pub fn watch(pool: PgPool, flags: &'static [Flag]) -> Self {
        let faults = Faults::new(pool, flags);
        tokio::spawn(refresh_loop(Arc::downgrade(&faults.inner)));
        faults
    }

    /// The flags this service declares.
    pub fn flags(&self) -> &'static [Flag] {
        self.inner.flags
    }

    /// The pool the flags are stored in.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The value of `name` as last read; 0 for a flag the service did not declare.
    pub fn get(&self, name: &str) -> f64 {
        match self.inner.flags.iter().position(|f| f.name == name) {
            Some(i) => f64::from_bits(self.inner.values[i].load(Ordering::Relaxed)),
            None => {
                debug_assert!(false, "fault flag {name:?} is not declared");
                0.0
            }
        }
    }

    /// `name`, read as milliseconds.
    pub fn millis(&self, name: &str) -> Duration {
        Duration::from_millis(self.get(name).max(0.0) as u64)
    }

    /// Every flag with the value last read.
    pub fn values(&self) -> BTreeMap<&'static str, f64> {
        self.inner.flags.iter().map(|f| (f.name, self.get(f.name))).collect()
    }

    /// Reads every flag from the database now; returns them.
    pub async fn refresh(&self) -> Result<BTreeMap<&'static str, f64>, sqlx::Error> {
        let read = read(&self.inner.pool, self.inner.flags).await?;
        for (i, flag) in self.inner.flags.iter().enumerate() {
            let value = read.get(flag.name).copied().unwrap_or(0.0);
            let old = f64::from_bits(self.inner.values[i].swap(value.to_bits(), Ordering::Relaxed));
            if old != value {
                tracing::info!(flag = flag.name, from = old, to = value, "fault flag changed");
            }
        }
        self.export();
        Ok(read)
    }

    fn export(&self) {
        for flag in self.inner.flags {
            metrics::gauge!("conveyor_fault_flag", "flag" => flag.name).set(self.get(flag.name));
        }
    }
}

async fn refresh_loop(faults: Weak<Inner>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(inner) = faults.upgrade() else {
            return;
        };
        let faults = Faults { inner };
        match tokio::time::timeout(REFRESH * 2, faults.refresh()).await {
            Ok(Ok(_)) if failing => {
                tracing::info!("fault flags read again");
                failing = false;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, "fault flags not read; keeping the last values");
                failing = true;
            }
            Err(_) if !failing => {
                tracing::warn!("fault flags not read within 2 s; keeping the last values");
                failing = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static FLAGS: [Flag; 2] = [
        Flag { name: "rate", description: "a fraction", min: 0.0, max: 1.0, integer: false },
        Flag { name: "delay_ms", description: "a delay", min: 0.0, max: 60_000.0, integer: true },
    ];

    fn parse(body: Value) -> Result<Vec<(&'static str, f64)>, String> {
        parse_changes(&FLAGS, body.as_object().unwrap()).map(|c| c.into_iter().map(|(f, v)| (f.name, v)).collect())
    }

    #[test]
    fn changes_are_checked_against_their_declaration() {
        assert_eq!(parse(json!({"rate": 0.25, "delay_ms": 500})), Ok(vec![("delay_ms", 500.0), ("rate", 0.25)]));
        assert_eq!(parse(json!({"rate": 1, "delay_ms": 0})), Ok(vec![("delay_ms", 0.0), ("rate", 1.0)]));
        let err = |body| parse(body).unwrap_err();
        assert!(err(json!({"speed": 1})).contains("unknown fault flag \"speed\"; this service has: rate, delay_ms"));
        assert!(err(json!({"rate": "0.5"})).contains("\"rate\": \"0.5\" is not a number"));
        assert!(err(json!({"rate": null})).contains("\"rate\""));
        assert!(err(json!({"rate": 1.5})).contains("\"rate\": 1.5 is out of range (0 to 1)"));
        assert!(err(json!({"rate": -0.1})).contains("out of range"));
        assert!(err(json!({"delay_ms": 60_001})).contains("\"delay_ms\""));
        assert!(err(json!({"delay_ms": 2.5})).contains("\"delay_ms\": 2.5 is not a whole number"));
        assert!(err(json!({})).contains("name at least one"));
    }

    #[test]
    fn stored_values_outside_the_range_are_clamped() {
        assert_eq!(FLAGS[0].clamp(7.0), 1.0);
        assert_eq!(FLAGS[0].clamp(-1.0), 0.0);
        assert_eq!(FLAGS[1].clamp(f64::NAN), 0.0);
        assert!(FLAGS[1].check(f64::INFINITY).is_err());
        assert_eq!(find(&[], "x").unwrap_err(), "unknown fault flag \"x\": this service has none");
    }
}
