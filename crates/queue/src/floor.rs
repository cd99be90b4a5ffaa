//! Claim floors: where a claim's index scan may start, so that it does not walk the entries
//! of messages already handled.
//!
//! A claim reads its index in order (`visible_at` for the inbox, the UUID v7 id for the
//! outbox) from the start. Handled rows leave dead index entries behind until vacuum removes
//! them; normally the first scan that meets one marks it dead and later scans skip it, but
//! while any transaction holds the xmin horizon back (a long report, a REPEATABLE READ
//! backup, a replica's feedback) nothing can be marked, vacuum removes nothing, and every
//! claim walks every entry of every message handled since: the claim's cost grows with the
//! hold, which is how SKIP LOCKED queues lose a third of their throughput (PgQue's
//! benchmark; River #59, que #244).
//!
//! So a claimer remembers how far it has got: the floor is the newest position it has
//! claimed, less a margin for rows whose inserting transaction committed late, and its
//! claims start there. A row behind the floor can only be one a crashed claimer handed back
//! (rolled back) or one committed more than the margin after its position was stamped.
//!
//! **Sweeps** find those, and they are not claims: a sweep is a read (no lock, no claim)
//! that the claimer runs beside its claim loops, on a connection of its own, once per sweep
//! interval. It looks for the oldest live row below the floor; when it finds one it lowers
//! the floor for the next claim and wakes a loop. A sweep reads only from where the last one
//! found nothing (less one interval, for late commits); one sweep in [`FULL_EVERY`] reads
//! from the index's start. So with the horizon held, the claim loops never walk the dead
//! entries: a bounded sweep walks a few seconds' worth, and the full one walks them all
//! once a minute, off the claim path. (A first version swept inside the claim loops, from
//! the start each time: with a 10-minute hold that walk reached hundreds of thousands of
//! entries every 5 s, messages waited behind it, and p99 grew ×3.8; see
//! `docs/benchmarks.md`.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::query::QueryScalar;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How far behind the newest claimed position a claim starts. Positions are stamped when
/// the inserting transaction starts (`now()`, or the id minted before the publishing
/// transaction), so a row can commit behind positions claimed already; the relay's inserts
/// take milliseconds, and anything later is found by a sweep.
pub const MARGIN: Duration = Duration::from_millis(250);

/// One sweep in this many reads the claim index from its start (the others from where the
/// last sweep left off): once a minute at the default poll interval. It finds a row whose
/// transaction committed more than a sweep interval after its position was stamped.
pub const FULL_EVERY: u32 = 12;

/// How often a claimer sweeps: every five poll intervals (5 s by default), about the
/// longest a row handed back by a crashed claimer of another process waits (a restarted
/// claimer's first claims read from the start).
pub(crate) fn sweep_interval(poll: Duration) -> Duration {
    poll.saturating_mul(5)
}

/// The floor of one claimer (shared by its loops), as microseconds since the Unix epoch.
pub(crate) struct Floor {
    state: Mutex<State>,
    sweep: Duration,
}

#[derive(Default)]
struct State {
    /// Newest claimed position less the margin; `None` until something is claimed.
    at_micros: Option<i64>,
    /// The oldest row a sweep found below the floor: the next claim starts there.
    found: Option<i64>,
    /// Where the next bounded sweep starts; `None`: from the index's start.
    swept_from: Option<i64>,
    last_sweep: Option<Instant>,
    /// Bounded sweeps since the last full one.
    since_full: u32,
}

/// The positions one sweep looks at: from `from` (`None`: the index's start) up to, not
/// including, `below` (the floor when it began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    pub from: Option<i64>,
    pub below: i64,
}

impl Floor {
    pub fn new(sweep: Duration) -> Self {
        Floor { state: Mutex::new(State::default()), sweep }
    }

    /// Where the next claim starts: `None` (from the beginning) until something is claimed;
    /// lower than the floor once, after a sweep found a row below it.
    pub fn start(&self) -> Option<i64> {
        let mut s = self.state.lock().expect("floor lock");
        let at = s.at_micros?;
        Some(s.found.take().map_or(at, |f| f.min(at)))
    }

