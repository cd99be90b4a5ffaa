//! `cargo xtask fault` (issue 15; being built).

use anyhow::{Result, bail};

use crate::proc::Signals;

#[derive(clap::Args, Debug)]
pub struct Args {}

/// Returns the exit code.
pub async fn run(_args: Args, _signals: &mut Signals) -> Result<i32> {
    bail!("`cargo xtask fault` is not built yet")
}
