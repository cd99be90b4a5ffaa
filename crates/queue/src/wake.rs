//! Wake-ups without paying for NOTIFY under load.
//!
//! A `NOTIFY` makes its transaction's commit take a cluster-wide lock, so notifying
//! transactions commit one at a time (Oban #956: a trigger that notified per insert cut
//! inserts from 1,967/s to 698/s). Here a writer notifies only when somebody is waiting:
//!
//! - a listener whose loops are idle holds the session advisory lock of its channel;
//! - a writer's statement tries the same lock in shared mode for its transaction
//!   (`pg_try_advisory_xact_lock_shared`) and sends `pg_notify` only when that fails;
//! - when no loop is idle the listener releases the lock: busy loops claim again anyway.
//!
//! No wake-up is lost: a writer that found the lock free holds it (shared) until it
//! commits, so a listener taking the lock waits for that commit, then probes the table
//! once and wakes a loop if anything is there. Polling stays as the fallback for what no
//! notification announces (a retry whose backoff ended, a lost connection).
//!
//! The listener *waits* for the lock (`pg_advisory_lock`, bounded by the session's
//! `lock_timeout`) rather than trying it: while its request is queued, every new writer's
//! shared try conflicts with it and fails, so those writers notify, and the lock is granted
//! as soon as the writers already holding it commit. A listener that only tried the lock,
//! backing off between tries, could miss it for as long as a stream of overlapping
//! publishing transactions kept it held, and wake its loops only at the next poll (the
//! soak and peer benchmarks saw p99 of about 1 s under steady load that way).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::conn::Replan;
use crate::floor::{Floor, Positions};

/// A notification channel: its name, the advisory lock key idle listeners hold, and the
/// query that tells whether there is work (`$1`: the listener's topics; then what the
/// listener's [`ProbeFrom`] binds).
pub(crate) struct Channel {
    pub name: &'static str,
    pub lock_key: i64,
    pub probe: &'static str,
}

/// Where a listener's probe looks from: a claimer's floor (`$2`, NULL when it has none, of
/// the floor's index type), or the partition cursors of a pull subscriber (`$2` to `$7`).
#[derive(Clone)]
pub(crate) enum ProbeFrom {
    Floor(Arc<Floor>, Positions),
    Cursors(Arc<crate::pull::Cursors>),
}

// A probe must not walk the dead entries a held xmin horizon keeps in the index: it reads
// from the claimer's floor (rows below it are the sweeps' to find; see `floor`), and never
// further back than a minute. (With a minute only, a 10-minute hold at 800 msgs/s made
// every probe walk 48,000 entries, and the relay's listener probes each time a loop goes
// idle: p50 and p99 tripled.)
pub(crate) const OUTBOX: Channel = Channel {
    name: crate::OUTBOX_CHANNEL,
    lock_key: crate::OUTBOX_WAKE_LOCK,
    // The smallest UUID v7 of a minute ago, as 32 hex digits.
    probe: "SELECT EXISTS (SELECT 1 FROM conveyor.outbox WHERE topic = ANY($1) AND message_id >= greatest($2::uuid, \
            (lpad(to_hex((extract(epoch FROM now() - interval '1 minute') * 1000)::bigint), 12, '0') || '00000000000000000000')::uuid))",
};

pub(crate) const INBOX: Channel = Channel {
    name: crate::INBOX_CHANNEL,
    lock_key: crate::INBOX_WAKE_LOCK,
    probe: "SELECT EXISTS (SELECT 1 FROM conveyor.inbox WHERE state IN ('pending', 'running') AND visible_at <= now() \
            AND visible_at >= greatest($2::timestamptz, now() - interval '1 minute') AND topic = ANY($1))",
};

/// A publisher's outbox as its pull subscribers see it (see `pull`): writers notify on the
/// relay's channel, and the probe asks whether any partition holds a row past this process's
/// cursor of it (or of a transaction the cursor waits for).
pub(crate) const PULL: Channel = Channel {
    name: crate::OUTBOX_CHANNEL,
    lock_key: crate::OUTBOX_WAKE_LOCK,
    probe: concat!("SELECT EXISTS (", crate::pull::parts_with_work!(), ")"),
};

