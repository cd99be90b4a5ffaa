//! Claim floors and their sweeps (see `floor` in the crate): a row that commits behind a
//! running claimer's floor is found by the sweep that runs beside its claim loops (the
//! claims themselves start at the floor and never see it).

use std::sync::Arc;
use std::time::Duration;

use conveyor_queue::sql::CLAIM_FLOOR_MARGIN;
use conveyor_queue::{Consumer, ConsumerOptions, Delivery, Outgoing, RelayOptions, handler_fn, publish_all};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn a_delivery_committed_behind_a_running_consumers_floor_is_found_by_its_sweep() {
    let p = pair().await;
    let consumer = Arc::new(
        Consumer::new(p.subscriber.clone())
            .with_options(ConsumerOptions { poll_interval: Duration::from_millis(100), ..fast_options(2) })
            .subscribe(handler_fn(|conn, msg: Delivery<Ping>| async move { Ok(record_effect(conn, &msg).await?) }.boxed())),
    );
    let stop = CancellationToken::new();
    let (c, s) = (consumer.clone(), stop.clone());
    let consuming = tokio::spawn(async move { c.run(s).await });

    // A delivery whose transaction commits late: its row's position (`visible_at`, the
    // transaction's start) ends up behind the positions the consumer claims meanwhile.
    let late = uuid::Uuid::now_v7();
    let mut held = p.subscriber.begin().await.unwrap();
    sqlx::query("INSERT INTO conveyor.inbox (message_id, topic, payload, published_at) VALUES ($1, 'test.ping', '{\"n\": 1000}', now())")
        .bind(late)
        .execute(&mut *held)
        .await
        .unwrap();
    // A gap in time (not a wait for anything): later deliveries are positioned past the margin.
    tokio::time::sleep(CLAIM_FLOOR_MARGIN * 2).await;
    let mut ids = p.publish(0..20).await;
    p.relay_all().await;
    wait_until("the later messages are handled", Duration::from_secs(20), || async { count(&p.subscriber, "SELECT count(*) FROM effects").await == 20 }).await;
    held.commit().await.unwrap();

    wait_until("the sweep finds the late row and a loop handles it", Duration::from_secs(30), || async {
        count(&p.subscriber, "SELECT count(*) FROM effects").await == 21
    })
    .await;
    ids.push(late);
    assert_exactly_once(&p.subscriber, &ids).await;
    stop.cancel();
    consuming.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_outbox_row_committed_behind_a_running_relays_floor_is_found_by_its_sweep() {
    let p = pair().await;
    let relay = p.relay().with_options(RelayOptions { batch_size: 100, concurrency: 2, poll_interval: Duration::from_millis(100) });
    let stop = CancellationToken::new();
    let s = stop.clone();
    let relaying = tokio::spawn(async move { relay.run(s).await });

    // A publisher whose transaction commits late: its id (minted before it began) ends up
    // behind the ids the relay claims meanwhile.
    let late = Outgoing::event(&Ping { n: 1000 }).unwrap();
    let mut held = p.publisher.begin().await.unwrap();
    publish_all(&mut held, std::slice::from_ref(&late)).await.unwrap();
    tokio::time::sleep(CLAIM_FLOOR_MARGIN * 2).await; // a gap in time, as above
    p.publish(0..20).await;
    wait_until("the later messages are relayed", Duration::from_secs(20), || async { count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await == 20 }).await;
    held.commit().await.unwrap();

    wait_until("the sweep finds the late row and a loop relays it", Duration::from_secs(30), || async {
        count(&p.subscriber, "SELECT count(*) FROM conveyor.inbox").await == 21
    })
    .await;
    assert_eq!(count(&p.publisher, "SELECT count(*) FROM conveyor.outbox").await, 0);
    stop.cancel();
    relaying.await.unwrap().unwrap();
}