    /// The floor itself: the newest claimed position less the margin; `None` until
    /// something is claimed.
    pub fn at(&self) -> Option<i64> {
        self.state.lock().expect("floor lock").at_micros
    }

    /// Records the newest position a claim took (microseconds since the epoch).
    pub fn claimed(&self, newest_micros: i64) {
        let candidate = newest_micros - MARGIN.as_micros() as i64;
        let mut s = self.state.lock().expect("floor lock");
        s.at_micros = Some(s.at_micros.map_or(candidate, |f| f.max(candidate)));
    }

    /// The sweep that is due now, which only one caller per interval gets; `None` when
    /// none is, or while nothing is claimed (claims read from the start then).
    pub fn due(&self) -> Option<Sweep> {
        let mut s = self.state.lock().expect("floor lock");
        let below = s.at_micros?;
        if s.last_sweep.is_some_and(|t| t.elapsed() < self.sweep) {
            return None;
        }
        s.last_sweep = Some(Instant::now());
        let full = s.swept_from.is_none() || s.since_full + 1 >= FULL_EVERY;
        s.since_full = if full { 0 } else { s.since_full + 1 };
        Some(Sweep { from: if full { None } else { s.swept_from }, below })
    }

    /// Records what `sweep` found: the position of the oldest live row below the floor, if
    /// any (it may be one a loop holds right now). Returns true when it found one, for
    /// which a loop should be woken.
    pub fn swept(&self, sweep: Sweep, oldest: Option<i64>) -> bool {
        let mut s = self.state.lock().expect("floor lock");
        let behind = sweep.below - self.sweep.as_micros() as i64;
        s.swept_from = Some(oldest.map_or(behind, |p| p.min(behind)));
        let Some(p) = oldest else { return false };
        s.found = Some(s.found.map_or(p, |f| f.min(p)));
        true
    }

    /// Sweeps if a sweep is due, on `conn`; true when it found a row below the floor.
    pub async fn sweep_if_due(&self, conn: &mut PgConnection, probe: &SweepProbe, topics: &[String]) -> Result<bool, sqlx::Error> {
        let Some(sweep) = self.due() else { return Ok(false) };
        let oldest = probe.oldest(conn, topics, sweep).await?;
        if let Some(p) = oldest {
            tracing::info!(table = probe.table, below_floor_ms = (sweep.below - p) / 1000, "a sweep found a row below the claim floor");
            metrics::counter!("conveyor_queue_sweep_finds_total", "queue" => probe.table).increment(1);
        }
        Ok(self.swept(sweep, oldest))
    }

    /// Sweeps at every interval until `shutdown`, on a connection of its own (the claim
    /// loops keep theirs, and a pool sized for them has none to spare), and wakes a loop
    /// through `wake` when a sweep finds a row below the floor.
    pub async fn sweep_loop(&self, pool: &PgPool, probe: &SweepProbe, topics: &[String], wake: &Notify, shutdown: &CancellationToken) {
        let own = PgPoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None).connect_lazy_with((*pool.connect_options()).clone());
        while !crate::wake::sleep_or_cancel(self.sweep, shutdown).await {
            let swept = async { self.sweep_if_due(&mut *own.acquire().await?, probe, topics).await }.await;
            match swept {
                Ok(true) => wake.notify_one(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, table = probe.table, "sweep below the claim floor failed; trying again next interval");
                    metrics::counter!("conveyor_queue_loop_errors_total", "loop" => "sweep").increment(1);
                }
            }
        }
        own.close().await;
    }
}

/// How a claimer's sweep reads its claim index: a statement returning the position of the
/// oldest live row of topics `$1` from `$2` (NULL: the start) up to `$3` (see
/// [`Positions::bind`]).
pub(crate) struct SweepProbe {
    pub table: &'static str,
    pub sql: &'static str,
    pub positions: Positions,
}

/// What a claim index is ordered by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Positions {
    /// A `timestamptz` (the inbox's `visible_at`).
    Time,
    /// A UUID v7 (the outbox's `message_id`).
    UuidV7,
}