/// Runs `channel`'s probe on `conn`, from where `from` says.
async fn probe<'c>(conn: impl sqlx::PgExecutor<'c>, channel: &Channel, topics: &[String], from: &ProbeFrom) -> Result<bool, sqlx::Error> {
    let q = sqlx::query_scalar(channel.probe).bind(topics);
    match from {
        ProbeFrom::Floor(floor, positions) => positions.bind(q, floor.at()).fetch_one(conn).await,
        ProbeFrom::Cursors(cursors) => {
            let a = cursors.arrays();
            q.bind(a.0).bind(a.1).bind(a.2).bind(a.3).bind(a.4).bind(a.5).fetch_one(conn).await
        }
    }
}

/// How loops and their listener meet: loops count themselves idle while they wait, and
/// wait on a `Notify` the listener pokes.
#[derive(Default)]
pub(crate) struct Idle {
    count: watch::Sender<usize>,
}

impl Idle {
    /// Waits until woken, the poll interval passes, or shutdown, counted as idle meanwhile.
    /// `notified` must have been enabled before the claim that came back empty, so a
    /// wake-up in between is not lost.
    pub async fn wait(&self, notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>, poll: Duration, shutdown: &CancellationToken) {
        self.count.send_modify(|n| *n += 1);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = notified => {}
            _ = tokio::time::sleep(poll) => {}
        }
        self.count.send_modify(|n| *n -= 1);
    }

    /// Whether some loop is waiting now: its listener then holds the wake lock (or is
    /// about to, and probes once it does), so what is written from now on wakes a loop.
    pub fn any(&self) -> bool {
        *self.count.borrow() > 0
    }
}

/// What a claim loop does between cycles: recruit another loop after a full batch, wait
/// (counted idle) after an empty one, back off after a failure.
///
/// After a partial batch, an inbox loop ([`Pacer::partial_waits`]) claims again at once
/// only when no other loop is idle. When one is, its listener holds the wake lock, so
/// every row written since is announced and wakes a loop: a claim now would only confirm
/// an empty queue (three round trips; at 150 sagas/s the order database ran 2.75 claims per
/// message). When none is, no writer announces anything, and the loop must look for
/// itself. (A pull loop reads one partition of several, and a relay runs one loop: both
/// always look again.)
pub(crate) struct Pacer<'a> {
    pub wake: &'a Notify,
    pub idle: &'a Idle,
    pub poll: Duration,
    pub batch_size: i64,
    pub shutdown: &'a CancellationToken,
    /// Names the loop in logs and in `conveyor_queue_loop_errors_total{loop}`.
    pub what: &'static str,
    pub failures: u32,
    /// Whether a partial batch may end in a wait (see above).
    pub partial_waits: bool,
    /// When known, how soon a message becomes claimable without any notification (a
    /// retry's backoff ends): an idle wait ends then, if before the poll interval.
    pub due: Option<Duration>,
}

impl Pacer<'_> {
    pub async fn after(&mut self, cycle: Result<usize, crate::Error>, notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
        match cycle {
            Ok(n) => {
                self.failures = 0;
                if n as i64 >= self.batch_size {
                    self.wake.notify_one(); // more may wait: recruit an idle loop
                } else if n == 0 || (self.partial_waits && self.idle.any()) {
                    let wait = self.due.map_or(self.poll, |due| due.min(self.poll));
                    self.idle.wait(notified, wait, self.shutdown).await;
                }
            }
            Err(e) => {
                self.failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(self.failures.min(7)));
                tracing::error!(error = %e, retry_in = ?wait, what = self.what, "queue loop failed; retrying");
                metrics::counter!("conveyor_queue_loop_errors_total", "loop" => self.what).increment(1);
                sleep_or_cancel(wait, self.shutdown).await;
            }
        }
    }
}

/// How long one wait for the wake lock may take before the listener looks at the table
/// and its notifications and waits again. Writers notify while it waits, so this bounds
/// only how late a wake-up comes while the lock stays held (by a long transaction or
/// another process's idle listener).
const LOCK_WAIT: &str = "200ms";

/// Whether `e` is Postgres's `lock_not_available` (the `lock_timeout` ran out).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55P03")
}

