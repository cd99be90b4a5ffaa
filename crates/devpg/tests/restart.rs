//! `PgCluster::restart_immediate`: a crash of PostgreSQL, and crash recovery after it.

use conveyor_devpg::{ClusterOptions, PgCluster};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_data_survives_an_immediate_stop_and_restart() {
    let cluster = tokio::task::spawn_blocking(|| {
        PgCluster::start(ClusterOptions {
            name: "restart".into(),
            durable: true,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let url = cluster.admin_url();
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    // An open transaction at the moment of the crash: its row must not survive.
    let mut open = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (-1)")
        .execute(&mut open)
        .await
        .unwrap();
    let before = cluster.postmaster_pid().expect("the server runs");
    let port = cluster.port();

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart_immediate().unwrap();
        cluster
    })
    .await
    .unwrap();

    let after = cluster.postmaster_pid().expect("the server runs again");
    assert_ne!(before, after, "a new postmaster");
    assert_eq!(cluster.port(), port, "on the same port");
    // The old connections were cut.
    assert!(
        sqlx::query("SELECT 1").execute(&mut c).await.is_err(),
        "a connection from before the crash still works"
    );
    let log = std::fs::read_to_string(cluster.root_dir().join("postgres.log")).unwrap();
    assert!(
        log.contains("not properly shut down") && log.contains("automatic recovery in progress"),
        "no crash recovery in the log:\n{log}"
    );
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let (count, sum): (i64, i64) = sqlx::query_as("SELECT count(*), sum(n) FROM t")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        (count, sum),
        (1000, 500_500),
        "every committed row, and nothing of the open transaction"
    );
    c.close().await.unwrap();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
}
