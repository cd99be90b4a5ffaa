//! Ours under soak, as a publishing and a subscribing service's workers run it: producers
//! publish into the outbox of database `soak_pub`; the relay moves the messages into the
//! inbox of `soak_sub`; transaction-mode consumers handle them and mark them done; the
//! pruner deletes done rows after the window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use conveyor_benches::{BenchEvent, fresh_db};
use conveyor_queue::{Consumer, ConsumerOptions, Event, Outgoing, Pruner, Relay, RelayOptions, Routes, handler_fn, publish_all};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use super::load::{self, Load, SENT_HEADER, Sink};
use super::probe::{Probe, ProbeKind};
use super::system::{ClaimIndex, Db, Started, System, Watched};
use super::{Settings, stats};

pub const PUBLISHER_DB: &str = "soak_pub";
pub const SUBSCRIBER_DB: &str = "soak_sub";

/// Fresh databases, the engine running on them, one sink per producer.
pub async fn start(admin_url: &str, cfg: &Settings, poll_interval: Duration, load: &Arc<Load>) -> Result<Started> {
    let conns = |n: usize| n as u32 + 4;
    let publisher = fresh_db(admin_url, PUBLISHER_DB, conns(cfg.producers + cfg.relays))
        .await
        .context("creating database soak_pub (the publisher, with the outbox)")?;
    let subscriber = fresh_db(admin_url, SUBSCRIBER_DB, conns(cfg.consumers + cfg.relays))
        .await
        .context("creating database soak_sub (the subscriber, with the inbox)")?;
    let mut dbs = Vec::new();
    for name in [PUBLISHER_DB, SUBSCRIBER_DB] {
        let url = conveyor_devpg::with_database(admin_url, name);
        dbs.push(Db { name: name.into(), stats: stats::pool(&url).await?, url });
    }

    if cfg.pull {
        return start_pulled(cfg, poll_interval, load, publisher, subscriber, dbs);
    }
    let stop = CancellationToken::new();
    let relay = Relay::new(
        publisher.clone(),
        Routes::new().route(BenchEvent::TOPIC, ["sub"]),
        HashMap::from([("sub".to_owned(), subscriber.clone())]),
    )?
    .with_options(RelayOptions { batch_size: cfg.relay_batch, concurrency: cfg.relays, poll_interval });
    let consumer = Consumer::new(subscriber.clone())
        .named("soak")
        .with_options(ConsumerOptions { concurrency: cfg.consumers, batch_size: cfg.consumer_batch, poll_interval, ..Default::default() })
        .subscribe(handler_fn(load::handler(load.clone())));
    let mut pruner = Pruner::new(subscriber.clone());
    pruner.window = Duration::from_secs_f64(cfg.prune_window_s);
    pruner.interval = Duration::from_secs_f64(cfg.prune_interval_s);
    pruner.batch = cfg.prune_batch;
    let s = stop.clone();
    let mut tasks: Vec<(String, tokio::task::JoinHandle<Result<()>>)> =
        vec![("relay".into(), tokio::spawn(async move { relay.run(s).await.context("relay") }))];
    let s = stop.clone();
    tasks.push(("consumer".into(), tokio::spawn(async move { consumer.run(s).await.context("consumer") })));
    let s = stop.clone();
    tasks.push(("pruner".into(), tokio::spawn(async move { pruner.run(s).await.context("pruner") })));

    let topics = vec![BenchEvent::TOPIC.to_owned()];
    let table = |db: usize, name: &str, upstream: bool| Watched {
        db,
        schema: "conveyor".into(),
        table: name.into(),
        label: name.into(),
        upstream,
    };
    Ok(Started {
        system: System::Ours,
        version: None,
        dbs,
        watched: vec![table(0, "outbox", true), table(1, "inbox", false)],
        claim_indexes: vec![
            ClaimIndex {
                table: "inbox".into(),
                index: "inbox_claim_idx".into(),
                read_by: "the consumers' claims, their sweeps below the floor, wake-up probes and next-due look-ups".into(),
            },
            ClaimIndex {
                table: "outbox".into(),
                index: "outbox_pkey".into(),
                read_by: "the relay's claims (each scans it twice: to find the batch, then to delete it) and its wake-up probes".into(),
            },
        ],
        probes: vec![
            Probe { name: "inbox claim".into(), db: 1, schema: "conveyor".into(), table: "inbox".into(), kind: ProbeKind::InboxClaim { topics: topics.clone(), batch: cfg.consumer_batch } },
            Probe { name: "outbox claim".into(), db: 0, schema: "conveyor".into(), table: "outbox".into(), kind: ProbeKind::RelayClaim { topics, batch: cfg.relay_batch } },
        ],
        tasks,
        stop,
        sinks: (0..cfg.producers).map(|_| Box::new(OutboxSink { pool: publisher.clone(), conn: None }) as Box<dyn Sink>).collect(),
        pools: vec![publisher, subscriber],
        pools08: Vec::new(),
    })
}

