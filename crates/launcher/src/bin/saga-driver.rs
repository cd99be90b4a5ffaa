//! saga-driver: places orders through the order API at a fixed rate, open loop, and prints
//! what happened as one JSON object (see `conveyor_launcher::drive`). Run by
//! `cargo xtask bench saga` once per rate step.
//!
//! saga-driver --order-api URL --catalog FILE --rate N --seconds S [--max-in-flight N] [--seed N]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_launcher::Shop;
use conveyor_launcher::drive::{DriveOptions, drive, parse_catalog};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else { bail!("unexpected argument {flag:?} (usage: see the source's first lines)") };
        let value = it.next().with_context(|| format!("--{name} needs a value"))?;
        args.insert(name.to_owned(), value);
    }
    let get = |k: &str| args.get(k).cloned().with_context(|| format!("--{k} is required"));
    let num = |k: &str, default: Option<f64>| -> Result<f64> {
        match args.get(k) {
            Some(v) => v.parse().with_context(|| format!("--{k} must be a number, not {v:?}")),
            None => default.with_context(|| format!("--{k} is required")),
        }
    };
    let catalog = get("catalog")?;
    let (products, customers) = parse_catalog(&std::fs::read_to_string(&catalog).with_context(|| format!("reading {catalog}"))?)?;
    let opts = DriveOptions {
        rate: num("rate", None)?,
        duration: Duration::from_secs_f64(num("seconds", None)?),
        max_in_flight: num("max-in-flight", Some(1024.0))? as usize,
        seed: args.get("seed").map(|v| v.parse::<u64>().with_context(|| format!("--seed must be a whole number, not {v:?}"))).transpose()?.unwrap_or(0),
    };
    if !(opts.rate > 0.0 && opts.max_in_flight > 0) {
        bail!("--rate and --max-in-flight must be positive");
    }
    let api = BTreeMap::from([("order".to_owned(), get("order-api")?)]);
    let shop = Shop::new(reqwest::Client::new(), api, String::new());
    let report = drive(&shop, &products, &customers, &opts).await;
    println!("{}", report.to_json());
    Ok(())
}
