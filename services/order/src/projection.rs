//! The read side: projections of the event store into tables shaped for reads, kept by the
//! order worker ([`run`]) and rebuilt from the store while the shop runs ([`rebuild`]).
//!
//! A projection reads the store by position, `(tx, seq)`: the appending transaction's id,
//! then the order of appends. It reads only events of transactions older than every one
//! still running (`pg_snapshot_xmin`), so an append that commits after later ones is never
//! skipped, and it keeps its position (`projections`) in the transaction that writes what it
//! read: each event is applied once, and a projector killed mid-batch leaves nothing half
//! done. Views are whole: each batch re-reads the streams of the orders it touches and writes
//! their views from scratch ([`OrderView::from_stream`]), so applying is idempotent, and
//! a rebuild is the same code run from position zero into a fresh table.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// Table names in dynamic SQL come from this module's constants, never from input.
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::stream::{self, StoredEvent};
use crate::views::OrderView;

/// A projection: where it keeps its position, the table it writes, and how a view is made
/// from a stream.
#[derive(Clone, Copy)]
pub struct Projection {
    pub name: &'static str,
    pub table: &'static str,
    pub view: fn(&[StoredEvent]) -> Option<OrderView>,
}

/// Customers' orders with their timelines: what GET /orders/{id} and
/// GET /customers/{id}/orders answer from.
pub const ORDER_VIEWS: Projection = Projection { name: "order_views", table: "order_views", view: OrderView::from_stream };

/// Where a rebuild of `p` writes before it is swapped in.
fn rebuilding(p: &Projection) -> Projection {
    Projection { name: REBUILD_NAME, table: REBUILD_TABLE, view: p.view }
}
const REBUILD_NAME: &str = "order_views_rebuild";
const REBUILD_TABLE: &str = "order_views_rebuild";

/// Events after a position, oldest first, of transactions no longer running.
/// (Ordered by the table's columns, not the bigint output: the `(tx, seq)` index gives the
/// order, no sort.)
pub const NEXT_EVENTS: &str = "SELECT e.order_id, e.tx::text::bigint, e.seq FROM order_events e
     WHERE (e.tx, e.seq) > ($1::text::xid8, $2) AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx, e.seq LIMIT $3";

/// How far a projection is behind: events not applied yet, and the age of the oldest.
pub const LAG: &str = "SELECT count(*), coalesce(extract(epoch FROM now() - min(e.at))::float8, 0) FROM (
         SELECT at FROM order_events e, projections p
         WHERE p.name = $1 AND (e.tx, e.seq) > (p.tx, p.seq) ORDER BY e.tx, e.seq LIMIT 1000000) e";

/// A projection's position, locked for the batch (`SKIP LOCKED`: another projector has it).
pub const POSITION: &str = "SELECT tx::text::bigint, seq FROM projections WHERE name = $1 FOR UPDATE";
pub const POSITION_SKIP_LOCKED: &str = "SELECT tx::text::bigint, seq FROM projections WHERE name = $1 FOR UPDATE SKIP LOCKED";
/// Moves a projection's position to the last event of its batch.
pub const ADVANCE: &str = "UPDATE projections SET tx = $2::text::xid8, seq = $3, updated_at = now() WHERE name = $1";
/// Writes whole views (the table is the projection's: `order_views` or a rebuild's).
pub const UPSERT_VIEWS: &str = "INSERT INTO order_views (id, customer_id, status, version, view)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::jsonb[])
     ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, status = excluded.status, version = excluded.version, view = excluded.view";

