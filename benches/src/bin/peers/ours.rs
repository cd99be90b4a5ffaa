//! Our queue hop, the whole path a service gets: publish into the outbox in the producer's
//! transaction → relay → the subscriber's inbox → transaction-mode consumer (claim, handler
//! and "done" in one transaction: exactly-once effect).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use conveyor_benches::{BenchEvent, fresh_db};
use conveyor_queue::{Consumer, ConsumerOptions, Delivery, Outgoing, Pruner, Relay, RelayOptions, Routes, handler_fn, publish_all};
use futures::FutureExt;
use sqlx::PgPool;

use crate::{Config, Delivery as Mode};

/// With pull delivery, how often the publisher's pruner deletes what the subscriber passed
/// (pgmq deletes each message as it is consumed; our log's rows must go too).
pub const PULL_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
use crate::measure::{Probe, drive, stamp_of};

/// The relay's settings: the engine's defaults (one loop, 100 rows a claim), whatever the
/// scenario's batch; the relay is part of the hop, not the user's batching.
pub fn relay_options() -> RelayOptions {
    RelayOptions::default()
}

pub const PUBLISHER_DB: &str = "peers_ours_pub";
pub const SUBSCRIBER_DB: &str = "peers_ours_sub";

/// Fresh publisher and subscriber databases, checkpointed.
pub async fn prepare(cfg: &Config) -> Result<(PgPool, PgPool)> {
    // Pull: the publisher serves the producers, a connection per claim loop, the reporter and
    // the pruner.
    let conns = (cfg.producers + cfg.consumers + 4) as u32;
    let publisher = fresh_db(&cfg.postgres_url, PUBLISHER_DB, conns).await.context("creating the publisher's database")?;
    let subscriber = fresh_db(&cfg.postgres_url, SUBSCRIBER_DB, conns).await.context("creating the subscriber's database")?;
    sqlx::raw_sql("CHECKPOINT").execute(&publisher).await?;
    Ok((publisher, subscriber))
}

pub async fn run(cfg: &Config, batch: usize, probe: &Arc<Probe>, (publisher, subscriber): (PgPool, PgPool)) -> Result<()> {
    let result = measure(cfg, batch, probe, &publisher, &subscriber).await;
    publisher.close().await;
    subscriber.close().await;
    result
}

async fn measure(cfg: &Config, batch: usize, probe: &Arc<Probe>, publisher: &PgPool, subscriber: &PgPool) -> Result<()> {
    let relay = Relay::new(
        publisher.clone(),
        Routes::new().route(<BenchEvent as conveyor_queue::Event>::TOPIC, ["sub"]),
        HashMap::from([("sub".to_owned(), subscriber.clone())]),
    )?
    .with_options(relay_options());
    let p = probe.clone();
    let mut consumer = Consumer::new(subscriber.clone())
        .named("peers")
        .with_options(ConsumerOptions { concurrency: cfg.consumers, batch_size: batch as i64, ..Default::default() })
        .subscribe(handler_fn(move |_conn, msg: Delivery<BenchEvent>| {
            p.consumed([stamp_of(&msg.payload)]);
            async { Ok(()) }.boxed()
        }));

    let mut tasks = Vec::new();
    let stop = probe.stop().clone();
    match cfg.delivery {
        Mode::Push => tasks.push((
            "relay".to_owned(),
            tokio::spawn({
                let stop = stop.clone();
                async move { relay.run(stop).await.context("relay") }
            }),
        )),
        Mode::Pull => {
            consumer = consumer.pull_from("pub", publisher.clone());
            let mut pruner = Pruner::new(publisher.clone());
            (pruner.interval, pruner.batch) = (PULL_PRUNE_EVERY, 10_000);
            tasks.push((
                "pruner".to_owned(),
                tokio::spawn({
                    let stop = stop.clone();
                    async move { pruner.run(stop).await.context("pruner") }
                }),
            ));
        }
    }
    tasks.push((
        "consumer".to_owned(),
        tokio::spawn(async move { consumer.run(stop).await.context("consumer") }),
    ));
    let n = cfg.producers;
    for i in 0..n {
        let (pool, probe) = (publisher.clone(), probe.clone());
        tasks.push((format!("producer {i}"), tokio::spawn(async move { produce(pool, i, n, batch, probe).await })));
    }
    drive(probe, tasks).await
}

/// One message, or `batch`, per statement on a connection of its own. The statement is its
/// own transaction, as pgmq's `send` is: here the message is the whole change (in a service,
/// the publish joins the transaction of the state change it reports, at no extra commit).
async fn produce(pool: PgPool, i: usize, n: usize, batch: usize, probe: Arc<Probe>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut schedule = probe.schedule(i, n);
    while let Some(stamp) = probe.next_batch(batch, &mut schedule).await {
        let msgs = (0..batch).map(|_| Outgoing::event(&Probe::event(stamp))).collect::<Result<Vec<_>, _>>()?;
        publish_all(&mut conn, &msgs).await?;
        probe.published(batch);
    }
    Ok(())
}
