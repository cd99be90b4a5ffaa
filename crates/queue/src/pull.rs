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
//!   order. Transactions do not commit in id order: normally a read takes only rows of
//!   transactions older than every one still running (`pg_snapshot_xmin`), so nothing can
//!   commit behind it later, and a loop that finds rows waiting behind a running
//!   transaction looks again within 1–10 ms. When the oldest running transaction stays the
//!   same for [`PASS_AFTER`] (a long report with a write, a migration, a held snapshot with
//!   an xid), reads pass it: the cursor then also holds the transactions below its position
//!   that were still running when it passed them (`pending`, from the read's own snapshot,
//!   `pg_snapshot_xip`); each later read also looks for their rows, and forgets one once it
//!   has ended and its rows are read. Such a transaction holds back nothing but its own
//!   rows, and costs each read one index probe (PgQ's batches between snapshots, with a
//!   cursor that can stop anywhere in a batch). Passing always would cost the common case:
//!   every read would carry the short transactions in flight (a third of the throughput at
//!   batch 1 in `bench peers`).
//! - **Partitions.** Each row falls in one of [`PARTS`] partitions, by a hash of its key
//!   (or, without a key, by its transaction, so that what one transaction publishes is read
//!   in one batch), and a subscriber keeps one cursor per partition.
//!   Parallel claim loops (of one process or many) claim partitions' cursors with
//!   `FOR UPDATE SKIP LOCKED`, so each partition is read by one loop at a time and
//!   messages with the same key are handled in the order their transactions began (but a
//!   message that fails, or one whose transaction a read passed, can come later).
//! - **Cursor rows.** A cursor moves by a new row: each move deletes its partition's row of
//!   generation `gen` and inserts `gen + 1`, and a claim locks the newest generation
//!   found by one backward index probe. An update in place would keep every version
//!   written while the xmin horizon is held, and each claim would walk them to the live
//!   one (measured: 3 → 3,261 buffers per claim after two minutes of a held snapshot at
//!   800 msgs/s, with p99 growing alongside). Old generations' index entries stay too, so
//!   every lookup is bounded below by the generation the process last knew of the
//!   partition (it only ever grows: a generation is replaced, never reused): a plan
//!   can then only visit the generations written since, whichever the planner picks
//!   (after an ANALYZE it saw one live row per partition and chose a bitmap scan and a
//!   sort: 5,462 entries per claim, 1,459 buffers). One process per source knows the
//!   newest; a second one's knowledge is at most a report interval old.
//! - **Failures** leave the log: a message whose handler fails is put into the
//!   subscriber's own inbox (pending with its backoff, or dead), in the transaction that
//!   moves the cursor past it, and the inbox's claim loops retry it like any other, with
//!   dead letters and replay as before.
//! - **Pruning.** The publisher cannot see the subscribers' databases, so each subscriber
//!   reports its committed cursors into the publisher's `conveyor.pull_positions` (its only
//!   write there) every second; the publisher's pruner deletes the rows of pulled topics
//!   that every subscriber pulling that topic has passed. A publisher registers the
//!   subscribers its routes name before they report ([`expect_pullers`]), so that none
//!   finds its topics pruned because it started last.
//!
//! A topic is delivered either by a relay or by pull, never both: the relay claims the
//! topics it routes, and the rows of topics nobody routes stay in the outbox for their
//! pull subscribers.

use std::sync::Mutex;

/// Partitions of a publisher's log (see the module docs): at most this many claim loops of
/// one subscriber read a publisher at once.
pub const PARTS: i16 = 16;

/// How long the oldest running transaction must stay the oldest before reads pass it.
pub const PASS_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// The oldest running transaction as a process last saw it, since when, and whether reads
/// pass it.
#[derive(Default)]
pub(crate) struct Horizon {
    seen: Mutex<(Option<(i64, std::time::Instant)>, bool)>,
}

impl Horizon {
    /// Whether reads pass the oldest running transaction, as the last look (see
    /// [`Horizon::pass`]) decided.
    pub fn passing(&self) -> bool {
        self.seen.lock().expect("horizon").1
    }

