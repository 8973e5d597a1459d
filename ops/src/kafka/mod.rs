//! Kafka mode, wired: a gateway (the HTTP API of `flashsale-gateway` over its
//! [`KafkaBus`] and [`Follower`]), an engine (`flashsale-engine`'s consumer-group host,
//! [`engine::start`]), or both in one process (`serve --kafka`), plus the projector
//! sidecar when Postgres is configured.
//!
//! - [`topics`]: names, partition counts and configs of `commands`, `events` and
//!   `replies`; `flashsale topics create`.
//! - [`cli`]: the `serve --kafka`, `engine`, `gateway` and `topics` subcommands.
//! - [`logid`]: which log (topic name + Kafka topic id) this deployment's snapshots
//!   and projector offsets belong to.
//!
//! Read-your-writes across the two topics: the engine produces, for every batch it
//! applies, an event record at the batch's last offset (an empty one if that command
//! changed nothing), and the follower hands a reply to its request only once the read
//! model has applied the events up to the reply's offset. A client that got its answer
//! therefore reads a state at least as new as that answer, as in embedded mode.

pub mod cli;
pub mod logid;
mod postgres;
pub mod topics;

use crate::serve::Running;
use anyhow::Context;
use flashsale_engine::kafka::{self as engine, EngineHandle, EngineOptions};
use flashsale_gateway::api::{self, ApiConfig, AppInner, RateLimit};
use flashsale_gateway::dispatch::{DispatchConfig, Dispatcher, Pending};
use flashsale_gateway::kafka::{Follower, FollowerOptions, KafkaBus};
use flashsale_gateway::kafka_reads::{
    EndOffsets, KafkaReads, KafkaReadsParts, LogStatus, Progress,
};
use flashsale_gateway::orders::OrderSource;
use flashsale_gateway::pg_orders::PgOrders;
use flashsale_gateway::readmodel::ReadModel;
use flashsale_proto::Topics;
use flashsale_runtime::bus::EngineReadiness;
use flashsale_runtime::metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use topics::TopicSpec;

/// The HTTP side of a node.
#[derive(Debug, Clone)]
pub struct GatewayParams {
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    pub gateway_id: u32,
    pub reply_deadline_ms: u64,
    pub max_in_flight: usize,
    pub max_in_flight_per_partition: usize,
    pub rate_limit_per_user: u32,
    pub rate_limit_burst: u32,
    pub demo: bool,
    /// Timeouts, connection limit and drain of the HTTP server.
    pub http: crate::config::HttpConfig,
}

/// `serve --kafka`'s admission defaults (the `gateway` command's, too): a command takes
/// four broker hops, so a rate needs ~8× the commands in flight of embedded mode.
pub const KAFKA_MAX_IN_FLIGHT: usize = 4_096;
pub const KAFKA_MAX_IN_FLIGHT_PER_PARTITION: usize = 1_024;

impl From<&crate::config::ServeConfig> for GatewayParams {
    fn from(a: &crate::config::ServeConfig) -> Self {
        GatewayParams {
            listen: a.listen,
            admin_token: a.admin_token.clone(),
            gateway_id: a.gateway_id,
            reply_deadline_ms: a.reply_deadline_ms,
            max_in_flight: a.max_in_flight.unwrap_or(KAFKA_MAX_IN_FLIGHT),
            max_in_flight_per_partition: a
                .max_in_flight_per_partition
                .unwrap_or(KAFKA_MAX_IN_FLIGHT_PER_PARTITION),
            rate_limit_per_user: a.rate_limit_per_user,
            rate_limit_burst: a.rate_limit_burst,
            demo: a.demo,
            http: a.http.clone(),
        }
    }
}

/// Where the log is.
#[derive(Debug, Clone)]
pub struct KafkaParams {
    pub brokers: String,
    pub topics: Topics,
    pub linger_ms: u32,
    /// The gateway's command batches.
    pub batching: flashsale_gateway::kafka::BatchLimits,
    /// Follow recreated topics by themselves (`--adopt-new-topics`), rather than wait
    /// for the operator.
    pub adopt_new_topics: bool,
}

