//! The connection a loop keeps between its cycles, and the age of its cached plans.
//!
//! A loop keeps one connection (sqlx pings every connection handed back to its pool: one
//! more round trip per cycle), so its prepared statements keep the plans PostgreSQL cached
//! for them. PostgreSQL re-plans a cached statement only when the tables it reads change
//! their statistics (a vacuum or an analyze). A plan made while a queue table was a few
//! pages, as every table is when a shop starts, scans the whole table once it has grown,
//! until autovacuum comes round (a minute or more). Measured in `bench saga` on fresh
//! databases at 300 sagas/s: the order worker's claim deleted its rows with a scan of the
//! whole inbox (1,343 pages for 21 rows), 4.2 ms a call, and the payment worker read
//! `payments` whole for the orders paid already. So a loop drops its connection's plans now
//! and then (`DISCARD PLANS`: its prepared statements stay, their next executions plan again
//! on the tables as they are): a second after it connects, then at doubling intervals up to
//! ten seconds. Each time costs a round trip and a new plan for each statement the
//! connection runs. With it, the order worker's claim took 0.25 ms a call.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::time::Instant;

/// The first interval after a connection opens, and the longest.
const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(10);

/// When a connection's cached plans are dropped next.
#[derive(Debug)]
pub(crate) struct Replan {
    next: Instant,
    every: Duration,
}

impl Replan {
    /// For a connection that just opened.
    pub fn new() -> Self {
        Replan::from(Instant::now())
    }

    fn from(now: Instant) -> Self {
        Replan { next: now + FIRST, every: FIRST }
    }

    /// Drops `conn`'s cached plans if it is time.
    pub async fn if_due<'c>(&mut self, conn: impl sqlx::PgExecutor<'c>) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        if now < self.next {
            return Ok(());
        }
        sqlx::raw_sql("DISCARD PLANS").execute(conn).await?;
        self.discarded(now);
        Ok(())
    }

    /// The next time is twice as far as the last, up to [`LONGEST`].
    fn discarded(&mut self, now: Instant) {
        self.every = (self.every * 2).min(LONGEST);
        self.next = now + self.every;
    }
}

/// A loop's own connection from `pool`, opened on first use and again after [`reset`]
/// (a failure), whose plans are dropped as [`Replan`] says.
///
/// [`reset`]: LoopConn::reset
#[derive(Default)]
pub(crate) struct LoopConn {
    conn: Option<(PoolConnection<Postgres>, Replan)>,
}

impl LoopConn {
    pub async fn get(&mut self, pool: &PgPool) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some((pool.acquire().await?, Replan::new()));
        }
        let (conn, replan) = self.conn.as_mut().expect("filled above");
        replan.if_due(&mut **conn).await?;
        Ok(conn)
    }

    /// Forgets the connection (it may be broken): the next [`get`](Self::get) opens one.
    pub fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_dropped_a_second_after_connecting_then_at_doubling_intervals_up_to_ten_seconds() {
        let start = Instant::now();
        let mut r = Replan::from(start);
        let mut at = vec![];
        for _ in 0..9 {
            at.push((r.next - start).as_secs());
            r.discarded(r.next);
        }
        assert_eq!(at, [1, 3, 7, 15, 25, 35, 45, 55, 65]);
    }

    /// The claim's plan on `conn`, as cached for the prepared statement `claim`.
    async fn plan(conn: &mut PgConnection) -> String {
        let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE claim('{test.ping}', 10, NULL)").fetch_all(&mut *conn).await.unwrap();
        plan.join("\n")
    }

    #[tokio::test]
    async fn a_plan_cached_while_the_inbox_was_small_is_made_again_once_due() {
        let db = conveyor_devpg::test_db().await;
        let pool = db.pool().await;
        crate::migrate(&pool).await.unwrap();
        let fill = |n: i32| {
            sqlx::query(
                "INSERT INTO conveyor.inbox (message_id, topic, payload, published_at)
                 SELECT gen_random_uuid(), 'test.ping', json_build_object('pad', repeat('x', 400)), now() FROM generate_series(1, $1)",
            )
            .bind(n)
        };
        let mut loop_conn = LoopConn::default();
        let conn = loop_conn.get(&pool).await.unwrap();
        // A young inbox, analyzed as autovacuum does early on; the claim's generic plan
        // (the one a prepared statement settles on) is made then.
        fill(20).execute(&mut *conn).await.unwrap();
        sqlx::raw_sql("ANALYZE conveyor.inbox").execute(&mut *conn).await.unwrap();
        let prepare = format!("SET plan_cache_mode = force_generic_plan; PREPARE claim AS {}", crate::sql::TX_CLAIM);
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.unwrap();
        let young = plan(conn).await;
        assert!(young.contains("Seq Scan on inbox"), "a claim planned on a table of one page scans it:\n{young}");
        // It grows to thousands of pages (rows that came and went) before any vacuum.
        fill(20_000).execute(&mut *conn).await.unwrap();
        sqlx::query("DELETE FROM conveyor.inbox").execute(&mut *conn).await.unwrap();
        assert_eq!(plan(conn).await, young, "PostgreSQL keeps the plan until the table's statistics change");
        // Due now: the loop's next `get` drops the plans, and the claim is planned again
        // on the table as it is.
        loop_conn.conn.as_mut().unwrap().1 = Replan { next: Instant::now(), every: FIRST };
        let conn = loop_conn.get(&pool).await.unwrap();
        let grown = plan(conn).await;
        assert!(!grown.contains("Seq Scan on inbox"), "planned again on the grown table:\n{grown}");
        assert!(loop_conn.conn.as_ref().unwrap().1.next > Instant::now(), "and not again before the next interval");
    }
}