/// `--delivery pull`: no relay; the consumers pull from the publisher's outbox, whose
/// pruner deletes what they reported passed; the subscriber's pruner keeps its inbox's
/// records (of retried messages only) as with push.
fn start_pulled(cfg: &Settings, poll_interval: Duration, load: &Arc<Load>, publisher: PgPool, subscriber: PgPool, dbs: Vec<Db>) -> Result<Started> {
    let stop = CancellationToken::new();
    let consumer = Consumer::new(subscriber.clone())
        .named("soak")
        .with_options(ConsumerOptions { concurrency: cfg.consumers, batch_size: cfg.consumer_batch, poll_interval, ..Default::default() })
        .subscribe(handler_fn(load::handler(load.clone())))
        .pull_from("pub", publisher.clone());
    let mut tasks: Vec<(String, tokio::task::JoinHandle<Result<()>>)> = Vec::new();
    let s = stop.clone();
    tasks.push(("consumer".into(), tokio::spawn(async move { consumer.run(s).await.context("consumer") })));
    for (name, pool) in [("pruner (publisher)", publisher.clone()), ("pruner (subscriber)", subscriber.clone())] {
        let mut pruner = Pruner::new(pool);
        pruner.window = Duration::from_secs_f64(cfg.prune_window_s);
        pruner.interval = Duration::from_secs_f64(cfg.prune_interval_s);
        pruner.batch = cfg.prune_batch;
        let s = stop.clone();
        tasks.push((name.into(), tokio::spawn(async move { pruner.run(s).await.context("pruner") })));
    }
    let topics = vec![BenchEvent::TOPIC.to_owned()];
    let table = |db: usize, name: &str, upstream: bool| Watched { db, schema: "conveyor".into(), table: name.into(), label: name.into(), upstream };
    Ok(Started {
        system: System::Ours,
        version: Some("pull".into()),
        dbs,
        watched: vec![table(0, "outbox", true), table(1, "inbox", false)],
        claim_indexes: vec![ClaimIndex {
            table: "outbox".into(),
            index: "outbox_pull_idx".into(),
            read_by: "the consumers' reads of each partition from its cursor, and their probes for partitions with work".into(),
        }],
        probes: vec![Probe {
            name: "pull read".into(),
            db: 0,
            schema: "conveyor".into(),
            table: "outbox".into(),
            kind: ProbeKind::PullRead { topics, batch: cfg.consumer_batch },
        }],
        tasks,
        stop,
        sinks: (0..cfg.producers).map(|_| Box::new(OutboxSink { pool: publisher.clone(), conn: None }) as Box<dyn Sink>).collect(),
        pools: vec![publisher, subscriber],
        pools08: Vec::new(),
    })
}

/// Publishes into the outbox in the producer's own transaction, on a connection it keeps.
struct OutboxSink {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl Sink for OutboxSink {
    fn publish(&mut self, seq: i64, batch: usize, sent_us: u64) -> BoxFuture<'_, Result<()>> {
        async move {
            let sent = sent_us.to_string();
            let msgs = (0..batch as i64)
                .map(|i| Ok(Outgoing::event(&BenchEvent::sample(seq + i))?.with_header(SENT_HEADER, sent.clone())))
                .collect::<Result<Vec<_>>>()?;
            if self.conn.is_none() {
                self.conn = Some(self.pool.acquire().await?);
            }
            let mut tx = self.conn.as_mut().expect("filled above").begin().await?;
            publish_all(&mut tx, &msgs).await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

/// After the drain: the engine's own depth (`conveyor_queue::depth`); pulled, the outbox's
/// rows no cursor of the subscriber has passed (the others wait for the pruner).
pub async fn leftover(publisher: &PgPool, subscriber: &PgPool, pulled: bool) -> Result<(i64, i64, i64)> {
    let (mut outbox, mut pending, mut dead) = (0, 0, 0);
    if pulled {
        let cursors: Vec<(i16, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT part, tx, seq FROM ({}) AS c", conveyor_queue::pull::CURSORS)))
                .bind("pub")
                .bind((0..conveyor_queue::pull::PARTS).collect::<Vec<i16>>())
                .bind(vec![0_i64; conveyor_queue::pull::PARTS as usize])
                .fetch_all(subscriber)
                .await?;
        outbox = sqlx::query_scalar(
            "SELECT count(*) FROM conveyor.outbox o WHERE NOT EXISTS (
                 SELECT 1 FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS c(part, tx, seq)
                 WHERE c.part = o.part AND (o.tx, o.seq) <= (c.tx::text::xid8, c.seq))",
        )
        .bind(cursors.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(cursors.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(cursors.iter().map(|c| c.2).collect::<Vec<_>>())
        .fetch_one(publisher)
        .await
        .context("the outbox's rows no cursor has passed")?;
    } else {
        for d in conveyor_queue::depth(publisher).await.context("depth of the publisher")? {
            if d.table == conveyor_queue::QueueTable::Outbox {
                outbox += d.count;
            }
        }
    }
    for d in conveyor_queue::depth(subscriber).await.context("depth of the subscriber")? {
        match (d.table, d.state.as_str()) {
            (conveyor_queue::QueueTable::Inbox, "dead") => dead += d.count,
            (conveyor_queue::QueueTable::Inbox, _) => pending += d.count,
            _ => {}
        }
    }
    Ok((outbox, pending, dead))
}
