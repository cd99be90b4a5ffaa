//! `cargo xtask projections`: the order service's read models (docs/cqrs.md). `status` shows
//! each projection's lag behind the event store; `rebuild` replays the store into a fresh
//! table while the shop runs and swaps it in (`conveyor_order::projection::rebuild`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use conveyor_launcher::StackInfo;
use conveyor_order::projection::{self, ORDER_VIEWS};
use conveyor_contracts::service;
use sqlx::postgres::PgPoolOptions;

use crate::proc::Signals;
use crate::workspace_root;

#[derive(clap::Args, Debug)]
#[command(after_help = "Against `cargo xtask up`: run it with no options. Against another deployment: give the order \
database's URL as its owner (the migrator's role: a rebuild creates, renames and drops tables).\n\
Exit status: 0 done, 1 failed (the message says why).")]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The `stack.json` of a running stack (written by `cargo xtask up` in its log directory).
    /// Default: the newest one under target/conveyor-up/, unless --database-url is given.
    #[arg(long, value_name = "PATH", global = true)]
    stack: Option<PathBuf>,
    /// The order service's database, as the role that owns its tables.
    #[arg(long, value_name = "URL", global = true)]
    database_url: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Each projection's lag: events appended and not applied yet, and the age of the oldest.
    Status,
    /// Replay the whole event store into a fresh table and swap it in, while the shop runs.
    Rebuild,
}

pub async fn run(args: Args, signals: &mut Signals) -> Result<i32> {
    let url = match (&args.database_url, &args.stack) {
        (Some(url), _) => url.clone(),
        (None, stack) => {
            let path = match stack {
                Some(p) => p.clone(),
                None => crate::audit::newest_stack(&workspace_root().join("target").join("conveyor-up"))?,
            };
            let info = StackInfo::read(&path)?;
            info.databases.get(service::ORDER).cloned().with_context(|| format!("{} names no order database", path.display()))?
        }
    };
    let pool = PgPoolOptions::new().max_connections(2).connect(&url).await.context("connecting to the order database")?;
    let work = async {
        match args.action {
            Action::Status => {
                let (events, seconds) = projection::lag(&pool, &ORDER_VIEWS).await?;
                if events == 0 {
                    println!("{}: 0 events behind (caught up)", ORDER_VIEWS.name);
                } else {
                    println!("{}: {events} event(s) behind, the oldest appended {seconds:.3} s ago", ORDER_VIEWS.name);
                }
            }
            Action::Rebuild => {
                println!("xtask: rebuilding {} from the event store (the shop keeps running)", ORDER_VIEWS.name);
                let r = projection::rebuild(&pool, &ORDER_VIEWS).await?;
                println!("xtask: {} rebuilt: {} events replayed, {} views swapped in, {:.2} s", r.projection, r.events, r.views, r.seconds);
            }
        }
        anyhow::Ok(0)
    };
    tokio::select! {
        r = work => r,
        sig = signals.wait() => Ok(128 + sig),
    }
}