/// A background task that runs until its future ends (the order projector of serve
/// mode); stopped by dropping the task at shutdown.
pub type Sidecar = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What else runs in this process besides the gateway.
#[derive(Default)]
pub struct Extras {
    /// Engine options and the snapshot store it uses.
    /// The engine and where its snapshots go (bound to the commands topic's identity
    /// once the broker answers).
    pub engine: Option<(EngineOptions, logid::StoreSpec)>,
    /// Create missing topics first (serve mode).
    pub create_topics: Option<TopicSpec>,
    /// Orders of the deployment's earlier logs, behind the read model (Postgres).
    pub order_history: Option<PgOrders>,
    pub sidecars: Vec<(&'static str, Sidecar)>,
    /// The process's metrics, when a sidecar records into them too (else a new registry).
    pub metrics: Option<Arc<Metrics>>,
    /// Read-model snapshots: where (bound to the events topic's identity at start) and
    /// when. `None`: the read model replays `events` from the start and writes none.
    pub readmodel_snapshots: Option<(logid::ReadModelPlace, flashsale_gateway::snapshot::Policy)>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("engine", &self.engine.as_ref().map(|e| &e.0))
            .finish()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking Kafka call panicked")?
}

/// Starts a Kafka-mode node: binds `gw.listen`, starts the follower (and the engine
/// and sidecars of `extras`), serves at once; `/ready` says when the read model (and
/// the engine, if any) caught up.
pub async fn start(gw: GatewayParams, k: KafkaParams, extras: Extras) -> anyhow::Result<Running> {
    let Extras {
        engine: engine_opts,
        create_topics,
        order_history,
        sidecars,
        metrics,
        readmodel_snapshots,
    } = extras;
    // The port first: one in use stops the node before anything else started (no
    // engine joining the group, no topics created, no recovery to stop again).
    // Connections made meanwhile wait in the backlog until the node serves.
    let listener = crate::serve::listen(gw.listen)?;
    if let Some(spec) = create_topics {
        // Started before the broker: wait for it first (one line, then quiet); what
        // `create` refuses then (a partition count that does not match) is for good.
        let (brokers, names) = (k.brokers.clone(), k.topics.clone());
        flashsale_runtime::patience::retry_forever(&format!("Kafka at {}", k.brokers), move || {
            flashsale_runtime::kafka::probe(&brokers, flashsale_runtime::kafka::ADMIN_TIMEOUT)?;
            topics::partition_counts(&brokers, &[&names.commands, &names.events, &names.replies])
                .map(|_| ())
        })
        .await;
        let brokers = k.brokers.clone();
        let created = blocking(move || topics::create(&brokers, &spec)).await?;
        for t in created.iter().filter(|t| t.status == "created") {
            tracing::info!(topic = %t.topic, partitions = t.partitions, "topic created");
        }
    }
    // The broker may not be up yet: wait for it (one line, then quiet) rather than
    // exit; a supervisor restarting us would only add noise.
    let (brokers, topics) = (k.brokers.clone(), k.topics.clone());
    let (partitions, replies_partitions) = flashsale_runtime::patience::retry_forever(
        &format!("Kafka at {} (topic {})", k.brokers, k.topics.commands),
        move || {
            flashsale_runtime::kafka::probe(&brokers, flashsale_runtime::kafka::ADMIN_TIMEOUT)?;
            topics::check(&brokers, &topics)
        },
    )
    .await;
    let admin_token = gw
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(crate::serve::random_token);
    let metrics = metrics.unwrap_or_else(|| Arc::new(Metrics::new()));
    let read = Arc::new(ReadModel::new(partitions, metrics.clone()));
    let pending = Arc::new(Pending::default());

    let engine: Option<EngineHandle> = match engine_opts {
        Some((opts, spec)) => {
            let log = logid::wait_for_identity(&opts.brokers, &opts.topics.commands).await;
            let store = spec.bind(&log)?;
            let mut opts = opts;
            opts.commands_topic_id = Some(log.id.clone());
            let m = metrics.clone();
            Some(blocking(move || engine::start(opts, store, m)).await?)
        }
        None => None,
    };
    let engine_ready: Option<Arc<dyn EngineReadiness>> = engine
        .as_ref()
        .map(|e| e.status.clone() as Arc<dyn EngineReadiness>);
    let engine_status = engine.as_ref().map(|e| e.status.clone());

    let snapshots = match readmodel_snapshots {
        Some((place, policy)) => {
            let log = logid::wait_for_identity(&k.brokers, &k.topics.events).await;
            Some(flashsale_gateway::snapshot::Snapshots {
                store: place.bind(&log)?,
                policy,
            })
        }
        None => None,
    };
    let follower_ready = Arc::new(AtomicBool::new(false));
    // One health for the gateway's clients: an outage is told once for all.
    let health = flashsale_runtime::kafka::KafkaHealth::new("the gateway", k.brokers.clone());
    let log = Arc::new(LogStatus::default());
    let progress = Arc::new(Progress::new(partitions));
    let follower = {
        let opts = FollowerOptions {
            brokers: k.brokers.clone(),
            topics: k.topics.clone(),
            gateway_id: gw.gateway_id,
            partitions,
            replies_partitions,
            health: health.clone(),
            snapshots,
            log: log.clone(),
            progress: progress.clone(),
            adopt_new_topics: k.adopt_new_topics,
        };
        let (read, pending, ready) = (read.clone(), pending.clone(), follower_ready.clone());
        blocking(move || Follower::start(opts, read, pending, ready)).await?
    };
    let bus = Arc::new(KafkaBus::new(
        &k.brokers,
        &k.topics,
        partitions,
        k.linger_ms,
        k.batching,
        follower_ready.clone(),
        engine_ready,
        health.clone(),
        log.clone(),
    )?);
    let dispatcher = Dispatcher::new(
        bus.clone(),
        pending,
        DispatchConfig {
            gateway_id: gw.gateway_id,
            reply_deadline: Duration::from_millis(gw.reply_deadline_ms),
            max_in_flight: gw.max_in_flight.max(1),
            max_in_flight_per_partition: gw.max_in_flight_per_partition.max(1),
        },
    );
    // Read-your-writes across gateways: the read model, caught up with the log as far
    // as a read needs, then Postgres for the orders of earlier logs.
    let orders: Arc<dyn OrderSource> = Arc::new(KafkaReads::new(KafkaReadsParts {
        read: read.clone(),
        progress,
        status: log,
        follower_ready,
        ends: EndOffsets::new(&k.brokers, &k.topics.events, health.clone())?,
        health,
        partitions,
        history: order_history,
    }));
    let app = AppInner::new(
        dispatcher,
        read,
        orders,
        metrics,
        ApiConfig {
            admin_token: admin_token.clone(),
            rate_limit: RateLimit {
                per_second: gw.rate_limit_per_user,
                burst: gw.rate_limit_burst,
            },
        },
    );
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = api::router(app.clone());
    let mut background = Vec::new();
    {
        let app = app.clone();
        background.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                app.housekeeping();
            }
        }));
    }
    for (name, task) in sidecars {
        background.push(tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %format!("{e:#}"), "background task stopped");
            }
        }));
    }
    if gw.demo {
        let app = app.clone();
        tokio::spawn(async move { crate::serve::create_demo_sale(&app).await });
    }
    background.push(flashsale_gateway::stream::spawn_recorder(app.clone()));
    background.push(flashsale_gateway::stream::spawn_log_end_probe(
        app.clone(),
        command_ends(k.brokers.clone(), k.topics.commands.clone(), partitions),
    ));
    let limits = gw.http.limits();
    let streams_app = app.clone();
    let done = tokio::spawn(async move {
        // Bounded by the drain time, then the engine lets its partitions go (acks,
        // commit, final snapshots) whatever the clients do.
        // An engine that stops by itself (what it cannot go on from) stops the node
        // in order too: requests drain, then the sidecars, the gateway's clients,
        // and the engine, whose error is the node's.
        flashsale_gateway::server::serve(listener, router, limits, async move {
            tokio::select! {
                _ = stopped => {}
                _ = engine_stopped(engine_status) => {
                    tracing::error!("the engine stopped by itself; stopping the gateway and the projector");
                }
            }
            // Open console streams end now, or they would hold the stop back.
            streams_app.streams.close();
        })
        .await;
        for t in background {
            t.abort();
        }
        tokio::task::spawn_blocking(move || {
            bus.close(Duration::from_secs(5));
            follower.stop();
            match engine {
                Some(e) => e.stop(),
                None => Ok(()),
            }
        })
        .await
        .context("shutdown panicked")?
    });
    Ok(Running {
        addr,
        admin_token,
        app,
        stop,
        done,
    })
}

