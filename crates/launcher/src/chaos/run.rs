//! A whole chaos run against a started stack: the shelf, the rounds (orders driven while the
//! plan is carried out), then every fault undone, the shop left to settle, and the audit.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use conveyor_devpg::PgCluster;
use sqlx::PgPool;
use uuid::Uuid;

use super::inject::Injector;
use super::orders;
use super::{ChaosReport, Counts, FaultKind, Pace, RoundReport, Settled, round_seed, schedule};
use crate::audit;
use crate::drive::DriveOptions;
use crate::{Stack, database_name};

/// What to do.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seed: u64,
    pub rounds: u32,
    /// Of each round.
    pub duration: Duration,
    /// Orders per second.
    pub rate: f64,
    pub faults: Vec<FaultKind>,
    pub products: usize,
    pub customers: usize,
    /// How long the shop may take to settle after the last round.
    pub settle: Duration,
    /// Lines per order (1 to this) and units per line (1 to this).
    pub max_lines: u32,
    pub max_quantity: u32,
    /// Orders waiting for their answer at most (a scheduled order beyond it is not sent).
    pub max_in_flight: usize,
    /// An order is sent again (same key) for this long before it counts as unanswered.
    pub give_up: Duration,
    pub pace: Pace,
    /// The command that repeats the run, for the report.
    pub command: String,
}

