//! RabbitMQ through `lapin`: a durable classic queue, persistent messages (delivery mode 2),
//! publisher confirms awaited (one at batch 1; a batch's worth published, then all of their
//! confirms awaited), manual acks (one per message at batch 1; `multiple` acks of up to a
//! batch otherwise) under a prefetch limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use conveyor_benches::BenchEvent;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::Config;
use crate::measure::{Probe, drive, stamp_of};

pub const QUEUE: &str = "peers_bench";

/// The prefetch limit (unacknowledged deliveries per consumer) for a batch size: RabbitMQ's
/// usual advice of a few hundred at most, and room for two whole batches.
pub fn default_prefetch(batch: usize) -> u16 {
    (2 * batch).clamp(100, u16::MAX as usize) as u16
}

/// Connects, retrying until `limit` (the broker may still be booting).
pub async fn connect(url: &str, limit: Duration) -> Result<Connection> {
    let deadline = Instant::now() + limit;
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("RabbitMQ at {url} did not accept an AMQP connection within {limit:?}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A fresh durable queue (the previous scenario's, if any, deleted with its messages).
pub async fn prepare(url: &str) -> Result<()> {
    let conn = connect(url, Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(QUEUE.into(), QueueDeleteOptions::default()).await.context("deleting the RabbitMQ queue")?;
    ch.queue_declare(QUEUE.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .context("declaring the RabbitMQ queue")?;
    conn.close(200, "ok".into()).await?;
    Ok(())
}

pub async fn run(cfg: &Config, url: &str, batch: usize, probe: &Arc<Probe>) -> Result<()> {
    let prefetch = cfg.prefetch.unwrap_or_else(|| default_prefetch(batch));
    let mut tasks = Vec::new();
    for i in 0..cfg.consumers {
        let (url, probe) = (url.to_owned(), probe.clone());
        tasks.push((format!("RabbitMQ consumer {i}"), tokio::spawn(async move { consume(&url, i, batch, prefetch, probe).await })));
    }
    let n = cfg.producers;
    for i in 0..n {
        let (url, probe) = (url.to_owned(), probe.clone());
        tasks.push((format!("RabbitMQ producer {i}"), tokio::spawn(async move { produce(&url, i, n, batch, probe).await })));
    }
    drive(probe, tasks).await
}

/// A connection and a channel of its own, in confirm mode.
async fn produce(url: &str, i: usize, n: usize, batch: usize, probe: Arc<Probe>) -> Result<()> {
    let conn = connect(url, Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let persistent = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let mut schedule = probe.schedule(i, n);
    while let Some(stamp) = probe.next_batch(batch, &mut schedule).await {
        let mut confirms = Vec::with_capacity(batch);
        for _ in 0..batch {
            let payload = serde_json::to_vec(&Probe::event(stamp))?;
            confirms.push(
                ch.basic_publish("".into(), QUEUE.into(), BasicPublishOptions::default(), &payload, persistent.clone()).await?,
            );
        }
        for c in confirms {
            if !c.await?.is_ack() {
                bail!("RabbitMQ refused (nacked) a message");
            }
        }
        probe.published(batch);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// A connection and a channel of its own; acks as described in the module docs.
async fn consume(url: &str, i: usize, batch: usize, prefetch: u16, probe: Arc<Probe>) -> Result<()> {
    let conn = connect(url, Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(QUEUE.into(), format!("peers-{i}").into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    // Received and not yet acknowledged: (last delivery tag, how many).
    let mut unacked: Option<(u64, usize)> = None;
    while !probe.stop().is_cancelled() {
        let next = match unacked {
            // More already here? Take it into this ack; otherwise ack what we have now.
            Some((tag, _)) => match deliveries.next().now_or_never() {
                Some(d) => d,
                None => {
                    ack(&ch, tag, batch).await?;
                    unacked = None;
                    continue;
                }
            },
            None => tokio::select! {
                d = deliveries.next() => d,
                _ = probe.stop().cancelled() => break,
            },
        };
        let Some(delivery) = next else { bail!("RabbitMQ cancelled the consumer") };
        let delivery = delivery?;
        let event: BenchEvent = serde_json::from_slice(&delivery.data).context("decoding a RabbitMQ message")?;
        probe.consumed([stamp_of(&event)]);
        let n = unacked.map_or(0, |(_, n)| n) + 1;
        if n >= batch {
            ack(&ch, delivery.delivery_tag, batch).await?;
            unacked = None;
        } else {
            unacked = Some((delivery.delivery_tag, n));
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Acknowledges `tag` (batch 1) or every delivery up to `tag` (otherwise).
async fn ack(ch: &Channel, tag: u64, batch: usize) -> Result<()> {
    ch.basic_ack(tag, BasicAckOptions { multiple: batch > 1 }).await.context("acknowledging")
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetch_holds_two_batches_and_at_least_a_hundred() {
        assert_eq!(super::default_prefetch(1), 100);
        assert_eq!(super::default_prefetch(100), 200);
    }
}
