//! Embedded mode, wired: one process runs the gateway (`flashsale-gateway`), the
//! embedded log and engine actors (`flashsale-engine`), and connects them in memory:
//! commands go through the embedded log's [`CommandBus`](flashsale_runtime::bus::CommandBus),
//! and each applied batch comes back through [`LocalOutput`]: events to the read
//! model first, then replies to the requests waiting for them (read-your-writes).

use crate::config::ServeConfig;
use crate::publish::embedded::{self as publisher, EmbeddedFeed};
use anyhow::Context;
use flashsale_core::actor::{Applied, SnapshotPolicy};
use flashsale_core::State;
use flashsale_engine::embedded::{EmbeddedNode, EmbeddedOptions, EngineOutput};
use flashsale_gateway::api::{self, ApiConfig, AppInner, RateLimit};
use flashsale_gateway::dispatch::{DispatchConfig, Dispatcher, Pending};
use flashsale_gateway::readmodel::ReadModel;
use flashsale_gateway::{json, sales};
use flashsale_proto::{Cents, ProductSpec, SaleId, SaleMeta, SkuId};
use flashsale_runtime::metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Embedded admission defaults (`--max-in-flight-per-partition`, `--max-in-flight`):
/// measured under 2× overload, README "The 10:00 crowd". 8 partitions × 128.
pub const EMBEDDED_MAX_IN_FLIGHT_PER_PARTITION: usize = 128;
pub const EMBEDDED_MAX_IN_FLIGHT: usize = 1_024;

/// The embedded node's admission limits (whole node, per partition): the flags, or the
/// embedded defaults.
pub fn admission(args: &ServeConfig) -> (usize, usize) {
    (
        args.max_in_flight.unwrap_or(EMBEDDED_MAX_IN_FLIGHT).max(1),
        args.max_in_flight_per_partition
            .unwrap_or(EMBEDDED_MAX_IN_FLIGHT_PER_PARTITION)
            .max(1),
    )
}

/// The node's snapshot and retention policy (the embedded publisher replays with it).
fn snapshot_policy(args: &ServeConfig) -> SnapshotPolicy {
    SnapshotPolicy {
        every_commands: args.snapshot_every_commands.max(1),
        every_ms: args.snapshot_every_secs.max(1) * 1000,
        retention_ms: Some(args.retention_secs.saturating_mul(1000)),
    }
}

/// A listener on `addr` (the node's `--listen`), with an error that says what to do.
pub fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    flashsale_gateway::server::bind(addr).with_context(|| {
        format!("cannot listen on {addr}; is another server using it? pass --listen")
    })
}

/// In-process output of the engine actors: events to the read model (and, with
/// `--publish-kafka`, to the publisher's feed), then replies to waiting requests, so a
/// client that got its reply reads its own write.
#[derive(Debug)]
pub struct LocalOutput {
    pub read: Arc<ReadModel>,
    pub pending: Arc<Pending>,
    pub feed: Option<Arc<EmbeddedFeed>>,
}

impl EngineOutput for LocalOutput {
    fn deliver(&self, partition: u32, applied: Applied) {
        for ev in &applied.events {
            self.read.apply(ev);
        }
        if let Some(feed) = &self.feed {
            // The offset after the batch's last record with an output (E1 of
            // publish::embedded): replies and events both carry their command's offset.
            let through = applied
                .events
                .iter()
                .map(|e| e.offset)
                .chain(applied.replies.iter().map(|(_, r)| r.offset))
                .max()
                .map(|o| o + 1);
            feed.push(partition, applied.events, through);
        }
        for (_, reply) in applied.replies {
            self.pending.complete(reply);
        }
    }
    fn reset(&self, state: &State) {
        self.read.reset(state);
        if let Some(feed) = &self.feed {
            feed.reset(u32::from(state.partition()), state.next_offset());
        }
    }
}

/// A server started by [`start`]: its address, its admin token, and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub app: api::AppState,
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

impl Running {
    /// Graceful stop: no new requests, in-flight ones finish, final snapshots written.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.done.await.context("server task panicked")?
    }
    /// Resolves when the server stops by itself.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Running { stop, done, .. } = self;
        let r = done.await.context("server task panicked")?;
        drop(stop);
        r
    }
}