    /// Records `xmin` as seen now; true when it has been the oldest for [`PASS_AFTER`].
    pub fn pass(&self, xmin: i64) -> bool {
        let mut seen = self.seen.lock().expect("horizon");
        let pass = match seen.0 {
            Some((x, since)) if x == xmin => since.elapsed() >= PASS_AFTER,
            _ => {
                seen.0 = Some((xmin, std::time::Instant::now()));
                false
            }
        };
        seen.1 = pass;
        pass
    }
}

/// The partitions (`part`) with a row past the cursor this process knows of them, or a
/// row of one of their pending transactions, the partition whose next row is oldest first
/// (loops serve them in that order: close to one queue's order); whether that row can be
/// read without passing a running transaction (`ready`: it is older than every running
/// one, or it is a pending transaction's); and the oldest running transaction (`xmin`).
/// `$2`, `$3`, `$4`: partitions and their cursors' `tx` (as bigint) and `seq`; `$5`, `$6`,
/// `$7`: the pending transactions (partition, tx, the seq after which their rows remain).
/// Rows of every topic count: a subscriber's cursor moves past rows of topics it does not
/// handle. An index probe per partition and per pending transaction (LATERAL, so that no
/// plan walks a whole partition: under a held horizon a partition's index keeps every
/// pruned row's entry).
macro_rules! parts_with_work {
    () => {
        "SELECT c.part, h.pending IS NOT NULL OR h.head < pg_snapshot_xmin(pg_current_snapshot()) AS ready,
       pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
FROM unnest($2::smallint[], $3::bigint[], $4::bigint[]) AS c(part, tx, seq)
CROSS JOIN LATERAL (SELECT
    (SELECT o.tx FROM conveyor.outbox AS o
     WHERE o.part = c.part AND (o.tx, o.seq) > (c.tx::text::xid8, c.seq) ORDER BY o.tx, o.seq LIMIT 1) AS head,
    (SELECT min(f.tx) FROM unnest($5::smallint[], $6::bigint[], $7::bigint[]) AS p(part, tx, seq)
     CROSS JOIN LATERAL (
         SELECT o.tx FROM conveyor.outbox AS o
         WHERE o.part = p.part AND o.tx = p.tx::text::xid8 AND o.seq > p.seq LIMIT 1) AS f
     WHERE p.part = c.part) AS pending) AS h
WHERE (h.head IS NOT NULL OR h.pending IS NOT NULL) AND cardinality($1::text[]) >= 0
ORDER BY least(h.head, h.pending)"
    };
}
pub(crate) use parts_with_work;

/// See [`parts_with_work`].
pub const PARTS_WITH_WORK: &str = parts_with_work!();

/// Reads one partition's log after a cursor: the remaining rows of its pending transactions
/// (`$4`, `$5`: their tx and the seq after which), then the rows past its position (`$2`,
/// `$3`) of transactions older than every running one, or (`$8`: passing) of every
/// committed one, in `(tx, seq)` order, `$7` at most. Rows of topics other than `$6` come back
/// without their payload, so the cursor can move past them. Each row carries the
/// transactions running at the read's snapshot (`xip`), for the next cursor's pending.
/// Only committed rows are visible to a read: those of running transactions are the ones
/// the cursor must come back for.
pub const READ: &str = "\
WITH r AS (
    SELECT * FROM (
        (SELECT o.* FROM unnest($4::bigint[], $5::bigint[]) AS p(tx, seq)
         CROSS JOIN LATERAL (
             SELECT o.message_id, o.topic, o.key, o.payload, o.headers, o.created_at, o.tx, o.seq
             FROM conveyor.outbox AS o
             WHERE o.part = $1 AND o.tx = p.tx::text::xid8 AND o.seq > p.seq
             ORDER BY o.seq LIMIT $7) AS o
         ORDER BY o.tx, o.seq LIMIT $7)
        UNION ALL
        (SELECT o.message_id, o.topic, o.key, o.payload, o.headers, o.created_at, o.tx, o.seq
         FROM conveyor.outbox AS o
         WHERE o.part = $1 AND (o.tx, o.seq) > ($2::text::xid8, $3)
           AND ($8 OR o.tx < pg_snapshot_xmin(pg_current_snapshot()))
         ORDER BY o.tx, o.seq LIMIT $7)) AS u
    ORDER BY tx, seq LIMIT $7)
