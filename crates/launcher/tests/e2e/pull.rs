//! Pull delivery (`--delivery pull`): the shop with no relay, every worker reading its
//! publishers' outboxes with its own cursors. Both sagas end as they do pushed, a worker
//! killed and started again loses nothing, nothing goes through the inboxes but what
//! failed, the audit passes, and the publishers prune what every subscriber has read.

use conveyor_contracts::{SagaMode, service};
use conveyor_launcher::audit::{Options, Targets};
use conveyor_launcher::{Delivery, StackInfo, Terminal, wait_for};

use crate::{SAGA, start_with};

async fn count(db: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

#[tokio::test]
async fn a_pulled_shop_runs_both_sagas_survives_a_killed_worker_and_prunes_what_was_read() {
    let mut f = start_with("pull", |mut o| {
        o.delivery = Delivery::Pull;
        o
    })
    .await;
    let settled = f.three_endings().await;
    let (product, rich) = (settled.product, settled.rich);

    // The stock worker killed (SIGKILL): an order placed meanwhile waits in the order
    // service's outbox, and is read and reserved once the worker is back.
    f.stack.kill("stock-worker").await.unwrap();
    let while_down = f.shop.order_placed(rich, &[(product, 1)]).await.unwrap();
    f.stack.start_process("stock-worker").await.unwrap();
    assert_eq!(f.shop.wait_terminal(while_down, SAGA).await.unwrap(), Terminal::Confirmed);

    // The coordinator's commands and replies travel the same way.
    f.stack.switch_saga_mode(SagaMode::Orchestration).await.unwrap();
    let orchestrated = f.shop.order_placed(rich, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(orchestrated, SAGA).await.unwrap(), Terminal::Confirmed);
    assert_eq!(f.shop.stock(product).await.unwrap(), (1, 4), "2 + 1 + 1 sold, the declined order's unit released");

    for order in [while_down, orchestrated] {
        wait_for("the notification to be recorded", SAGA, || async { Ok(f.shop.notifications(order).await?.len() == 1) }).await.unwrap();
    }

    // Nothing was relayed: the stock and payment services handled everything from their
    // cursors, and their inboxes never held a message.
    for svc in [service::STOCK, service::PAYMENT] {
        let db = f.db(svc).await;
        assert_eq!(count(&db, "SELECT count(*) FROM conveyor.inbox_done").await, 0, "{svc}: nothing went through the inbox");
        assert!(count(&db, "SELECT count(*) FROM conveyor.pull_cursors WHERE gen > 0").await > 0, "{svc}: its cursors moved");
    }
    // Each publisher knows its subscribers (registered at its worker's start, then reported).
    let order_db = f.db(service::ORDER).await;
    let subscribers: Vec<String> = sqlx::query_scalar("SELECT DISTINCT subscriber FROM conveyor.pull_positions ORDER BY 1").fetch_all(&order_db).await.unwrap();
    assert_eq!(subscribers, ["coordinator", "notification", "stock"]);

    // The audit passes: rows every subscriber has read are not "left in the outbox".
    let mut targets = Targets::from_info(&StackInfo::read(&f.stack.info_path()).unwrap());
    targets.accepted = [settled.orders.as_slice(), &[while_down, orchestrated]].concat();
    let report = crate::audit::passes(&targets, &Options::default()).await;
    assert_eq!(report.rule("orders_terminal").unwrap().checked, 5);

    // And the publisher's pruner deletes them (it runs every few seconds).
    wait_for("the order outbox to be pruned", SAGA, || async {
        Ok(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM conveyor.outbox").fetch_one(&order_db).await? == 0)
    })
    .await
    .unwrap();
    f.stop().await;
}