/// Resolves once the engine of this process stopped by itself (never without one).
async fn engine_stopped(status: Option<Arc<engine::EngineStatus>>) {
    let Some(status) = status else {
        return std::future::pending().await;
    };
    while !status.is_stopped() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The console's lag probe (`flashsale_gateway::stream::spawn_log_end_probe`): the end
/// offset of each `commands` partition, from one consumer made at the first call.
fn command_ends(
    brokers: String,
    topic: String,
    partitions: u32,
) -> impl FnMut() -> anyhow::Result<Vec<u64>> + Send + 'static {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut consumer: Option<BaseConsumer> = None;
    move || {
        if consumer.is_none() {
            consumer = Some(
                flashsale_runtime::kafka::base_config(&brokers, "flashsale-console-lag")
                    .set("group.id", "flashsale-console-lag")
                    .set("enable.auto.commit", "false")
                    .create()
                    .context("cannot create the Kafka consumer of the console's lag probe")?,
            );
        }
        let c = consumer.as_ref().expect("just made");
        (0..partitions as i32)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(&topic, p, Duration::from_secs(2))
                    .with_context(|| format!("end offset of {topic} partition {p}"))?;
                Ok(u64::try_from(high).unwrap_or(0))
            })
            .collect()
    }
}

/// Runs a node until `shutdown` resolves, printing where it listens.
pub async fn serve(
    gw: GatewayParams,
    k: KafkaParams,
    extras: Extras,
    what: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let generated = gw.admin_token.as_deref().is_none_or(str::is_empty);
    let brokers = k.brokers.clone();
    let running = start(gw, k, extras).await?;
    println!(
        "flashsale {what} listening on http://{} (Kafka mode, brokers {brokers})",
        running.addr
    );
    // The start-up summary, one line (per-partition detail is at debug level).
    tracing::info!(
        mode = "kafka",
        process = what,
        listen = %running.addr,
        partitions = running.app.dispatcher.partitions(),
        brokers = %brokers,
        "listening"
    );
    if generated {
        println!(
            "admin token (generated for this run; set --admin-token to fix it): {}",
            running.admin_token
        );
    }
    let Running { stop, done, .. } = running;
    tokio::pin!(done);
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: finishing requests, letting partitions go");
            let _ = stop.send(());
            done.await.context("server task panicked")?
        }
        // Stopped by itself (its engine failed): the error decides the exit code.
        r = &mut done => r.context("server task panicked")?,
    }
}

