//! What the commands need from Debian's packages (Prometheus for the e2e test, Chromium for
//! the docs page test, RabbitMQ for the peers benchmark): found on `PATH`, else installed
//! with `apt-get` when we are root, else the exact command to run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::proc::{self, Outcome, Signals};

/// The first `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The command a person runs to install `packages`.
pub fn install_command(packages: &[&str]) -> String {
    format!("sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}", packages.join(" "))
}

/// `apt-get update` then `apt-get install -y --no-install-recommends packages`, with a
/// temporary `policy-rc.d` so that no package starts a system service (an existing one, a
/// container's, is left as it is). `Ok(Ok(exit code))`, or `Ok(Err(signal))`.
pub async fn install(packages: &[&str], signals: &mut Signals) -> Result<Result<i32, i32>> {
    let apt = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(std::process::Stdio::null());
        cmd
    };
    match proc::run(apt(&["update"]), signals).await? {
        Outcome::Interrupted(sig) => return Ok(Err(sig)),
        Outcome::Exited(0) => {}
        Outcome::Exited(code) => println!("xtask: apt-get update failed (exit code {code}); trying the install anyway"),
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# cargo xtask: no service starts during its apt-get install\nexit 101\n")
            .and_then(|()| std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755)))
            .with_context(|| format!("could not write {}", policy.display()))?;
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(packages);
    let installed = proc::run(apt(&args), signals).await;
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    Ok(match installed? {
        Outcome::Interrupted(sig) => Err(sig),
        Outcome::Exited(code) => Ok(code),
    })
}

/// Makes sure every `(program, package)` is there: installs the missing packages when root;
/// otherwise says the command to run. `Ok(Ok(()))` when all are present, `Ok(Err(exit
/// code))` to stop with.
pub async fn require(what: &str, needed: &[(&str, &str)], signals: &mut Signals) -> Result<Result<(), i32>> {
    let mut missing: Vec<&str> = needed.iter().filter(|(program, _)| which(program).is_none()).map(|(_, package)| *package).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(Ok(()));
    }
    if !is_root() {
        eprintln!("xtask: {what} needs {} (missing here); install as root and run again:\n    {}", missing.join(", "), install_command(&missing));
        return Ok(Err(1));
    }
    println!("xtask: {what} needs {}: installing (apt-get, no service started)", missing.join(", "));
    match install(&missing, signals).await? {
        Err(sig) => return Ok(Err(128 + sig)),
        Ok(0) => {}
        Ok(code) => {
            eprintln!("xtask: apt-get install {} failed (exit code {code})", missing.join(" "));
            return Ok(Err(code));
        }
    }
    let still: Vec<&str> = needed.iter().filter(|(program, _)| which(program).is_none()).map(|(program, _)| *program).collect();
    if !still.is_empty() {
        eprintln!("xtask: installed {} but {} is still not on PATH", missing.join(" "), still.join(", "));
        return Ok(Err(1));
    }
    Ok(Ok(()))
}