/// Applies up to `batch` events after `p`'s position, in the caller's transaction; returns
/// how many. Waits for another projector of `p` holding the position, unless `skip_locked`,
/// then it returns `None`.
async fn apply_batch(conn: &mut PgConnection, p: &Projection, batch: i64, skip_locked: bool) -> sqlx::Result<Option<usize>> {
    let position: Option<(i64, i64)> = sqlx::query_as(if skip_locked { POSITION_SKIP_LOCKED } else { POSITION })
        .bind(p.name)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((tx, seq)) = position else { return Ok(None) };
    let events: Vec<(Uuid, i64, i64)> = sqlx::query_as(NEXT_EVENTS).bind(tx.to_string()).bind(seq).bind(batch).fetch_all(&mut *conn).await?;
    let Some(&(_, last_tx, last_seq)) = events.last() else { return Ok(Some(0)) };
    let orders: Vec<Uuid> = events.iter().map(|e| e.0).collect::<BTreeSet<_>>().into_iter().collect();
    let streams = stream::load(conn, &orders).await?;
    let views: Vec<OrderView> = streams.values().filter_map(|s| (p.view)(s)).collect();
    sqlx::query(AssertSqlSafe(UPSERT_VIEWS.replacen("order_views", p.table, 1)))
        .bind(views.iter().map(|v| v.id).collect::<Vec<_>>())
        .bind(views.iter().map(|v| v.customer_id).collect::<Vec<_>>())
        .bind(views.iter().map(|v| v.status.as_str()).collect::<Vec<_>>())
        .bind(views.iter().map(|v| v.version).collect::<Vec<_>>())
        .bind(views.iter().map(Json).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    sqlx::query(ADVANCE)
        .bind(p.name)
        .bind(last_tx.to_string())
        .bind(last_seq)
        .execute(&mut *conn)
        .await?;
    metrics::counter!("conveyor_projection_events_applied_total", "projection" => p.name).increment(events.len() as u64);
    Ok(Some(events.len()))
}

/// [`apply_batch`] in a transaction of its own on `conn`, committed.
async fn apply_committed(conn: &mut PgConnection, p: &Projection, batch: i64, skip_locked: bool) -> sqlx::Result<Option<usize>> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let applied = apply_batch(&mut tx, p, batch, skip_locked).await?;
    tx.commit().await?;
    Ok(applied)
}

/// One batch of `p` in its own transaction; `None` if another projector holds it.
pub async fn project_once(pool: &PgPool, p: &Projection, batch: i64) -> sqlx::Result<Option<usize>> {
    apply_committed(&mut *pool.acquire().await?, p, batch, true).await
}

/// Whether events visible in the snapshot `$2` are still to be applied by projection `$1`.
const PENDING_IN: &str = "SELECT EXISTS (SELECT 1 FROM order_events e, projections p
     WHERE p.name = $1 AND (e.tx, e.seq) > (p.tx, p.seq) AND pg_visible_in_snapshot(e.tx, $2::text::pg_snapshot))";