/// Runs an engine alone until `shutdown` resolves (or the engine stops by itself).
pub async fn run_engine(
    opts: EngineOptions,
    store: logid::StoreSpec,
    metrics_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let metrics_server = match metrics_listen {
        Some(addr) => {
            Some(flashsale_runtime::telemetry::serve_metrics(addr, metrics.clone()).await?)
        }
        None => None,
    };
    let (group, brokers) = (opts.group_id.clone(), opts.brokers.clone());
    tokio::pin!(shutdown);
    // Started before the broker: wait for it (and the topics), still obeying a stop.
    let log = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        log = logid::wait_for_identity(&opts.brokers, &opts.topics.commands) => log,
    };
    let mut log = log;
    let result = loop {
        let store = store.clone().bind(&log)?;
        let (mut o, m) = (opts.clone(), metrics.clone());
        o.commands_topic_id = Some(log.id.clone());
        let handle = blocking(move || engine::start(o, store, m)).await?;
        println!("flashsale engine running (group {group}, brokers {brokers})");
        let stopped_by_itself = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !handle.is_running() {
                        break true;
                    }
                }
            }
        };
        if !stopped_by_itself {
            tracing::info!("shutting down: letting partitions go");
        }
        let r = tokio::task::spawn_blocking(move || handle.stop())
            .await
            .context("engine shutdown panicked")?;
        match r {
            // `--adopt-new-topics`: start again, bound to the new log.
            Err(e) if e.downcast_ref::<engine::TopicRecreated>().is_some() => {
                tracing::warn!("{e}; starting again on the new topics (--adopt-new-topics)");
                log = tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    log = logid::wait_for_identity(&opts.brokers, &opts.topics.commands) => log,
                };
            }
            Err(e) => break Err(e),
            Ok(()) if stopped_by_itself => {
                break Err(engine::EngineFailed("the engine thread stopped".into()).into())
            }
            Ok(()) => break Ok(()),
        }
    };
    if let Some(s) = metrics_server {
        s.abort();
    }
    result
}
