//! saga-driver: places orders through the order API at a fixed rate, open loop, and prints
//! what happened as one JSON object (see `conveyor_launcher::drive`). Run by
//! `cargo xtask bench saga` once per rate step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use conveyor_contracts::limits;
use conveyor_launcher::Shop;
use conveyor_launcher::drive::{DriveOptions, drive, parse_catalog};

/// Places orders through the order API at a fixed rate, open loop (each order sent on
/// schedule whatever the earlier answers), and prints what happened as one JSON object.
#[derive(Parser)]
#[command(name = "saga-driver")]
struct Cli {
    /// The order API's base URL.
    #[arg(long)]
    order_api: String,
    /// The file of the issuer the order API trusts (`issuer.json` in the stack's log
    /// directory): each customer's token is signed with it.
    #[arg(long)]
    issuer: PathBuf,
    /// The catalog file: one `product <uuid>` or `customer <uuid>` per line.
    #[arg(long)]
    catalog: PathBuf,
    /// Orders per second.
    #[arg(long)]
    rate: f64,
    /// How long to place orders, in seconds.
    #[arg(long)]
    seconds: f64,
    /// Requests in flight at most; beyond, a scheduled order is not sent (counted unsent).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Seeds the choice of customer, products and quantities (the same seed places the
    /// same orders).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lines per order: 1 to this many, uniformly, each for another product of the catalog
    /// (as far as it has products).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=limits::MAX_LINES as i64))]
    max_lines: u32,
    /// Units per line: 1 to this many, uniformly.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(limits::MAX_QUANTITY)))]
    max_quantity: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.catalog).with_context(|| format!("reading {}", cli.catalog.display()))?;
    let (products, customers) = parse_catalog(&text)?;
    if !(cli.rate > 0.0 && cli.max_in_flight > 0) {
        bail!("--rate and --max-in-flight must be positive");
    }
    let opts = DriveOptions {
        rate: cli.rate,
        duration: Duration::try_from_secs_f64(cli.seconds).context("--seconds must be a duration in seconds")?,
        max_in_flight: cli.max_in_flight,
        seed: cli.seed,
        max_lines: cli.max_lines,
        max_quantity: cli.max_quantity,
    };
    let api = BTreeMap::from([("order".to_owned(), cli.order_api)]);
    let issuer = conveyor_platform::auth::DevIssuer::load(&cli.issuer)?;
    let shop = Shop::new(reqwest::Client::new(), api, String::new(), issuer);
    let report = drive(&shop, &products, &customers, &opts).await;
    println!("{}", report.to_json());
    Ok(())
}
