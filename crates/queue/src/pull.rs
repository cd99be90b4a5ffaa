//! Pull delivery: a subscriber reads the publisher's outbox as a log, with a cursor kept in
//! its own database, and handles what it reads in the transaction that moves the cursor.
//!
//! The relay (push) copies every message into each subscriber's inbox and deletes it from
//! the outbox; the consumer then claims it there and records it done: per message, an
//! outbox insert and delete, an inbox insert and delete, and an `inbox_done` record. A pull
//! subscriber's message costs the publisher's insert only: the subscriber's transaction
//! runs the handlers of a batch and moves one cursor row. Its exactly-once effect comes
//! from that row: the cursor and the handler's writes commit together, so a batch is either
//! handled and passed or neither.
//!
//! - **The log's order.** Every outbox row carries the id of the transaction that wrote it
//!   (`tx`, an `xid8`) and a sequence number (`seq`); a subscriber reads in `(tx, seq)`
//!   order and only rows of transactions older than every transaction still running
//!   (`tx < pg_snapshot_xmin(pg_current_snapshot())`). Every row it has not read yet then
//!   sorts after its cursor: a transaction that commits late can never slip in behind it.
//!   The price: a *writing* transaction held open anywhere in the cluster holds delivery
//!   back until it ends (a read-only snapshot does not).
//! - **Partitions.** Each row falls in one of [`PARTS`] partitions, by a hash of its key
//!   (or, without a key, by its transaction, so that what one transaction publishes is read
//!   in one batch), and a subscriber keeps one cursor per partition.
//!   Parallel claim loops (of one process or many) claim partitions' cursors with
//!   `FOR UPDATE SKIP LOCKED`, so each partition is read by one loop at a time and
//!   messages with the same key are handled in publish order.
//! - **Failures** leave the log: a message whose handler fails is put into the
//!   subscriber's own inbox (pending with its backoff, or dead), in the transaction that
//!   moves the cursor past it, and the inbox's claim loops retry it like any other, with
//!   dead letters and replay as before.
//! - **Pruning.** The publisher cannot see the subscribers' databases, so each subscriber
//!   reports its committed cursors into the publisher's `conveyor.pull_positions` (its only
//!   write there) every second; the publisher's pruner deletes the rows of pulled topics
//!   that every subscriber pulling that topic has passed.
//!
//! A topic is delivered either by a relay or by pull, never both: the relay claims the
//! topics it routes, and the rows of topics nobody routes stay in the outbox for their
//! pull subscribers.

use std::sync::Mutex;

/// Partitions of a publisher's log (see the module docs): at most this many claim loops of
/// one subscriber read a publisher at once.
pub const PARTS: i16 = 16;

/// The partitions (`part`) whose log holds a row past the cursor this process knows of it,
/// and whether that row can be read yet (`ready`: its transaction is older than every one
/// still running; if not, nothing of the partition can be, and no notification will say
/// when it can), the partition whose next row is oldest first (loops serve them in that
/// order: close to one queue's order). `$2`, `$3`, `$4`: partitions, and their cursors' `tx`
/// (as bigint) and `seq`. Rows of every topic count: a subscriber's cursor moves past rows
/// of topics it does not handle. One index probe per partition.
macro_rules! parts_with_work {
    () => {
        "SELECT c.part, o.tx < pg_snapshot_xmin(pg_current_snapshot()) AS ready
FROM unnest($2::smallint[], $3::bigint[], $4::bigint[]) AS c(part, tx, seq)
CROSS JOIN LATERAL (
    SELECT o.tx FROM conveyor.outbox AS o
    WHERE o.part = c.part AND (o.tx, o.seq) > (c.tx::text::xid8, c.seq)
    ORDER BY o.tx, o.seq LIMIT 1) AS o
WHERE cardinality($1::text[]) >= 0
ORDER BY o.tx"
    };
}
pub(crate) use parts_with_work;

/// See [`parts_with_work`].
pub const PARTS_WITH_WORK: &str = parts_with_work!();

/// Reads one partition's log after a cursor (`$1`: partition; `$2`, `$3`: the cursor's tx
/// and seq; `$4`: the topics handled; `$5`: how many rows). Rows of other topics come back
/// without their payload, so the cursor can move past them.
pub const READ: &str = "\
SELECT message_id, topic, key,
       CASE WHEN topic = ANY($4) THEN payload ELSE 'null'::json END AS payload,
       CASE WHEN topic = ANY($4) THEN headers ELSE '{}'::json END AS headers,
       0 AS attempts, created_at AS published_at, tx::text::bigint AS tx, seq
FROM conveyor.outbox
WHERE part = $1 AND (tx, seq) > ($2::text::xid8, $3) AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, seq LIMIT $5";

/// The subscriber's cursors of one publisher, created at the start.
pub const ENSURE_CURSORS: &str = "\
INSERT INTO conveyor.pull_cursors (source, part) SELECT $1, p FROM generate_series(0, $2 - 1) AS p
ON CONFLICT (source, part) DO NOTHING";