pub(crate) fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the embedded server: binds `args.listen` (port 0 picks one), opens the data
/// directory, recovers in the background, serves at once (`/ready` says when the
/// engine has caught up).
pub async fn start(args: ServeConfig) -> anyhow::Result<Running> {
    args.validate()?;
    let admin_token = args
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(random_token);
    let metrics = Arc::new(Metrics::new());
    let read = Arc::new(ReadModel::new(args.partitions, metrics.clone()));
    let pending = Arc::new(Pending::default());
    let feed = args
        .publish
        .as_ref()
        .map(|_| EmbeddedFeed::new(args.partitions, publisher::FEED_CAPACITY));
    let output = Arc::new(LocalOutput {
        read: read.clone(),
        pending: pending.clone(),
        feed: feed.clone(),
    });
    // Bind before the engine starts: a port in use is refused here, before any
    // partition recovers, so the operator reads one line ("cannot listen …") and no
    // ERROR about partitions stopped half-way.
    let listener = listen(args.listen)?;
    let node = EmbeddedNode::start(
        EmbeddedOptions {
            data_dir: args.data_dir.clone(),
            partitions: args.partitions,
            snapshot: snapshot_policy(&args),
            keep_snapshots: args.keep_snapshots.max(1),
            snapshot_reserve_bytes: args.snapshot_reserve_mb.saturating_mul(1 << 20),
            queue_depth: args.queue_depth,
            ready_with_failed_partitions: args.ready_with_failed_partitions,
        },
        output,
        metrics.clone(),
    )?;
    // After the node: it created the data directory and holds its lock.
    let publishing = match (&args.publish, feed) {
        (Some(kafka), Some(feed)) => Some(publisher::start(
            publisher::EmbeddedPublisher {
                kafka: kafka.clone(),
                data_dir: args.data_dir.clone(),
                partitions: args.partitions,
                policy: snapshot_policy(&args),
            },
            feed,
        )?),
        _ => None,
    };
    let (max_in_flight, max_in_flight_per_partition) = admission(&args);
    let dispatcher = Dispatcher::new(
        node.bus(),
        pending,
        DispatchConfig {
            gateway_id: args.gateway_id,
            // 0 is allowed: every request that is not answered at once gets 503 (tests use it).
            reply_deadline: Duration::from_millis(args.reply_deadline_ms),
            max_in_flight,
            max_in_flight_per_partition,
        },
    );
    let app = AppInner::new(
        dispatcher,
        read.clone(),
        read,
        metrics,
        ApiConfig {
            admin_token: admin_token.clone(),
            rate_limit: RateLimit {
                per_second: args.rate_limit_per_user,
                burst: args.rate_limit_burst,
            },
        },
    );
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = api::router(app.clone());
    let housekeeping = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                app.housekeeping();
            }
        })
    };
    let recorder = flashsale_gateway::stream::spawn_recorder(app.clone());
    if args.demo {
        let app = app.clone();
        tokio::spawn(async move { create_demo_sale(&app).await });
    }
    let limits = args.http.limits();
    let streams_app = app.clone();
    let done = tokio::spawn(async move {
        // Bounded by the drain time: a silent or slow client cannot hold the final
        // snapshots back.
        flashsale_gateway::server::serve(listener, router, limits, async move {
            let _ = stopped.await;
            // Open console streams end now, or they would hold the stop back.
            streams_app.streams.close();
        })
        .await;
        housekeeping.abort();
        recorder.abort();
        node.shutdown().await;
        // After the node: what its last batches applied is in the feed, published now.
        if let Some(p) = publishing {
            p.stop().await;
        }
        Ok(())
    });
    Ok(Running {
        addr,
        admin_token,
        app,
        stop,
        done,
    })
}

/// Runs the embedded server until `shutdown` resolves.
pub async fn serve(args: ServeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let generated = args.admin_token.as_deref().is_none_or(str::is_empty);
    let (data_dir, partitions) = (args.data_dir.clone(), args.partitions);
    let running = start(args).await?;
    println!(
        "flashsale listening on http://{} (embedded mode, {partitions} partitions, data dir {})",
        running.addr,
        data_dir.display()
    );
    // The start-up summary, one line (per-partition detail is at debug level).
    tracing::info!(mode = "embedded", listen = %running.addr, partitions, data_dir = %data_dir.display(), "listening");
    if generated {
        println!(
            "admin token (generated for this run; set --admin-token to fix it): {}",
            running.admin_token
        );
    }
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: finishing requests and writing snapshots");
            running.stop().await
        }
    }
}

pub(crate) async fn create_demo_sale(app: &api::AppState) {
    for _ in 0..600 {
        if app.dispatcher.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if app.read.has_products() {
        tracing::info!("demo: products already exist; not creating the demo sale");
        return;
    }
    let now = json::now_ms() / 1000 * 1000;
    let item =
        |sku: &str, name: &str, category: &str, base: u64, flash: u64, total: u64| ProductSpec {
            sku: SkuId::parse(sku).expect("demo SKU is valid"),
            name: name.into(),
            description: format!("{name}, flash-sale demo"),
            category: category.into(),
            base_price: Cents(base),
            flash_sale_price: Cents(flash),
            total_inventory: total,
            per_user_limit: 1,
            image_url: String::new(),
        };
    let products = vec![
        item(
            "IPHONE15-256GB",
            "iPhone 15 256GB",
            "Electronics",
            129_999,
            99_999,
            100,
        ),
        item(
            "PS5-SLIM",
            "PlayStation 5 Slim",
            "Gaming",
            49_999,
            39_999,
            50,
        ),
        item(
            "AIRPODS-PRO2",
            "AirPods Pro (2nd gen)",
            "Audio",
            24_999,
            17_999,
            200,
        ),
    ];
    let meta = SaleMeta {
        sale_id: SaleId(ulid::Ulid::new().0),
        name: "Demo Flash Sale".into(),
        starts_at: now,
        ends_at: now + 24 * 3600 * 1000,
        reservation_ttl_s: 120,
        all_skus: products.iter().map(|p| p.sku.clone()).collect(),
    };
    let id = meta.sale_id;
    match sales::create_sale(&app.dispatcher, &app.read, meta, products).await {
        Ok(_) => println!(
            "demo sale {id} is open: IPHONE15-256GB (100), PS5-SLIM (50), AIRPODS-PRO2 (200)"
        ),
        Err(e) => tracing::warn!(error = %e.payload.message, "demo sale not created"),
    }
}