SELECT message_id, topic, key,
       CASE WHEN topic = ANY($6) THEN payload ELSE 'null'::json END AS payload,
       CASE WHEN topic = ANY($6) THEN headers ELSE '{}'::json END AS headers,
       0 AS attempts, created_at AS published_at, tx::text::bigint AS tx, seq,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS xip
FROM r ORDER BY tx, seq";

/// [`READ`] for the common case: a cursor with no pending transaction that does not pass
/// the oldest running one (`$1`..`$3`, `$6`, `$7` as there); no `xip`, since no new pending
/// transaction can come of it (every running one is above what it reads).
pub const READ_BELOW_HORIZON: &str = "\
SELECT message_id, topic, key,
       CASE WHEN topic = ANY($4) THEN payload ELSE 'null'::json END AS payload,
       CASE WHEN topic = ANY($4) THEN headers ELSE '{}'::json END AS headers,
       0 AS attempts, created_at AS published_at, tx::text::bigint AS tx, seq, '{}'::bigint[] AS xip
FROM conveyor.outbox
WHERE part = $1 AND (tx, seq) > ($2::text::xid8, $3) AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, seq LIMIT $5";

/// The subscriber's cursors of one publisher, created at the start (generation 0 of each
/// partition that has none yet).
pub const ENSURE_CURSORS: &str = "\
INSERT INTO conveyor.pull_cursors (source, part)
SELECT $1, p FROM generate_series(0, $2 - 1) AS p
WHERE NOT EXISTS (SELECT 1 FROM conveyor.pull_cursors AS c WHERE c.source = $1 AND c.part = p)
ON CONFLICT DO NOTHING";

/// Claims the first cursor of `$2` (partitions in the loop's order of preference) nobody
/// holds, locked with `SKIP LOCKED`: the newest generation of each, looked for at or
/// above the generation this process last knew of it (`$3`, one per partition; see
/// "Cursor rows" in the module docs). A generation another loop has just replaced cannot
/// be locked (the row is gone), so the claim skips it rather than return a stale
/// position. One LATERAL probe per partition, in the list's order, until one is locked: a
/// join would let the planner hash every generation of the source (it did, at 37,302
/// index entries for 16 live rows), and a sort above the locks would lock them all.
pub const CLAIM_CURSOR: &str = "\
SELECT c.part, c.gen, c.tx::text::bigint AS tx, c.seq, c.pending_tx, c.pending_seq
FROM unnest($2::smallint[], $3::bigint[]) AS l(part, known)
CROSS JOIN LATERAL (
    SELECT * FROM conveyor.pull_cursors AS c
    WHERE c.source = $1 AND c.part = l.part
      AND c.gen = (SELECT g.gen FROM conveyor.pull_cursors AS g
                   WHERE g.source = $1 AND g.part = l.part AND g.gen >= l.known ORDER BY g.gen DESC LIMIT 1)
    LIMIT 1 FOR UPDATE SKIP LOCKED) AS c
LIMIT 1";

/// Moves a claimed cursor (`$1`, `$2`, of generation `$3`) to `$4`..`$7`: the next
/// generation replaces it.
pub const ADVANCE: &str = "\
WITH gone AS (DELETE FROM conveyor.pull_cursors WHERE source = $1 AND part = $2 AND gen = $3)
INSERT INTO conveyor.pull_cursors (source, part, gen, tx, seq, pending_tx, pending_seq)
VALUES ($1, $2, $3 + 1, $4::text::xid8, $5, $6, $7)";

