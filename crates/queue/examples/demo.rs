//! A small tour of the queue engine, run by `cargo xtask up`: publish in a transaction,
//! relay to another database, consume with exactly-once effect, retry, dead-letter, replay.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use conveyor_queue::{
    Consumer, ConsumerOptions, Delivery, Event, HandlerError, Outgoing, Relay, RelayOptions, RetryPolicy, Routes, dead_letters, depth,
    handler_fn, publish, publish_event, replay_all,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Publish, relay and consume a few messages between two databases, printing each step.
#[derive(Parser)]
struct Args {
    /// Database of the publishing service (its outbox).
    #[arg(long, env = "DEMO_PUBLISHER_URL")]
    publisher_url: String,
    /// Database of the subscribing service (its inbox).
    #[arg(long, env = "DEMO_SUBSCRIBER_URL")]
    subscriber_url: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    amount_cents: i64,
}

impl Event for OrderPlaced {
    const TOPIC: &'static str = "demo.order-placed";
    fn key(&self) -> Option<String> {
        Some(format!("order-{}", self.order))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (publisher, subscriber) = (PgPool::connect(&args.publisher_url).await?, PgPool::connect(&args.subscriber_url).await?);
    conveyor_queue::migrate(&publisher).await?;
    conveyor_queue::migrate(&subscriber).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS demo_ledger (order_id bigint PRIMARY KEY, amount_cents bigint NOT NULL);
         TRUNCATE demo_ledger; TRUNCATE conveyor.inbox; TRUNCATE conveyor.outbox",
    )
    .execute(&subscriber)
    .await?;
    sqlx::raw_sql("TRUNCATE conveyor.outbox").execute(&publisher).await?;
    println!("queue schema applied to both databases");

    let routes = Routes::new().route(OrderPlaced::TOPIC, ["ledger"]);
    let relay = Relay::new(publisher.clone(), routes, HashMap::from([("ledger".to_owned(), subscriber.clone())]))?
        .with_options(RelayOptions { poll_interval: Duration::from_millis(200), ..Default::default() });
    let consumer = Consumer::new(subscriber.clone())
        .with_options(ConsumerOptions { poll_interval: Duration::from_millis(200), ..Default::default() })
        .subscribe_with(
            handler_fn(move |conn, msg: Delivery<OrderPlaced>| {
                async move {
                    if msg.payload.order == 3 && msg.attempt == 1 {
                        println!("  handler: order 3, attempt {} fails (simulated outage); it will be retried", msg.attempt);
                        return Err(HandlerError::retry(anyhow::anyhow!("simulated outage")));
                    }
                    sqlx::query("INSERT INTO demo_ledger VALUES ($1, $2)").bind(msg.payload.order).bind(msg.payload.amount_cents).execute(conn).await?;
                    println!("  handler: order {} booked ({} cents), attempt {}", msg.payload.order, msg.payload.amount_cents, msg.attempt);
                    Ok(())
                }
                .boxed()
            }),
            RetryPolicy { base: Duration::from_millis(300), ..RetryPolicy::default() },
        );

    let stop = CancellationToken::new();
    let workers = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(relay.run(stop.clone()), consumer.run(stop)) }
    });

    let mut tx = publisher.begin().await?;
    for order in 1..=4 {
        publish_event(&mut tx, &OrderPlaced { order, amount_cents: order * 1250 }).await?;
    }
    let poison = publish(&mut tx, Outgoing::new(OrderPlaced::TOPIC, serde_json::json!({"order": "five"}))).await?;
    tx.commit().await?;
    println!("published 4 orders and 1 malformed message in one transaction");

    let mut tx = publisher.begin().await?;
    publish_event(&mut tx, &OrderPlaced { order: 99, amount_cents: 1 }).await?;
    tx.rollback().await?;
    println!("published order 99 in a transaction that rolled back: it is never delivered");
    println!("(handlers print inside their transaction: when one message of a batch fails, the batch is");
    println!(" rolled back and run again with a savepoint per message, so a line may show twice while");
    println!(" the booking happens once)");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM demo_ledger").fetch_one(&subscriber).await?;
        let dead = dead_letters(&subscriber, None, None, 10).await?;
        if booked == 4 && dead.len() == 1 {
            let d = &dead[0];
            println!("dead letter {} after {} attempt(s): {}", d.message_id, d.attempts, d.errors[0]["error"]);
            assert_eq!(d.message_id, poison);
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the demo did not settle in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("replaying dead letters: {}", replay_all(&subscriber, None).await?);
    loop {
        let dead = dead_letters(&subscriber, None, None, 10).await?;
        if let Some(d) = dead.first().filter(|d| d.errors.as_array().is_some_and(|e| e.len() == 2)) {
            println!("the replayed message is still malformed: dead again, with {} errors on record", d.errors.as_array().map_or(0, Vec::len));
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the replay did not settle in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = workers.await;
    println!("inbox now:");
    for d in depth(&subscriber).await? {
        println!("  {:>6} {:<20} {:<8} {}", format!("{:?}", d.table).to_lowercase(), d.topic, d.state, d.count);
    }
    let total: Option<i64> = sqlx::query_scalar("SELECT sum(amount_cents)::bigint FROM demo_ledger").fetch_one(&subscriber).await?;
    println!("ledger: 4 orders, {} cents in all, each booked exactly once", total.unwrap_or(0));
    Ok(())
}
