//! The held xmin horizon (`--hold-xmin`): what Postgres queues meet in production when a
//! long transaction (a report, a REPEATABLE READ backup, a replica's feedback) keeps a
//! snapshot open. While it is open, no row version deleted or updated after it can be
//! removed — vacuum leaves it, and index scans cannot mark its entries dead — so a claim
//! that reads its index from the start walks the entries of every message handled since.
//!
//! The hold is centred in the run, with time before it to compare against and time after it
//! to catch up in. It is one connection per queue database (the horizon is per database)
//! that runs `BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current(); SELECT count(*)
//! FROM <its queue table>` and commits at the end; every sample while it is open checks in
//! `pg_stat_activity` that each connection's `backend_xmin` is set.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection, PgPool};

/// When the snapshot is held, in seconds from the start of the load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HoldPlan {
    pub start_s: f64,
    pub end_s: f64,
}

impl HoldPlan {
    /// A hold of `hold` centred in a run of `duration`: from (duration − hold) / 2. Refused
    /// unless at least two sample intervals are left before and after it (the first sample
    /// is warm-up; the phases need one more each).
    pub fn centred(duration: Duration, hold: Duration, sample: Duration) -> Result<HoldPlan, String> {
        let (d, h, i) = (duration.as_secs_f64(), hold.as_secs_f64(), sample.as_secs_f64());
        if h <= 0.0 {
            return Err("--hold-xmin must be longer than 0".into());
        }
        let side = (d - h) / 2.0;
        if side < 2.0 * i - 1e-9 {
            return Err(format!(
                "--hold-xmin {h:.0} s is too long for --duration {d:.0} s: it leaves {:.0} s before and after it, and each side \
                 needs at least two --sample-interval ({:.0} s); make the run at least {:.0} s long",
                side.max(0.0),
                2.0 * i,
                h + 4.0 * i
            ));
        }
        Ok(HoldPlan { start_s: side, end_s: side + h })
    }
}

/// The sample times: every `interval` up to `duration`, the end, and the hold's start and
/// end, so that no window straddles a phase's edge.
pub fn ticks(duration_s: f64, interval_s: f64, hold: Option<&HoldPlan>) -> Vec<f64> {
    let mut t: Vec<f64> = (1..).map(|k| k as f64 * interval_s).take_while(|&t| t < duration_s - 1e-9).collect();
    t.push(duration_s);
    if let Some(h) = hold {
        t.extend([h.start_s, h.end_s]);
    }
    t.sort_by(f64::total_cmp);
    // Edges closer than a few ms to a regular tick merge with it (the later value wins).
    let mut out: Vec<f64> = Vec::with_capacity(t.len());
    for x in t {
        match out.last_mut() {
            Some(last) if x - *last < 0.005 => *last = x,
            _ => out.push(x),
        }
    }
    out
}

/// What one holding connection holds: a database and the queue table it reads.
pub struct Target {
    pub database: String,
    pub url: String,
    /// Schema-qualified, e.g. `conveyor.inbox`.
    pub table: String,
}

/// The holding connections, one per queue database, connected before the load starts.
pub struct Hold {
    conns: Vec<Held>,
    open: bool,
}

struct Held {
    database: String,
    table: String,
    conn: PgConnection,
    pid: i32,
}

impl Hold {
    pub async fn connect(targets: Vec<Target>) -> Result<Hold> {
        let mut conns = Vec::new();
        for t in targets {
            let mut conn = PgConnection::connect(&t.url).await.with_context(|| format!("connecting the hold to {}", t.database))?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
            conns.push(Held { database: t.database, table: t.table, conn, pid });
        }
        Ok(Hold { conns, open: false })
    }

    /// Opens the snapshots: a REPEATABLE READ transaction with an xid, that has read its
    /// queue table.
    pub async fn begin(&mut self) -> Result<()> {
        for h in &mut self.conns {
            sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ").execute(&mut h.conn).await?;
            sqlx::query("SELECT txid_current()").execute(&mut h.conn).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", h.table)))
                .execute(&mut h.conn)
                .await
                .with_context(|| format!("the hold's first read of {} in {}", h.table, h.database))?;
        }
        self.open = true;
        Ok(())
    }

    /// Checks (from another connection: a backend caches `pg_stat_activity` for the rest of
    /// its transaction) that every holding connection still holds its snapshot. Returns the
    /// smallest `age(backend_xmin)`.
    pub async fn check(&self, observer: &PgPool) -> Result<i64> {
        let pids: Vec<i32> = self.conns.iter().map(|h| h.pid).collect();
        let rows: Vec<(i32, Option<i32>)> = sqlx::query_as("SELECT pid, age(backend_xmin) FROM pg_stat_activity WHERE pid = ANY($1)")
            .bind(&pids)
            .fetch_all(observer)
            .await
            .context("reading the hold's backend_xmin")?;
        let mut youngest = i64::MAX;
        for h in &self.conns {
            match rows.iter().find(|r| r.0 == h.pid) {
                Some((_, Some(age))) => youngest = youngest.min(i64::from(*age)),
                _ => bail!("the hold's connection to {} (pid {}) holds no snapshot: its backend_xmin is not set", h.database, h.pid),
            }
        }
        Ok(youngest)
    }

    /// Commits the holding transactions: the horizon may move again.
    pub async fn end(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        for h in &mut self.conns {
            sqlx::raw_sql("COMMIT").execute(&mut h.conn).await.with_context(|| format!("ending the hold in {}", h.database))?;
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub async fn close(mut self) {
        let _ = self.end().await;
        for h in self.conns {
            let _ = h.conn.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_is_centred_and_refused_when_it_leaves_too_little_around_it() {
        let s = Duration::from_secs;
        assert_eq!(HoldPlan::centred(s(1200), s(600), s(5)), Ok(HoldPlan { start_s: 300.0, end_s: 900.0 }));
        assert_eq!(HoldPlan::centred(s(9), s(3), s(1)), Ok(HoldPlan { start_s: 3.0, end_s: 6.0 }));
        let e = HoldPlan::centred(s(600), s(590), s(5)).unwrap_err();
        assert!(e.contains("leaves 5 s before and after it") && e.contains("at least 610 s long"), "{e}");
        assert!(HoldPlan::centred(s(600), s(0), s(5)).is_err());
        assert!(HoldPlan::centred(s(600), s(700), s(5)).is_err());
    }

    #[test]
    fn ticks_fall_on_the_interval_and_on_the_hold_s_edges() {
        assert_eq!(ticks(12.0, 5.0, None), [5.0, 10.0, 12.0]);
        let h = HoldPlan { start_s: 7.5, end_s: 10.0 };
        assert_eq!(ticks(20.0, 5.0, Some(&h)), [5.0, 7.5, 10.0, 15.0, 20.0]);
        let h = HoldPlan { start_s: 3.0, end_s: 6.0 };
        assert_eq!(ticks(9.0, 1.0, Some(&h)), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
}
