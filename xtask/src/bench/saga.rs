//! `cargo xtask bench saga` (being built; see issue 5).

use anyhow::{Result, bail};

use crate::proc::Signals;

#[derive(clap::Args)]
pub struct Args {
    /// Smoke mode: seconds, not minutes; checks the harness end to end, never a speed.
    #[arg(long)]
    pub quick: bool,
}

pub async fn run(_args: Args, _signals: &mut Signals) -> Result<i32> {
    bail!("cargo xtask bench saga is not built yet")
}