/// Applies batches of `p` until every event committed before the call is applied (for
/// tests and tools); returns how many events it applied. An event is applied only once
/// every transaction older than its own has ended, anywhere in the cluster, so this waits
/// for those (a few milliseconds, unless a transaction stays open).
pub async fn catch_up(pool: &PgPool, p: &Projection) -> sqlx::Result<usize> {
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(pool).await?;
    let mut conn = pool.acquire().await?;
    let mut total = 0;
    loop {
        let n = apply_committed(&mut conn, p, 1000, false).await?.unwrap_or(0);
        total += n;
        if n > 0 {
            continue;
        }
        if !sqlx::query_scalar::<_, bool>(PENDING_IN).bind(p.name).bind(&snapshot).fetch_one(&mut *conn).await? {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How far `p` is behind the store: (events not applied, seconds since the oldest of them
/// was appended).
pub async fn lag(pool: &PgPool, p: &Projection) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(LAG).bind(p.name).fetch_one(pool).await
}

/// Keeps `p` up to date until `shutdown`: a batch right after a full one, a short pause
/// after a partial one while events keep coming, a longer one when the store is quiet.
/// Sets `conveyor_projection_lag_events` and `…_lag_seconds` every second. Several workers
/// may run it: one applies at a time, the others skip.
pub async fn run(pool: PgPool, p: Projection, shutdown: CancellationToken) -> anyhow::Result<()> {
    const BATCH: i64 = 500;
    // Every series exists from the start, so rates and alerts see the first events.
    metrics::counter!("conveyor_projection_events_applied_total", "projection" => p.name).increment(0);
    metrics::counter!("conveyor_projection_rebuilds_total", "projection" => p.name).increment(0);
    let (mut last_work, mut last_lag) = (Instant::now(), Instant::now() - Duration::from_secs(2));
    loop {
        let pause = match project_once(&pool, &p, BATCH).await {
            Ok(Some(n)) if n as i64 == BATCH => Duration::ZERO,
            Ok(Some(n)) if n > 0 => {
                last_work = Instant::now();
                Duration::from_millis(10)
            }
            Ok(_) if last_work.elapsed() < Duration::from_secs(5) => Duration::from_millis(10),
            Ok(_) => Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(projection = p.name, error = %e, "projection batch failed; trying again in a second");
                Duration::from_secs(1)
            }
        };
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            match lag(&pool, &p).await {
                Ok((events, seconds)) => {
                    metrics::gauge!("conveyor_projection_lag_events", "projection" => p.name).set(events as f64);
                    metrics::gauge!("conveyor_projection_oldest_unapplied_age_seconds", "projection" => p.name).set(seconds);
                }
                Err(e) => tracing::warn!(projection = p.name, error = %e, "reading the projection's lag failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rebuilt {
    pub projection: &'static str,
    /// Events replayed into the fresh table.
    pub events: usize,
    /// Views in the table swapped in.
    pub views: i64,
    pub seconds: f64,
}

/// Rebuilds `p` from the whole event store while the shop runs: replays every event into a
/// fresh table, then, holding `p`'s position (its projector waits), swaps the fresh table in
/// with the rebuild's position. Events appended meanwhile are applied by the projector from
/// there. Runs as the role that owns `p`'s table (`SET ROLE`; connect as it, or as a member
/// of it such as a superuser): the fresh table is that role's, as the migrations that may
/// alter it later need, and gets the live table's grants, so the runtime role reads and
/// writes it as before. The projector's and the APIs' prepared statements follow the new
/// table (PostgreSQL re-plans them by name after DDL).
pub async fn rebuild(pool: &PgPool, p: &Projection) -> anyhow::Result<Rebuilt> {
    use sqlx::Connection;
    let started = Instant::now();
    let fresh = rebuilding(p);
    // A connection of its own: its role is changed for the rebuild, and it is closed after.
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let owner: String = sqlx::query_scalar("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::regclass")
        .bind(p.table)
        .fetch_one(&mut conn)
        .await?;
    let grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
         FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::regclass AND a.grantee <> c.relowner",
    )
    .bind(p.table)
    .fetch_all(&mut conn)
    .await?;
    let mut setup = vec![
        format!("SET ROLE {}", conveyor_queue::quote_ident(&owner)),
        format!("DROP TABLE IF EXISTS {}", fresh.table),
        format!("CREATE TABLE {} (LIKE {} INCLUDING ALL)", fresh.table, p.table),
    ];
    setup.extend(grants.iter().map(|(privilege, grantee)| format!("GRANT {privilege} ON {} TO {grantee}", fresh.table)));
    setup.push(format!("DELETE FROM projections WHERE name = '{}'", fresh.name));
    setup.push(format!("INSERT INTO projections (name) VALUES ('{}')", fresh.name));
    for sql in setup {
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    let mut events = 0;
    loop {
        let n = apply_committed(&mut conn, &fresh, 5000, false).await?.unwrap_or(0);
        events += n;
        if n < 100 {
            break;
        }
    }
    let mut tx = conn.begin().await?;
    sqlx::query(POSITION).bind(p.name).execute(&mut *tx).await?;
    events += apply_batch(&mut tx, &fresh, 5000, false).await?.unwrap_or(0);
    let old = format!("{}_old", p.table);
    for sql in [
        format!("ALTER TABLE {} RENAME TO {old}", p.table),
        format!("ALTER TABLE {} RENAME TO {}", fresh.table, p.table),
        format!("DROP TABLE {old}"),
    ] {
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    sqlx::query(
        "UPDATE projections p SET tx = r.tx, seq = r.seq, updated_at = now() FROM projections r WHERE p.name = $1 AND r.name = $2",
    )
    .bind(p.name)
    .bind(fresh.name)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM projections WHERE name = $1").bind(fresh.name).execute(&mut *tx).await?;
    let views: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", p.table))).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    conn.close().await?;
    metrics::counter!("conveyor_projection_rebuilds_total", "projection" => p.name).increment(1);
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(projection = p.name, events, views, seconds, "projection rebuilt and swapped in");
    Ok(Rebuilt { projection: p.name, events, views, seconds })
}