/// Runs the rounds, restores, waits for the shop to settle and audits. `pg`: the private
/// cluster for PostgreSQL restarts (leave [`FaultKind::PgRestart`] out without one). `say`
/// hears progress lines. Errors only when the run could not be carried out (the shelf could
/// not be stocked, a database is unreachable); a broken promise is in the report.
pub async fn run(
    stack: &mut Stack,
    pg: Option<&PgCluster>,
    opts: &ChaosOptions,
    say: impl Fn(&str) + Sync,
) -> Result<ChaosReport> {
    anyhow::ensure!(
        pg.is_some() || !opts.faults.contains(&FaultKind::PgRestart),
        "PostgreSQL restarts need a private cluster"
    );
    let began = Instant::now();
    let shop = stack.shop();
    let expected =
        (opts.rate * opts.duration.as_secs_f64()).round() as u64 * u64::from(opts.rounds);
    let shelf = orders::stock_the_shelf(
        &shop,
        opts.seed,
        opts.products,
        opts.customers,
        expected,
        opts.max_lines,
        opts.max_quantity,
    )
    .await
    .context("creating the products and customers")?;
    say(&format!(
        "{}, for about {expected} orders",
        shelf.describe()
    ));

    let mut injector = Injector::new(stack, pg, Instant::now(), &say);
    let mut rounds = Vec::new();
    let mut accepted: Vec<Uuid> = Vec::new();
    let mut counts = Counts::default();
    for round in 0..opts.rounds {
        let plan = schedule(opts.seed, round, opts.duration, &opts.faults, &opts.pace);
        say(&format!(
            "round {}/{}: {} orders/s for {:?}, {} steps planned",
            round + 1,
            opts.rounds,
            opts.rate,
            opts.duration,
            plan.len()
        ));
        let drive = DriveOptions {
            rate: opts.rate,
            duration: opts.duration,
            max_in_flight: opts.max_in_flight,
            seed: round_seed(opts.seed, round),
            max_lines: opts.max_lines,
            max_quantity: opts.max_quantity,
        };
        let driver = {
            let (shop, shelf, give_up) = (shop.clone(), shelf.clone(), opts.give_up);
            // A task of its own: the injector blocks its thread while PostgreSQL restarts.
            tokio::spawn(async move { orders::place_orders(&shop, &shelf, &drive, give_up).await })
        };
        injector.play(round, &plan).await;
        let placed = driver.await.context("the order driver failed")?;
        say(&format!(
            "round {} done: {} of {} orders accepted ({} after retries), {} unanswered, {} refused, {} unsent",
            round + 1,
            placed.accepted.len(),
            placed.scheduled,
            placed.retried,
            placed.unanswered,
            placed.refused,
            placed.unsent
        ));
        counts.accepted += placed.accepted.len() as u64;
        counts.retried += placed.retried;
        counts.unanswered += placed.unanswered;
        accepted.extend(&placed.accepted);
        rounds.push(RoundReport {
            round,
            plan,
            scheduled: placed.scheduled,
            accepted: placed.accepted.len() as u64,
            retried: placed.retried,
            unanswered: placed.unanswered,
            refused: placed.refused,
            unsent: placed.unsent,
            problems: placed.problems,
        });
    }

    let flags = opts.faults.contains(&FaultKind::Flags);
    say(if flags {
        "faults off: every process running, every flag cleared"
    } else {
        "faults off: every process running"
    });
    let settle_started = Instant::now();
    let restored = injector.restore(flags, opts.settle).await;
    let timeline = std::mem::take(&mut injector.timeline);
    counts.injected = injector.injected.clone();
    drop(injector);
    let pools = pools(stack).await?;
    let mut settle = match restored {
        Ok(()) => {
            wait_settled(
                &pools,
                &accepted,
                opts.settle.saturating_sub(settle_started.elapsed()),
            )
            .await?
        }
        Err(e) => Settled {
            settled: false,
            took_s: 0.0,
            pending: vec![format!("{e:#}")],
        },
    };
    settle.took_s = (settle_started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    say(&if settle.settled {
        format!("settled in {:.1} s", settle.took_s)
    } else {
        format!(
            "did NOT settle within {:?}: {}",
            opts.settle,
            settle.pending.join("; ")
        )
    });
    counts.outcomes = orders::outcomes(&pools[0].1, &accepted).await?;
    for (_, pool) in pools {
        pool.close().await;
    }

    say("auditing");
    let mut targets = audit::Targets::from_stack(stack);
    targets.accepted = accepted;
    let (audit, audit_error) = match audit::run(&targets).await {
        Ok(report) => (Some(report), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(ChaosReport {
        seed: opts.seed,
        command: opts.command.clone(),
        rounds,
        shelf,
        timeline,
        counts,
        settle,
        audit,
        audit_error,
        duration_s: began.elapsed().as_secs_f64().round(),
    })
}

/// A small pool on every service's database, the order service's first.
async fn pools(stack: &Stack) -> Result<Vec<(String, PgPool)>> {
    let mut names: Vec<&String> = stack.databases.keys().collect();
    names.sort_by_key(|s| *s != "order");
    let mut pools = Vec::new();
    for svc in names {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&stack.databases[svc])
            .await
            .with_context(|| format!("connecting to the {} database", database_name(svc)))?;
        pools.push((svc.clone(), pool));
    }
    Ok(pools)
}

/// Waits until no order is `placed`, every accepted order exists, and nothing waits in any
/// outbox or inbox (dead letters aside: the audit lists those); or `limit` has passed, and
/// then says what is still pending.
async fn wait_settled(
    pools: &[(String, PgPool)],
    accepted: &[Uuid],
    limit: Duration,
) -> Result<Settled> {
    let deadline = Instant::now() + limit;
    loop {
        let pending = pending(pools, accepted).await?;
        if pending.is_empty() {
            return Ok(Settled {
                settled: true,
                took_s: 0.0,
                pending,
            });
        }
        if Instant::now() > deadline {
            return Ok(Settled {
                settled: false,
                took_s: 0.0,
                pending,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pending(pools: &[(String, PgPool)], accepted: &[Uuid]) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    let orders = &pools[0].1;
    let (placed, example): (i64, Option<Uuid>) =
        sqlx::query_as("SELECT count(*), min(id::text)::uuid FROM orders WHERE status = 'placed'")
            .fetch_one(orders)
            .await
            .context("reading the orders")?;
    if placed > 0 {
        pending.push(format!(
            "{placed} orders still placed (e.g. {})",
            example.map(|u| u.to_string()).unwrap_or_default()
        ));
    }
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ANY($1)")
        .bind(accepted)
        .fetch_one(orders)
        .await?;
    let mut distinct = accepted.to_vec();
    distinct.sort();
    distinct.dedup();
    if (found as usize) < distinct.len() {
        pending.push(format!(
            "{} accepted orders not in the order database",
            distinct.len() - found as usize
        ));
    }
    for (svc, pool) in pools {
        let depth = conveyor_queue::depth(pool)
            .await
            .with_context(|| format!("reading the queues of {svc}"))?;
        for d in depth.iter().filter(|d| d.state != "dead" && d.count > 0) {
            let table = format!("{:?}", d.table).to_lowercase();
            pending.push(format!(
                "{svc}: {} {} in the {table} ({})",
                d.count, d.state, d.topic
            ));
        }
    }
    Ok(pending)
}