impl Positions {
    /// `q` with a position (microseconds since the epoch) bound as this index's type: a
    /// `timestamptz`, or the smallest UUID v7 of that instant; NULL for `None`.
    pub fn bind<'q, O>(&self, q: QueryScalar<'q, Postgres, O, PgArguments>, micros: Option<i64>) -> QueryScalar<'q, Postgres, O, PgArguments> {
        match self {
            Positions::Time => q.bind(micros.and_then(DateTime::<Utc>::from_timestamp_micros)),
            Positions::UuidV7 => q.bind(micros.map(v7_of_micros)),
        }
    }
}

impl SweepProbe {
    async fn oldest(&self, conn: &mut PgConnection, topics: &[String], sweep: Sweep) -> Result<Option<i64>, sqlx::Error> {
        Ok(match self.positions {
            Positions::Time => {
                let row: Option<DateTime<Utc>> = self.query(topics, sweep).fetch_optional(conn).await?;
                row.map(|t| t.timestamp_micros())
            }
            Positions::UuidV7 => {
                let row: Option<Uuid> = self.query(topics, sweep).fetch_optional(conn).await?;
                row.and_then(micros_of_v7)
            }
        })
    }

    /// The statement with its topics and the sweep's range bound, returning an `O`.
    fn query<'q, O>(&self, topics: &'q [String], sweep: Sweep) -> QueryScalar<'q, Postgres, O, PgArguments>
    where
        O: sqlx::Type<Postgres> + for<'r> sqlx::Decode<'r, Postgres>,
    {
        let q = sqlx::query_scalar(self.sql).bind(topics);
        self.positions.bind(self.positions.bind(q, sweep.from), Some(sweep.below))
    }
}

/// The smallest UUID v7 of an instant given in microseconds since the epoch.
pub(crate) fn v7_of_micros(micros: i64) -> uuid::Uuid {
    crate::prune::v7_floor(std::time::UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64))
}

/// The instant a UUID v7 was minted, in microseconds since the epoch (`None` for another
/// kind of UUID).
pub(crate) fn micros_of_v7(id: uuid::Uuid) -> Option<i64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs as i64 * 1_000_000 + i64::from(nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_trails_the_newest_claim_and_never_moves_back() {
        let f = Floor::new(Duration::from_secs(3600));
        assert_eq!(f.start(), None, "nothing claimed yet: from the beginning");
        assert_eq!(f.due(), None, "no sweep while claims read from the start");
        f.claimed(10_000_000);
        f.claimed(9_000_000);
        assert_eq!(f.start(), Some(10_000_000 - 250_000), "never moves back");
    }

    #[test]
    fn sweeps_are_bounded_except_one_in_full_every_and_a_find_lowers_one_claim() {
        let interval = Duration::from_secs(5);
        let f = Floor::new(Duration::ZERO);
        let floor = |f: &Floor| f.state.lock().unwrap().at_micros.unwrap();
        f.claimed(100_000_000);
        let first = f.due().expect("due");
        assert_eq!(first, Sweep { from: None, below: floor(&f) }, "the first sweep reads from the start");
        // Sweeps with the zero interval of this floor: `from` is where the last left off.
        assert!(!f.swept(first, None));
        f.claimed(200_000_000);
        let second = f.due().unwrap();
        assert_eq!(second, Sweep { from: Some(first.below), below: floor(&f) }, "then from where the last left off");
        assert!(f.swept(second, Some(150_000_000)), "a find wakes a loop");
        assert_eq!(f.start(), Some(150_000_000), "the next claim starts at the find");
        assert_eq!(f.start(), Some(floor(&f)), "and only the next one");
        let third = f.due().unwrap();
        assert_eq!(third.from, Some(150_000_000), "a find is looked at again until it is gone");
        f.swept(third, None);
        let mut fulls = 0;
        for _ in 0..FULL_EVERY * 2 {
            let s = f.due().unwrap();
            fulls += usize::from(s.from.is_none());
            f.swept(s, None);
        }
        assert_eq!(fulls, 2, "one sweep in FULL_EVERY reads from the start");
        // With a real interval, `from` trails the last `below` by one interval.
        let g = Floor::new(interval);
        g.claimed(100_000_000);
        let s = g.due().unwrap();
        g.swept(s, None);
        assert_eq!(g.due(), None, "one sweep per interval");
        assert_eq!(g.state.lock().unwrap().swept_from, Some(s.below - 5_000_000));
    }
}