/// The committed cursors of one publisher (the newest generation of each partition `$2`,
/// at or above `$3`, the generation this process knew), for the report and the cache.
pub const CURSORS: &str = "\
SELECT c.part, c.gen, c.tx::text::bigint AS tx, c.seq, c.pending_tx, c.pending_seq
FROM unnest($2::smallint[], $3::bigint[]) AS l(part, known)
CROSS JOIN LATERAL (SELECT * FROM conveyor.pull_cursors AS c
                    WHERE c.source = $1 AND c.part = l.part AND c.gen >= l.known ORDER BY c.gen DESC LIMIT 1) AS c";

/// The subscriber's report into the publisher's database (`$1`: the subscriber; `$2`..`$4`:
/// partitions, positions; `$5`: each partition's pending transactions, as text arrays
/// (`'{1,2}'`, since arrays of arrays must be rectangular); `$6`: the topics it pulls).
pub const REPORT: &str = "\
INSERT INTO conveyor.pull_positions (subscriber, part, tx, seq, pending_tx, topics)
SELECT $1, c.part, c.tx::text::xid8, c.seq, c.pending::bigint[], $6
FROM unnest($2::smallint[], $3::bigint[], $4::bigint[], $5::text[]) AS c(part, tx, seq, pending)
ON CONFLICT (subscriber, part) DO UPDATE
SET tx = excluded.tx, seq = excluded.seq, pending_tx = excluded.pending_tx, topics = excluded.topics, reported_at = now()";

/// Whether the outbox row `o` has been pulled by everyone who pulls it: somebody pulls
/// its topic (a reported or expected position lists it), and every such position of its
/// partition is at or past it and waits for nothing of its transaction. Such a row waits
/// for the pruner only, so the depth gauges and the audit do not count it.
macro_rules! passed {
    () => {
        "(EXISTS (SELECT 1 FROM conveyor.pull_positions AS p WHERE o.topic = ANY (p.topics))
  AND NOT EXISTS (SELECT 1 FROM conveyor.pull_positions AS p
                  WHERE o.topic = ANY (p.topics) AND p.part = o.part
                    AND ((o.tx, o.seq) > (p.tx, p.seq) OR o.tx::text::bigint = ANY (p.pending_tx))))"
    };
}
pub(crate) use passed;

/// See [`passed`]: a condition on an outbox row aliased `o`.
pub const PASSED: &str = passed!();

/// The publisher's pruning of pulled rows: up to `$1` rows after `$2` (a message id) that
/// everyone who pulls them has passed ([`PASSED`]), oldest first. Returns how many it
/// deleted and the last id it deleted (NULL: none), where the next batch resumes: under a
/// held horizon the key's start keeps the entries of every row pruned since, and walking
/// them again for every batch grew the soak's latency with the hold's age.
pub const PRUNE: &str = concat!(
    "WITH batch AS (
    SELECT o.message_id FROM conveyor.outbox AS o
    WHERE o.message_id > $2 AND ",
    passed!(),
    "
    ORDER BY o.message_id LIMIT $1),
gone AS (DELETE FROM conveyor.outbox WHERE message_id = ANY (ARRAY(SELECT message_id FROM batch)) RETURNING message_id)
SELECT (SELECT count(*) FROM gone), (SELECT message_id FROM gone ORDER BY message_id DESC LIMIT 1)"
);

/// The publisher's expected pull subscribers (`$1`, `$2`: subscriber and topic routed to
/// it, one pair per route): a position before everything in each partition, unless they
/// have one already, in which case only the topics are added. Until a subscriber has
/// reported, the pruner then keeps every row of its topics (see [`expect_pullers`]).
pub const EXPECT: &str = "\
INSERT INTO conveyor.pull_positions (subscriber, part, tx, seq, topics)
SELECT s.subscriber, p, '0', 0, s.topics
FROM (SELECT subscriber, array_agg(topic ORDER BY topic) AS topics FROM unnest($1::text[], $2::text[]) AS r(subscriber, topic) GROUP BY subscriber) AS s
CROSS JOIN generate_series(0, $3 - 1) AS p
ON CONFLICT (subscriber, part) DO UPDATE
SET topics = ARRAY(SELECT DISTINCT t FROM unnest(pull_positions.topics || excluded.topics) AS t ORDER BY t)";