/// Claims the first cursor of `$2` (partitions in the loop's order of preference) nobody
/// holds.
pub const CLAIM_CURSOR: &str = "\
SELECT part, tx::text::bigint AS tx, seq FROM conveyor.pull_cursors
WHERE source = $1 AND part = ANY($2)
ORDER BY array_position($2, part) LIMIT 1 FOR UPDATE SKIP LOCKED";

pub const ADVANCE: &str = "UPDATE conveyor.pull_cursors SET tx = $3::text::xid8, seq = $4 WHERE source = $1 AND part = $2";

/// The committed cursors of one publisher, for the report and the cache.
pub const CURSORS: &str = "SELECT part, tx::text::bigint AS tx, seq FROM conveyor.pull_cursors WHERE source = $1";

/// The subscriber's report into the publisher's database (`$1`: the subscriber; `$5`: the
/// topics it pulls).
pub const REPORT: &str = "\
INSERT INTO conveyor.pull_positions (subscriber, part, tx, seq, topics)
SELECT $1, c.part, c.tx::text::xid8, c.seq, $5 FROM unnest($2::smallint[], $3::bigint[], $4::bigint[]) AS c(part, tx, seq)
ON CONFLICT (subscriber, part) DO UPDATE SET tx = excluded.tx, seq = excluded.seq, topics = excluded.topics, reported_at = now()";

/// The publisher's pruning of pulled rows: up to `$1` rows of topics somebody pulls that
/// every subscriber pulling their topic has passed, oldest first. Returns how many.
pub const PRUNE: &str = "\
WITH batch AS (
    SELECT o.message_id FROM conveyor.outbox AS o
    WHERE EXISTS (SELECT 1 FROM conveyor.pull_positions AS p WHERE o.topic = ANY (p.topics))
      AND NOT EXISTS (SELECT 1 FROM conveyor.pull_positions AS p
                      WHERE o.topic = ANY (p.topics) AND p.part = o.part AND (o.tx, o.seq) > (p.tx, p.seq))
    ORDER BY o.message_id LIMIT $1),
gone AS (DELETE FROM conveyor.outbox WHERE message_id = ANY (ARRAY(SELECT message_id FROM batch)) RETURNING 1)
SELECT count(*) FROM gone";

/// Puts messages read from the log into the subscriber's inbox, in the transaction that
/// moves the cursor past them: those of lease-mode topics (claimable at once, no attempt
/// made: `$7`..`$10` false, 0, '', false), and those whose handler failed (pending until
/// their backoff ends, or dead; one attempt counted unless snoozed). Wakes the inbox's
/// idle loops like a relay's delivery.
pub const TO_INBOX: &str = concat!(
    "WITH ",
    crate::wake::wake_cte!("conveyor_inbox", 7165066987023786497),
    "
INSERT INTO conveyor.inbox (message_id, topic, key, payload, headers, published_at, state, attempts, visible_at, errors)
SELECT m.id, m.topic, m.key, m.payload::json, m.headers::json, m.published_at,
       CASE WHEN m.dead THEN 'dead' ELSE 'pending' END,
       CASE WHEN m.counted THEN 1 ELSE 0 END,
       now() + m.delay_ms * interval '1 millisecond',
       CASE WHEN m.counted THEN jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), 'error', m.error)) ELSE '[]'::jsonb END
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::bool[], $8::bigint[], $9::text[], $10::bool[])
     AS m(id, topic, key, payload, headers, published_at, dead, delay_ms, error, counted)
CROSS JOIN wake
ON CONFLICT (message_id) DO NOTHING"
);

/// Where this process last knew each partition's cursor of one publisher: what its own
/// loops committed, or read under a claim. Another process's progress makes it stale
/// (lower), which only costs a claim that finds less than it hoped.
pub(crate) struct Cursors {
    at: Mutex<Vec<(i64, i64)>>,
}

impl Default for Cursors {
    fn default() -> Self {
        Cursors { at: Mutex::new(vec![(0, 0); PARTS as usize]) }
    }
}

impl Cursors {
    /// Partitions, tx and seq as the arrays the statements take.
    pub fn arrays(&self) -> (Vec<i16>, Vec<i64>, Vec<i64>) {
        let at = self.at.lock().expect("cursors");
        ((0..PARTS).collect(), at.iter().map(|c| c.0).collect(), at.iter().map(|c| c.1).collect())
    }

    /// Records a cursor seen committed; never moves one back.
    pub fn saw(&self, part: i16, tx: i64, seq: i64) {
        let mut at = self.at.lock().expect("cursors");
        if let Some(c) = at.get_mut(part as usize)
            && (tx, seq) > *c
        {
            *c = (tx, seq);
        }
    }
}

/// Deletes the rows of pulled topics every subscriber has passed (see [`PRUNE`]), `batch`
/// rows per statement; returns how many.
pub async fn prune_pulled(pool: &sqlx::PgPool, batch: i64) -> Result<u64, crate::Error> {
    let mut total = 0;
    loop {
        let n: i64 = sqlx::query_scalar(PRUNE).bind(batch).fetch_one(pool).await?;
        total += n as u64;
        if n < batch {
            return Ok(total);
        }
    }
}
