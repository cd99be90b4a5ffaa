//! Signals and child processes: Ctrl-C / SIGTERM / SIGHUP stop what xtask started.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Listens for SIGINT, SIGTERM and SIGHUP from the moment it is installed (so they no longer
/// kill xtask outright: it gets to stop its children and its PostgreSQL first). A clone
/// hears the same signals, for children run side by side.
#[derive(Clone)]
pub struct Signals {
    rx: watch::Receiver<Option<i32>>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let (tx, rx) = watch::channel(None);
        let mut streams = Vec::new();
        for (kind, no) in [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
        ] {
            streams.push((
                signal(kind).context("could not install a signal handler")?,
                no,
            ));
        }
        for (mut stream, no) in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tx.send_if_modified(|v| {
                        if v.is_none() {
                            *v = Some(no);
                            true
                        } else {
                            false
                        }
                    });
                }
            });
        }
        Ok(Signals { rx })
    }

    /// The first signal received so far, if any.
    pub fn received(&self) -> Option<i32> {
        *self.rx.borrow()
    }

    /// Wait for a signal; returns its number.
    pub async fn wait(&mut self) -> i32 {
        match self.rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.expect("checked"),
            // All senders gone cannot happen while the runtime lives; treat as SIGTERM.
            Err(_) => libc::SIGTERM,
        }
    }
}

pub enum Outcome {
    /// The child exited with this code (128+N when a signal N killed it).
    Exited(i32),
    /// We received this signal and stopped the child.
    Interrupted(i32),
}

/// Run a child with inherited stdout/stderr, in its own process group; on a signal, pass the
/// signal to the whole group, give it 10 s, then SIGKILL the group.
pub async fn run(mut cmd: tokio::process::Command, signals: &mut Signals) -> Result<Outcome> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = signals.received() {
        return Ok(Outcome::Interrupted(sig));
    }
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    let pgid = child.id().map(|id| id as i32);
    let status = tokio::select! {
        status = child.wait() => status.with_context(|| format!("waiting for {what}"))?,
        sig = signals.wait() => {
            if let Some(pgid) = pgid {
                // SAFETY: plain kill(2) of the child's own process group.
                unsafe { libc::kill(-pgid, sig) };
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait().await;
                }
                // Whatever of the group outlived its leader.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            return Ok(Outcome::Interrupted(sig));
        }
    };
    Ok(Outcome::Exited(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }))
}

/// Run a child and capture its output (short-lived tools like psql and pgbench); on a signal
/// it is killed and `Interrupted` returned.
pub async fn capture(
    mut cmd: tokio::process::Command,
    signals: &mut Signals,
) -> Result<std::result::Result<std::process::Output, i32>> {
    if let Some(sig) = signals.received() {
        return Ok(Err(sig));
    }
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std());
    let fut = cmd.output();
    tokio::select! {
        out = fut => Ok(Ok(out.with_context(|| format!("could not run {what}"))?)),
        sig = signals.wait() => Ok(Err(sig)),
    }
}
