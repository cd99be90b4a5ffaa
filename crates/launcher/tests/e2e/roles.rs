//! Least privilege in the running shop: each process connects as its service's runtime
//! role, each relay delivers as the subscriber's relay role, and nothing runs as the admin or
//! a migrator role once the migrators are done (what each role may do: migrator/tests).

use std::collections::{BTreeMap, BTreeSet};

use conveyor_contracts::SagaMode;
use conveyor_launcher::{Terminal, wait_for};

use crate::{SAGA, in_both_modes, start_in};

in_both_modes!(every_process_connects_with_its_services_runtime_role_and_relays_with_the_subscribers);

async fn every_process_connects_with_its_services_runtime_role_and_relays_with_the_subscribers(mode: SagaMode) {
    let f = start_in("roles", mode).await;
    let product = f.product(1000, 5).await;
    let customer = f.customer(100_000).await;
    let order = f.shop.order_placed(customer, &[(product, 1)]).await.unwrap();
    assert_eq!(f.shop.wait_terminal(order, SAGA).await.unwrap(), Terminal::Confirmed);
    wait_for("the notification", SAGA, || async { Ok(!f.shop.notifications(order).await?.is_empty()) }).await.unwrap();

    let roles = &f.stack.roles;
    let databases: BTreeMap<String, &str> = roles.iter().map(|(svc, db)| (db_name(&db.admin), svc.as_str())).collect();
    let admin = f.db("order").await;
    let sessions: Vec<(String, String)> = sqlx::query_as(
        "SELECT datname::text, usename::text FROM pg_stat_activity WHERE datname = ANY($1) AND usename <> current_user",
    )
    .bind(databases.keys().cloned().collect::<Vec<_>>())
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (database, user) in sessions {
        seen.entry(databases[&database]).or_default().insert(user);
    }
    for (svc, db) in roles {
        // The relays of every publisher that delivers here have delivered by now (the saga
        // passed through each service), and keep their connections; nobody delivers to the
        // coordinator in a choreography.
        let delivered = !(svc == conveyor_contracts::service::COORDINATOR && mode == SagaMode::Choreography);
        let relay = db.roles.relay.clone().filter(|_| delivered);
        let expected: BTreeSet<String> = [Some(db.roles.runtime.clone()), relay].into_iter().flatten().collect();
        assert_eq!(seen.get(svc.as_str()), Some(&expected), "sessions on {svc}'s database");
    }
    f.stop().await;
}

fn db_name(url: &str) -> String {
    let path = url.rsplit_once('/').unwrap().1;
    path.split('?').next().unwrap().to_owned()
}
