//! One child process of the stack: started with its flags and environment, its output in a
//! log file, stopped with SIGTERM (or killed with SIGKILL, as a crash would).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// How to start a process, kept so it can be started again after a kill.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Polled until it answers 2xx; `None` for a process that runs to completion.
    pub ready_url: Option<String>,
}

pub struct Proc {
    pub spec: Spec,
    child: Child,
}

impl Spec {
    pub fn spawn(&self) -> Result<Proc> {
        let log = File::options().create(true).append(true).open(&self.log).with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        Ok(Proc { spec: self.clone(), child })
    }

    /// Runs a process that exits by itself (a migrator) and fails unless it exits 0.
    pub async fn run_to_completion(&self, limit: Duration) -> Result<()> {
        let mut proc = self.spawn()?;
        let status = tokio::time::timeout(limit, proc.child.wait())
            .await
            .with_context(|| format!("{} did not finish within {limit:?}", self.name))??;
        if !status.success() {
            bail!("{} failed ({status}):\n{}", self.name, tail(&self.log, 15));
        }
        Ok(())
    }
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the ready URL answers 2xx; fails early, with the log's tail, when the
    /// process exits first.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, limit: Duration) -> Result<()> {
        let Some(url) = self.spec.ready_url.clone() else { return Ok(()) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready:\n{}", self.spec.name, tail(&self.spec.log, 20));
            }
            if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(1)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready at {url} within {limit:?}:\n{}", self.spec.name, tail(&self.spec.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash: no shutdown code runs.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.child.start_kill().ok();
        Ok(self.child.wait().await?)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => self.kill().await,
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The last `n` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