/// Spawns the listener of `channel` for loops that handle `topics`: it holds the channel's
/// lock while any loop is idle, and pokes each of `wakes` (`notify_one`) on every
/// notification or positive probe, until `shutdown`.
pub(crate) fn spawn_listener(
    pool: PgPool,
    channel: &'static Channel,
    topics: Vec<String>,
    from: ProbeFrom,
    idle: Arc<Idle>,
    wakes: Vec<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        // The listener's own connection, never the caller's pool: sqlx hands a dropped
        // listener's connection back to its pool, and a pooled connection that still held
        // the wake lock would make every writer on it skip its NOTIFY (a session does not
        // conflict with its own lock) and keep every listener from the lock.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*pool.connect_options()).clone().options([("lock_timeout", LOCK_WAIT)]));
        let poke = || wakes.iter().for_each(|w| w.notify_one());
        let poke_all = || wakes.iter().for_each(|w| w.notify_waiters());
        let mut idle_rx = idle.count.subscribe();
        'connect: loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, channel = channel.name, "cannot connect the notification listener; polling only until it can");
                    if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = listener.listen(channel.name).await {
                tracing::warn!(error = %e, channel = channel.name, "LISTEN failed; retrying");
                if sleep_or_cancel(Duration::from_secs(1), &shutdown).await {
                    return;
                }
                continue;
            }
            // Something may have been written while nobody listened.
            poke_all();
            let mut holding = false;
            // The probe's plan is dropped now and then, like a loop's (see `conn`).
            let mut replan = Replan::new();
            loop {
                let want = *idle_rx.borrow_and_update() > 0;
                let step: Result<(), sqlx::Error> = async {
                    if want && !holding {
                        match sqlx::query("SELECT pg_advisory_lock($1)").bind(channel.lock_key).execute(&mut listener).await {
                            Ok(_) => holding = true,
                            // Still held, by a long publishing transaction or another
                            // process's idle listener. Writers that took the lock before
                            // this wait began may have committed unannounced: look.
                            // Then read what was notified meanwhile and wait again.
                            Err(e) if is_lock_timeout(&e) => {}
                            Err(e) => return Err(e),
                        }
                        replan.if_due(&mut listener).await?;
                        let work = probe(&mut listener, channel, &topics, &from).await?;
                        if work {
                            poke();
                        }
                    } else if !want && holding {
                        sqlx::query("SELECT pg_advisory_unlock($1)").bind(channel.lock_key).execute(&mut listener).await?;
                        holding = false;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = step {
                    tracing::warn!(error = %e, channel = channel.name, "listener query failed; reconnecting");
                    poke_all();
                    continue 'connect;
                }
                // The lock wait ran out: wait again, but first read what was notified.
                let wait_again = want && !holding;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        if holding {
                            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(channel.lock_key).execute(&mut listener).await;
                        }
                        drop(listener);
                        pool.close().await;
                        return;
                    }
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => poke(),
                        // The connection was lost (and with it the lock); PgListener
                        // reconnects and listens again on the next call.
                        Ok(None) => {
                            holding = false;
                            poke_all();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, channel = channel.name, "notification listener failed; reconnecting");
                            poke_all();
                            continue 'connect;
                        }
                    },
                    _ = idle_rx.changed() => {}
                    _ = std::future::ready(()), if wait_again => {}
                }
            }
        }
    });
}

/// The part of a writer's statement that wakes `channel`'s listeners only when one is
/// idle (see the module docs). Use it as a CTE named `wake`.
macro_rules! wake_cte {
    ($channel:literal, $key:literal) => {
        concat!(
            "wake AS (SELECT CASE WHEN pg_try_advisory_xact_lock_shared(", $key, ") THEN NULL ",
            "ELSE pg_notify('", $channel, "', '') END)"
        )
    };
}
pub(crate) use wake_cte;

/// Sleeps for `d`; returns true when `shutdown` fired first.
pub(crate) async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_try_the_lock_their_listeners_hold() {
        for (sql, channel) in [(crate::publish::INSERT, &OUTBOX), (crate::relay::DELIVER, &INBOX)] {
            assert!(sql.contains(&format!("pg_try_advisory_xact_lock_shared({})", channel.lock_key)), "{sql}");
            assert!(sql.contains(&format!("pg_notify('{}'", channel.name)), "{sql}");
        }
    }
}
