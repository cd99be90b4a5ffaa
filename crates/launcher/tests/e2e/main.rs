//! End-to-end: the shipped binaries as processes, against a real PostgreSQL (one set of
//! databases per test), driven over HTTP like a client would. Stacks run one at a time:
//! each is a dozen processes, and two cores.

mod alerts;
mod audit;
mod authz;
mod bad_input;
mod cqrs;
mod faults;
mod flags;
mod metrics;
mod orchestration;
mod prometheus;
mod pull;
mod race;
mod roles;
mod saga;
mod traces;

use std::time::Duration;

use conveyor_contracts::SagaMode;
use conveyor_launcher::{Shop, Stack, StackOptions, Terminal, default_bin_dir, wait_for};
use uuid::Uuid;

/// Runs a scenario `async fn name(mode: SagaMode)` once per saga mode, as the tests
/// `name::choreography` and `name::orchestration`: one suite for both ways the shop runs
/// its saga, not a copy per mode.
macro_rules! in_both_modes {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn choreography() {
                super::$name(conveyor_contracts::SagaMode::Choreography).await
            }
            #[tokio::test]
            async fn orchestration() {
                super::$name(conveyor_contracts::SagaMode::Orchestration).await
            }
        }
    )+};
}
pub(crate) use in_both_modes;

static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a saga may take here before a test gives up (generous: debug builds on a busy
/// two-core machine; a healthy saga takes milliseconds).
pub const SAGA: Duration = Duration::from_secs(60);

pub struct Fixture {
    pub stack: Stack,
    pub shop: Shop,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// A fresh stack for `test`, with short circuit-breaker timings so outages resolve fast.
pub async fn start(test: &str) -> Fixture {
    start_with(test, |o| o).await
}

/// A fresh stack for `test` whose new orders run their saga in `mode`.
pub async fn start_in(test: &str, mode: SagaMode) -> Fixture {
    start_with(&format!("{test}-{mode}"), |mut o| {
        o.saga_mode = mode;
        o
    })
    .await
}

pub async fn start_with(test: &str, tweak: impl FnOnce(StackOptions) -> StackOptions) -> Fixture {
    let turn = ONE_STACK_AT_A_TIME.lock().await;
    let admin = conveyor_devpg::shared_admin_url().await;
    let id = Uuid::now_v7().simple().to_string();
    let bin_dir = default_bin_dir();
    let log_dir = bin_dir.parent().expect("target dir").join("e2e-logs").join(format!("{test}-{}", &id[20..]));
    let mut opts = StackOptions::new(admin, bin_dir, log_dir.clone())
        .arg("notification-worker", &["--breaker-failures", "3", "--breaker-cooldown", "1s"]);
    opts.db_prefix = format!("e2e_{}_", &id[20..]);
    let opts = tweak(opts);
    let stack = Stack::start(opts, |_| {}).await.unwrap_or_else(|e| panic!("stack for {test} did not start: {e:#}"));
    eprintln!("{test}: stack logs in {}", log_dir.display());
    let shop = stack.shop();
    Fixture { stack, shop, _turn: turn }
}

/// What [`Fixture::three_endings`] made.
pub struct ThreeEndings {
    pub product: Uuid,
    pub rich: Uuid,
    pub poor: Uuid,
    /// Confirmed, cancelled out of stock, declined.
    pub orders: [Uuid; 3],
}

impl Fixture {
    /// A product known to order and stock.
    pub async fn product(&self, price_minor: i64, stock: i64) -> Uuid {
        let id = self.shop.create_product(&format!("p-{}", Uuid::now_v7().simple()), price_minor, "EUR", stock).await.unwrap();
        self.shop.wait_synced(id, SAGA).await.unwrap();
        id
    }

    pub async fn customer(&self, balance_minor: i64) -> Uuid {
        self.shop.create_customer(Uuid::now_v7(), "Test Customer", "EUR", balance_minor).await.unwrap()
    }

    /// The saga's three endings, settled: a product (5 in stock, 10.00 EUR), a rich and a
    /// poor customer, and their orders confirmed (2 units), cancelled out of stock (50) and
    /// declined (1, its reservation released), each notified.
    pub async fn three_endings(&self) -> ThreeEndings {
        let product = self.product(1000, 5).await;
        let rich = self.customer(1_000_000).await;
        let poor = self.customer(500).await;
        let confirmed = self.shop.order_placed(rich, &[(product, 2)]).await.unwrap();
        let out_of_stock = self.shop.order_placed(rich, &[(product, 50)]).await.unwrap();
        let declined = self.shop.order_placed(poor, &[(product, 1)]).await.unwrap();
        assert_eq!(self.shop.wait_terminal(confirmed, SAGA).await.unwrap(), Terminal::Confirmed);
        assert_eq!(self.shop.wait_terminal(out_of_stock, SAGA).await.unwrap(), Terminal::Cancelled("out_of_stock".into()));
        assert_eq!(self.shop.wait_terminal(declined, SAGA).await.unwrap(), Terminal::Cancelled("payment_declined".into()));
        wait_for("the declined order's reservation to be released", SAGA, || async {
            Ok(self.shop.reservation(declined).await?.is_some_and(|r| r["state"] == "released"))
        })
        .await
        .unwrap();
        for order in [confirmed, out_of_stock, declined] {
            wait_for("the notification to be recorded", SAGA, || async { Ok(self.shop.notifications(order).await?.len() == 1) }).await.unwrap();
        }
        ThreeEndings { product, rich, poor, orders: [confirmed, out_of_stock, declined] }
    }

    /// A pool on one service's database, for checks no API exposes.
    pub async fn db(&self, svc: &str) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.stack.databases[svc]).await.unwrap()
    }

    /// Waits until the notification worker reports its webhook's circuit breaker open.
    pub async fn webhook_circuit_opens(&self) {
        let metrics_url = format!("{}/metrics", self.stack.worker["notification"]);
        conveyor_launcher::wait_for("the webhook's circuit to open", SAGA, || async {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            Ok(text.lines().any(|l| l.starts_with("conveyor_notification_breaker_open") && l.contains("webhook") && l.ends_with(" 1")))
        })
        .await
        .unwrap();
    }

    /// Stops every process and checks each one exited cleanly.
    pub async fn stop(self) {
        self.stack.stop().await.unwrap();
    }
}