/// Registers the subscribers `routes` names as pulling their topics from this (the
/// publisher's) database, before they have read anything: the pruner deletes a pulled
/// row once every subscriber *known* to pull its topic has passed it, so a subscriber
/// that had not started yet would otherwise find the rows of its topics gone, pruned
/// after the others passed them. A publisher's worker runs this at its start (a
/// replication slot is made before its consumer connects, for the same reason).
pub async fn expect_pullers(pool: &sqlx::PgPool, routes: &crate::Routes) -> Result<(), crate::Error> {
    let (subscribers, topics): (Vec<&str>, Vec<&str>) = routes.topics().flat_map(|t| routes.subscribers(t).iter().map(move |s| (s.as_str(), t))).unzip();
    if subscribers.is_empty() {
        return Ok(());
    }
    sqlx::query(EXPECT).bind(subscribers).bind(topics).bind(i32::from(PARTS)).execute(pool).await?;
    Ok(())
}

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

/// A partition's cursor: every row up to `(tx, seq)` is handled, but those of the
/// transactions in `pending` (tx, and the seq after which its rows remain), which were still
/// running when the cursor passed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub tx: i64,
    pub seq: i64,
    pub pending: Vec<(i64, i64)>,
}

impl Cursor {
    pub fn new(tx: i64, seq: i64, pending_tx: &[i64], pending_seq: &[i64]) -> Self {
        Cursor { tx, seq, pending: pending_tx.iter().copied().zip(pending_seq.iter().copied()).collect() }
    }

    /// The cursor after a read from this one (see [`READ`]) that returned `rows` (their
    /// `(tx, seq)`, in order; `limit` at most) at a snapshot where the transactions `xip`
    /// were running.
    pub fn after(&self, rows: &[(i64, i64)], limit: usize, xip: &[i64]) -> Cursor {
        let cut = rows.len() >= limit;
        let last = rows.last().copied();
        let mut pending = Vec::new();
        for &(t, s) in &self.pending {
            match last {
                // The read stopped inside this transaction's rows: the rest remain.
                Some((lt, ls)) if cut && lt == t => pending.push((t, ls)),
                // It stopped before reaching them.
                Some((lt, _)) if cut && lt < t => pending.push((t, s)),
                // Every visible row of it was read: done once it has ended (a running
                // transaction's rows are not visible).
                _ if xip.contains(&t) => pending.push((t, s)),
                _ => {}
            }
        }
        let (mut tx, mut seq) = (self.tx, self.seq);
        if let Some(l) = last
            && l > (tx, seq)
        {
            (tx, seq) = l;
        }
        // Transactions running below the new position: their rows were not visible.
        for &x in xip {
            if x < tx && !pending.iter().any(|p| p.0 == x) {
                pending.push((x, 0));
            }
        }
        pending.sort_unstable();
        Cursor { tx, seq, pending }
    }

    pub fn pending_tx(&self) -> Vec<i64> {
        self.pending.iter().map(|p| p.0).collect()
    }

    pub fn pending_seq(&self) -> Vec<i64> {
        self.pending.iter().map(|p| p.1).collect()
    }
}

/// Where this process last knew each partition's cursor of one publisher: what its own
/// loops committed, or read under a claim. Another process's progress makes it stale
/// (behind), which only costs a claim that finds less than it hoped.
pub(crate) struct Cursors {
    /// Each partition's cursor and its row's generation.
    at: Mutex<Vec<(Cursor, i64)>>,
}

impl Default for Cursors {
    fn default() -> Self {
        Cursors { at: Mutex::new(vec![(Cursor::default(), 0); PARTS as usize]) }
    }
}

