//! The worker process every service runs: its consumers, its outbox relay (push delivery)
//! or its reads of its publishers' outboxes (pull delivery), the pruner of done messages,
//! any extra loops the service has, and a small HTTP server for health and metrics; all
//! stopped together on SIGINT/SIGTERM or when one of them fails.

use std::time::Duration;

use anyhow::Context;
use conveyor_queue::{Consumer, ConsumerOptions, Pruner, Relay};
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Delivery, DeliveryArgs, WorkerArgs};

/// A loop of the service's own: started with the worker's shutdown token.
type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// A worker under construction: what it runs.
pub struct Worker {
    service: &'static str,
    pool: PgPool,
    args: WorkerArgs,
    consumer: Option<Consumer>,
    relay: Option<Relay>,
    /// Pull delivery: the routes of this service's outbox, whose subscribers it registers.
    pulled_routes: Option<conveyor_queue::Routes>,
    extra: Vec<(&'static str, Task)>,
}

impl Worker {
    pub fn new(service: &'static str, pool: PgPool, args: WorkerArgs) -> Self {
        Worker { service, pool, args, consumer: None, relay: None, pulled_routes: None, extra: Vec::new() }
    }

    /// The pool on this worker's database, for handlers that query it themselves (lease mode).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The consumer options the flags describe, for the service's [`Consumer`].
    pub fn consumer_options(&self) -> ConsumerOptions {
        ConsumerOptions {
            concurrency: self.args.concurrency,
            batch_size: self.args.batch_size,
            poll_interval: self.args.poll_interval,
            shutdown_grace: self.args.shutdown_grace,
        }
    }

    /// A consumer on this worker's database, configured from the flags, named after the
    /// service (its spans' `messaging.consumer.group.name`).
    pub fn consumer(&self) -> Consumer {
        Consumer::new(self.pool.clone()).named(self.service).with_options(self.consumer_options())
    }

    pub fn with_consumer(mut self, consumer: Consumer) -> Self {
        crate::metrics::register_topics("inbox", consumer.topics());
        self.consumer = Some(consumer);
        self
    }

    /// Delivery between this service and the others (see [`Delivery`]), after
    /// [`Worker::with_consumer`]: `routes` says who receives what this service publishes,
    /// `publishers` who publishes what it receives (both from `contracts`).
    ///
    /// - push: relays this service's outbox to its subscribers, at the URLs of `--subscriber`;
    /// - pull: its consumer reads each publisher's outbox at the URL of `--publisher` (one
    ///   is needed for each of `publishers`), and its own outbox waits for its subscribers
    ///   to pull it: they are registered at the start, so the pruner keeps their rows until
    ///   they have read them.
    pub fn with_delivery(mut self, routes: conveyor_queue::Routes, publishers: &[&str], args: &DeliveryArgs) -> anyhow::Result<Self> {
        crate::metrics::register_topics("outbox", routes.topics());
        match args.delivery {
            Delivery::Push => {
                let relay = Relay::connect(self.pool.clone(), routes, args.subscribers.iter().cloned())
                    .with_context(|| format!("configuring the {} relay (give each subscriber with --subscriber name=postgres://…)", self.service))?;
                self.relay = Some(relay);
            }
            Delivery::Pull => {
                let missing: Vec<&str> = publishers.iter().copied().filter(|p| !args.publishers.iter().any(|(name, _)| name == p)).collect();
                if !missing.is_empty() {
                    anyhow::bail!(
                        "pull delivery: the {} worker reads the outboxes of {}; give each with --publisher name=postgres://… (missing: {})",
                        self.service,
                        publishers.join(", "),
                        missing.join(", ")
                    );
                }
                if let Some(mut consumer) = self.consumer.take() {
                    for (name, url) in &args.publishers {
                        // One connection per pull loop, the position reports and the wake-ups.
                        let pool = conveyor_queue::peer_pool("publisher", name, url, self.args.concurrency as u32 + 2)?;
                        consumer = consumer.pull_from(name.clone(), pool);
                    }
                    self.consumer = Some(consumer);
                }
                self.pulled_routes = Some(routes);
            }
        }
        Ok(self)
    }

    /// Another loop of the service's own, run until the token is cancelled.
    pub fn with_task<F>(mut self, name: &'static str, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send + 'static,
    {
        self.extra.push((name, Box::new(task)));
        self
    }

    /// Runs everything until `shutdown` (or a failure, which stops the rest and is returned).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let service = self.service;
        if let Some(routes) = &self.pulled_routes {
            conveyor_queue::pull::expect_pullers(&self.pool, routes).await.context("registering the subscribers that pull this outbox")?;
        }
        let stop = shutdown.child_token();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        let (pool, http) = (self.pool.clone(), self.args.http.clone());
        let t = stop.clone();
        tasks.spawn(async move { ("http", crate::http::serve_ops(service, &http, pool, t).await) });
        if let Some(consumer) = self.consumer {
            let topics: Vec<String> = consumer.topics().map(str::to_owned).collect();
            tracing::info!(service, ?topics, "consuming");
            let t = stop.clone();
            tasks.spawn(async move { ("consumer", consumer.run(t).await.map_err(Into::into)) });
        }
        if let Some(relay) = self.relay {
            let t = stop.clone();
            tasks.spawn(async move { ("relay", relay.run(t).await.map_err(Into::into)) });
        }
        let pruner = Pruner::new(self.pool.clone());
        let t = stop.clone();
        tasks.spawn(async move { ("pruner", pruner.run(t).await.map_err(Into::into)) });
        for (name, task) in self.extra {
            let fut = task(stop.clone());
            tasks.spawn(async move { (name, fut.await) });
        }
        tracing::info!(service, "worker running");
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let (name, result) = joined.context("a worker task panicked")?;
            match result {
                Ok(()) if stop.is_cancelled() => {}
                Ok(()) => tracing::info!(service, task = name, "task finished"),
                Err(e) => {
                    tracing::error!(service, task = name, error = format!("{e:#}"), "task failed; stopping the worker");
                    failure.get_or_insert(e.context(format!("{name} failed")));
                    stop.cancel();
                }
            }
        }
        // Give the loops' last statements a moment to reach the server before the pool goes.
        tokio::time::timeout(Duration::from_secs(5), self.pool.close()).await.ok();
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
