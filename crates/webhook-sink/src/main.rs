//! webhook-sink: a webhook receiver for development and tests (see the library docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use conveyor_webhook_sink::{Sink, serve};
use tokio_util::sync::CancellationToken;

/// Records the notifications posted to it: POST /notifications (any JSON, `Idempotency-Key`
/// header), GET /notifications (the first post of every key, and how many repeated one),
/// GET /health.
#[derive(Parser)]
#[command(name = "webhook-sink", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "WEBHOOK_SINK_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// JSONL file every post is appended to and that a restarted sink reloads; without it,
    /// posts are kept in memory only.
    #[arg(long, env = "WEBHOOK_SINK_STORE")]
    store: Option<PathBuf>,
    /// Answer 503 to the first N posts (to exercise senders' retries and breakers).
    #[arg(long, env = "WEBHOOK_SINK_FAIL_FIRST", default_value_t = 0)]
    fail_first: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let args = Args::parse();
    let sink = match &args.store {
        Some(path) => Sink::open(path, args.fail_first)?,
        None => Sink::in_memory(args.fail_first),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, store = ?args.store, fail_first = args.fail_first, "webhook sink listening");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        // Ctrl-C or SIGTERM: finish the posts in flight, then exit.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        stop.cancel();
    });
    serve(listener, Arc::new(sink), shutdown).await
}