/// The arrays [`PARTS_WITH_WORK`] takes: partitions and positions, then the pending
/// transactions' partitions, tx and seq.
pub(crate) type CursorArrays = (Vec<i16>, Vec<i64>, Vec<i64>, Vec<i16>, Vec<i64>, Vec<i64>);

impl Cursors {
    pub fn arrays(&self) -> CursorArrays {
        let at = self.at.lock().expect("cursors");
        let mut a: CursorArrays = Default::default();
        for (part, (c, _)) in at.iter().enumerate() {
            a.0.push(part as i16);
            a.1.push(c.tx);
            a.2.push(c.seq);
            for &(t, s) in &c.pending {
                a.3.push(part as i16);
                a.4.push(t);
                a.5.push(s);
            }
        }
        a
    }

    /// Records a cursor seen committed (or locked) at `generation`; never goes back to an
    /// older one.
    pub fn saw(&self, part: i16, cursor: &Cursor, generation: i64) {
        let mut at = self.at.lock().expect("cursors");
        if let Some(c) = at.get_mut(part as usize)
            && generation >= c.1
        {
            *c = (cursor.clone(), generation);
        }
    }

    /// The generation this process last knew of each partition of `parts`.
    pub fn generations(&self, parts: &[i16]) -> Vec<i64> {
        let at = self.at.lock().expect("cursors");
        parts.iter().map(|&p| at.get(p as usize).map_or(0, |c| c.1)).collect()
    }
}

/// Deletes the rows of pulled topics every subscriber has passed (see [`PRUNE`]), `batch`
/// rows per statement, each batch after the last; returns how many.
pub async fn prune_pulled(pool: &sqlx::PgPool, batch: i64) -> Result<u64, crate::Error> {
    let (mut total, mut after) = (0, uuid::Uuid::nil());
    loop {
        let (n, last): (i64, Option<uuid::Uuid>) = sqlx::query_as(PRUNE).bind(batch).bind(after).fetch_one(pool).await?;
        total += n as u64;
        match last {
            Some(last) if n >= batch => after = last,
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    fn cursor(tx: i64, seq: i64, pending: &[(i64, i64)]) -> Cursor {
        Cursor { tx, seq, pending: pending.to_vec() }
    }

    #[test]
    fn a_transaction_running_below_the_new_position_becomes_pending() {
        // Read rows of 10 and 12 while 11 and 13 run; 13 is above the position: read later.
        let c = cursor(5, 3, &[]).after(&[(10, 1), (12, 2)], 100, &[11, 13]);
        assert_eq!(c, cursor(12, 2, &[(11, 0)]));
    }

    #[test]
    fn a_pending_transaction_is_dropped_once_ended_and_read_and_kept_while_running() {
        let c = cursor(12, 2, &[(11, 0), (9, 0)]);
        // 11 committed (its row read), 9 still runs.
        assert_eq!(c.after(&[(11, 7)], 100, &[9]), cursor(12, 2, &[(9, 0)]));
        // 9 aborted (no rows) and nothing new: both done.
        assert_eq!(c.after(&[], 100, &[]), cursor(12, 2, &[]));
    }

    #[test]
    fn a_read_cut_inside_a_pending_transaction_keeps_the_rest_of_it() {
        let c = cursor(12, 2, &[(9, 0), (11, 0)]);
        // The limit (2) was reached inside 9's rows: 9 resumes after seq 5, 11 not reached.
        assert_eq!(c.after(&[(9, 4), (9, 5)], 2, &[]), cursor(12, 2, &[(9, 5), (11, 0)]));
        // Reached 11 and past it: both read.
        assert_eq!(c.after(&[(9, 4), (11, 1), (13, 1)], 3, &[]), cursor(13, 1, &[]));
    }

    #[test]
    fn a_cut_read_keeps_what_it_did_not_reach() {
        // Stopped at (9, 5), below pending 11: 11 stays whatever its state.
        assert_eq!(cursor(12, 2, &[(11, 0)]).after(&[(9, 5)], 1, &[]), cursor(12, 2, &[(11, 0)]));
    }
}
