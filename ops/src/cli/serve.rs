//! The flags of `serve` (both modes): the HTTP node, the embedded log, `--kafka` and
//! what it adds, and their conversion into [`crate::config`].

use super::{H_ADMISSION, H_SERVER, H_SERVE_KAFKA, H_SNAPSHOTS};
use crate::config::{
    EngineGroupConfig, HttpConfig, KafkaServeConfig, ReadModelSnapshotConfig, ServeCommandConfig,
    ServeConfig,
};
pub use crate::config::{DEFAULT_RETENTION_SECS, MAX_RETENTION_SECS};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `serve`'s own flags: the HTTP node and, embedded, the log and snapshots.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for the HTTP API.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080", help_heading = H_SERVER)]
    pub listen: SocketAddr,
    /// Bearer token for /api/v1/admin/*. Without one, a random token is generated and printed at start.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true, help_heading = H_SERVER)]
    pub admin_token: Option<String>,
    /// Directory for the command log and snapshots (embedded mode). Created if missing.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data", help_heading = H_SERVER)]
    pub data_dir: PathBuf,
    /// Number of partitions (engine actors). Fixed for the life of a data directory.
    #[arg(long, env = "FLASHSALE_PARTITIONS", default_value_t = 8, help_heading = H_SERVER)]
    pub partitions: u32,
    /// Create a demo sale of a few products opening now (only when no products exist yet).
    #[arg(long, env = "FLASHSALE_DEMO", help_heading = H_SERVER)]
    pub demo: bool,
    /// This gateway's id: the partition of the replies topic it reads.
    #[arg(long, env = "FLASHSALE_GATEWAY_ID", default_value_t = 0, help_heading = H_SERVER)]
    pub gateway_id: u32,
    /// How long a request waits for the engine's reply before answering 503, counted
    /// from when the server read its head; a request whose deadline passed before its
    /// turn is never put on the log (docs/overload.md).
    #[arg(long, env = "FLASHSALE_REPLY_DEADLINE_MS", default_value_t = 2000, help_heading = H_ADMISSION)]
    pub reply_deadline_ms: u64,
    /// Admission: most commands awaiting a reply at once, all partitions together;
    /// past it, 503 + Retry-After at once, nothing done. Sized from the latency target,
    /// not from memory [default: 1024 embedded (8 partitions × 128), 4096 with --kafka].
    /// A deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", help_heading = H_ADMISSION)]
    pub max_in_flight: Option<usize>,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One hot SKU cannot take the whole node's budget
    /// from the other products of the sale. Sized from the latency target by
    /// measurement (docs/performance.md, "The 10:00 crowd") [default: 128 embedded, 1024 with
    /// --kafka]. Embedded, one partition answers 10,000–16,000 holds/s on 2 cores, so
    /// 128 waiting commands are ~10 ms of queue; at twice the node's capacity 128 kept
    /// the admitted p99 near 100 ms where 1,024 let it reach 0.4–0.9 s. With --kafka a
    /// command takes four broker hops (~10 ms under load), so the same rate needs ~8×
    /// the commands in flight: 128 there turned most of a 10,000/s flash crowd away.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION", help_heading = H_ADMISSION)]
    pub max_in_flight_per_partition: Option<usize>,
    /// Commands queued per partition in the embedded log's writer before new ones get
    /// 503 (a backstop behind --max-in-flight-per-partition; the writer commits up to
    /// 4,096 records per fsync).
    #[arg(long, env = "FLASHSALE_QUEUE_DEPTH", default_value_t = 4_096, help_heading = H_ADMISSION)]
    pub queue_depth: usize,
    /// Report ready (`/ready` 200) while some partitions failed recovery and stay down
    /// (the others serve either way, and `/ready` names the failed ones). Off: a node
    /// with a failed partition answers `/ready` 503, so a load balancer skips it.
    #[arg(
        long,
        env = "FLASHSALE_READY_WITH_FAILED_PARTITIONS",
        default_value_t = false, help_heading = H_SERVER)]
    pub ready_with_failed_partitions: bool,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5, help_heading = H_ADMISSION)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10, help_heading = H_ADMISSION)]
    pub rate_limit_burst: u32,
    /// Snapshot a partition after this many commands...
    #[arg(
        long,
        env = "FLASHSALE_SNAPSHOT_EVERY_COMMANDS",
        default_value_t = 50_000, help_heading = H_SNAPSHOTS)]
    pub snapshot_every_commands: u64,
    /// ...or after this many seconds of log time, whichever comes first.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_EVERY_SECS", default_value_t = 30, help_heading = H_SNAPSHOTS)]
    pub snapshot_every_secs: u64,
    /// Snapshots kept per partition.
    #[arg(long, env = "FLASHSALE_KEEP_SNAPSHOTS", default_value_t = 3, help_heading = H_SNAPSHOTS)]
    pub keep_snapshots: usize,
    /// Seconds of log time that expired and cancelled reservations (and idempotency
    /// keys) are remembered after they end (a cancelled hold at least until its
    /// expiresAt); then they are pruned from the engine's state, its snapshots and the
    /// read model, and a GET answers 404 as for an unknown id. Orders are never
    /// pruned. 1-2592000 (30 days).
    #[arg(long, env = "FLASHSALE_RETENTION_SECS", default_value_t = DEFAULT_RETENTION_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_RETENTION_SECS), help_heading = H_SNAPSHOTS)]
    pub retention_secs: u64,
    /// Free space (MiB) a snapshot must leave on the data directory's file system for
    /// the command log; a snapshot that would leave less is skipped (with a warning and
    /// the `flashsale_snapshots_skipped_total` metric) and tried again later.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_RESERVE_MB", default_value_t = 64, help_heading = H_SNAPSHOTS)]
    pub snapshot_reserve_mb: u64,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The HTTP server's timeouts and limits: the same flags on `serve` (both modes) and
/// `gateway`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP timeouts and limits")]
pub struct HttpArgs {
    /// Seconds a client has to send a complete request head (request line and
    /// headers), counted from when its connection opens and again from the end of each
    /// response. A silent, half-sent or idle keep-alive connection is closed when it
    /// runs out, so it cannot hold a connection slot: this is also the idle keep-alive
    /// timeout (hyper times both with one clock).
    #[arg(long, env = "FLASHSALE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,
    /// Seconds a request body may stall (no bytes arriving) before the request is
    /// answered 408 Request Timeout and its connection closed.
    #[arg(long, env = "FLASHSALE_HTTP_BODY_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_secs: u64,
    /// Seconds a whole request body may take, counted from the first wait for its
    /// bytes; past it the request is answered 408 Request Timeout and its connection
    /// closed, however steadily the bytes trickle in.
    #[arg(long, env = "FLASHSALE_HTTP_BODY_DEADLINE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_deadline_secs: u64,
    /// Most HTTP connections open at once. A connection past it is answered at once
    /// with 503 + Retry-After (the API's error body) and closed, never left waiting.
    /// Keep it below the process's open-file limit (`ulimit -n`), with room for the
    /// log, snapshot and Kafka files.
    #[arg(long, env = "FLASHSALE_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,
    /// Most requests being handled at once (head read, answer not yet given). One past
    /// it is answered at once with 503 + Retry-After, before its body is read or
    /// anything is queued (tower's load-shed and concurrency-limit layers). The default
    /// is far above what the per-partition limits admit, so it sheds only a flood they
    /// would shed anyway, but cheaper; it also bounds the memory of bodies being read
    /// (64 KiB each). docs/overload.md.
    #[arg(long, env = "FLASHSALE_HTTP_MAX_REQUESTS", default_value_t = flashsale_gateway::server::DEFAULT_MAX_REQUESTS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_requests: u64,
    /// Sojourn limit: milliseconds a request may have waited, counted from when the
    /// server read its head (before its body), when its command is about to be handed
    /// to its partition's log (the embedded queue, or the Kafka producer). An older one
    /// is answered 503 + Retry-After and never queued nor produced. The default is the
    /// admitted-latency target of a sale (p99 100 ms): a request that spent it all
    /// before its turn is late anyway, and its place goes to one still on time. 0
    /// turns the rule off (the reply deadline still applies). docs/overload.md.
    #[arg(long, env = "FLASHSALE_ADMISSION_MAX_WAIT_MS", default_value_t = flashsale_gateway::admission::DEFAULT_MAX_WAIT_MS, help_heading = super::H_ADMISSION)]
    pub admission_max_wait_ms: u64,
    /// Latency target of the adaptive per-partition limit, in milliseconds (hand-over
    /// to the engine's reply). Each partition's limit of commands in flight starts at
    /// --max-in-flight-per-partition; a measuring window (this long) whose mean latency
    /// is above the target cuts it in proportion (at most by half, never below 8), a
    /// window on target with the limit in use raises it by an eighth. A hot product
    /// sheds on its own partition only. The default is the admitted-latency target
    /// (p99 100 ms): a window's mean above it means a backlog in either mode. 0 turns
    /// adapting off: the fixed budget alone. docs/overload.md.
    #[arg(long, env = "FLASHSALE_ADMISSION_TARGET_MS", default_value_t = flashsale_gateway::admission::DEFAULT_TARGET_MS, help_heading = super::H_ADMISSION)]
    pub admission_target_ms: u64,
    /// Lag limit, in milliseconds: shed at once (503 + Retry-After, before anything is
    /// queued or produced) a command whose request arrived while the server was this
    /// far behind on CPU. The lag (how long a task that became ready waits for the
    /// runtime, measured every millisecond) is how long a request's bytes sat in the
    /// socket before the server read them, plus what it waited since. A node that
    /// keeps up runs a ready task within a millisecond or two; past the limit requests
    /// arrive faster than the CPU serves them, and answering the excess "later" now
    /// (a third of a hold's cost) keeps every answer, shed or admitted, from waiting
    /// behind it. A partition with fewer than 8 commands in flight is never shed by it
    /// (its requests are not what keeps the CPU busy). The default is half the
    /// shed-answer target (p99 20 ms). 0 turns the rule off. docs/overload.md.
    #[arg(long, env = "FLASHSALE_ADMISSION_MAX_LAG_MS", default_value_t = flashsale_gateway::admission::DEFAULT_MAX_LAG_MS, help_heading = super::H_ADMISSION)]
    pub admission_max_lag_ms: u64,
    /// On SIGTERM, how long requests in flight may take to finish before their
    /// connections are closed; then the final snapshots are written and the process
    /// exits 0.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_DRAIN_SECS", default_value_t = 10)]
    pub shutdown_drain_secs: u64,
}

impl From<HttpArgs> for HttpConfig {
    fn from(a: HttpArgs) -> Self {
        HttpConfig {
            http_header_timeout_secs: a.http_header_timeout_secs,
            http_body_timeout_secs: a.http_body_timeout_secs,
            http_body_deadline_secs: a.http_body_deadline_secs,
            http_max_connections: a.http_max_connections,
            http_max_requests: a.http_max_requests,
            admission_max_wait_ms: a.admission_max_wait_ms,
            admission_target_ms: a.admission_target_ms,
            admission_max_lag_ms: a.admission_max_lag_ms,
            shutdown_drain_secs: a.shutdown_drain_secs,
        }
    }
}

/// `serve`: the embedded server, or with `--kafka` engine + gateway + projector in one
/// process against Kafka (and Postgres).
#[derive(Debug, Clone, Args)]
pub struct ServeCmd {
    #[command(flatten)]
    pub args: ServeArgs,
    #[command(flatten)]
    pub kafka: ServeKafkaArgs,
    #[command(flatten)]
    pub publish: ServePublishArgs,
}

/// Embedded mode's public events (docs/events.md, "Embedded mode").
#[derive(Debug, Clone, Args)]
pub struct ServePublishArgs {
    /// Embedded mode: publish the public events (<prefix>reservations,
    /// <prefix>inventory-updates, <prefix>orders; --topic-prefix) to these Kafka brokers,
    /// host:port[,host:port], from the node's own log, exactly once (Kafka
    /// transactions). The sale never waits for Kafka: while it is down or slow,
    /// publishing lags and catches up from the log. Create the topics first (`flashsale
    /// topics create --partitions N`). In Kafka mode run `flashsale events publish`.
    #[arg(long, env = "FLASHSALE_PUBLISH_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg, help_heading = super::H_PUBLISH)]
    pub publish_kafka: Option<String>,
    #[command(flatten)]
    pub publisher: super::PublisherTuning,
}

/// Kafka mode of `serve`. Without `--kafka`, serve runs embedded.
#[derive(Debug, Clone, Args)]
pub struct ServeKafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port]. Set: Kafka mode (missing topics are created with --partitions).
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg, help_heading = H_SERVE_KAFKA)]
    pub kafka: Option<String>,
    /// Run embedded (log and snapshots in --data-dir) even when FLASHSALE_KAFKA or
    /// FLASHSALE_POSTGRES are set in the environment, e.g. by `.services.env`.
    #[arg(long, env = "FLASHSALE_EMBEDDED", help_heading = H_SERVE_KAFKA)]
    pub embedded: bool,
    /// When a topic is deleted and created again (a new Kafka topic id), follow the new
    /// topics from their start instead of waiting for an operator. Either way, nothing
    /// of the old log is served once the change is seen (docs/operations.md).
    #[arg(long, env = "FLASHSALE_ADOPT_NEW_TOPICS", help_heading = H_SERVE_KAFKA)]
    pub adopt_new_topics: bool,
    /// Why this mode was chosen (set by [`Cli::resolve`]; not a flag).
    #[arg(skip)]
    pub mode_reason: String,
    /// Postgres URL (Kafka mode): snapshots, and orders written by the projector. Without it, snapshots go to --data-dir and orders are served from memory.
    #[arg(
        long,
        env = "FLASHSALE_POSTGRES",
        hide_env_values = true,
        requires = "kafka", help_heading = H_SERVE_KAFKA)]
    pub postgres: Option<String>,
    /// Most connections this process opens to Postgres.
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = 8, help_heading = H_SERVE_KAFKA)]
    pub pg_pool_size: usize,
    /// Prefix of the topic names (<prefix>commands, <prefix>events, <prefix>replies).
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale.", help_heading = H_SERVE_KAFKA)]
    pub topic_prefix: String,
    /// Partitions of the replies topic when serve creates it (gateway ids 0..N-1).
    #[arg(long, env = "FLASHSALE_REPLIES_PARTITIONS", default_value_t = 4, help_heading = H_SERVE_KAFKA)]
    pub replies_partitions: u32,
    /// Linger of the gateway's command producer in ms. 0: the command batches
    /// (--command-batch-*) already gather the commands of a partition into one record,
    /// and --command-batch-gap-us paces a partition's records under a steady stream
    /// the way a linger did, without delaying a lone buyer's command (a linger of 1
    /// added ~1 ms to every idle request: lone buyer p50 ~2 ms at 0 against ~3-4 ms at
    /// 1, indicative, shared 2-core box). The engine's producer does not linger either:
    /// each of its records is a whole applied batch already.
    /// (Env: FLASHSALE_LINGER_MS; the old name FLASHSALE_KAFKA_LINGER_MS is still read.)
    #[arg(long, env = "FLASHSALE_LINGER_MS", default_value_t = 0, help_heading = H_SERVE_KAFKA)]
    pub linger_ms: u32,
    #[command(flatten)]
    pub batching: super::kafka::CommandBatchArgs,
    #[command(flatten)]
    pub engine: EngineTuning,
    #[command(flatten)]
    pub readmodel: ReadModelSnapshotArgs,
}

/// When a Kafka-mode gateway snapshots its read model (to Postgres with --postgres,
/// else to files under --data-dir/readmodel), so that it, or any gateway of the same
/// topics, starts from the newest snapshot instead of replaying the whole events topic.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Read-model snapshots (Kafka mode)")]
pub struct ReadModelSnapshotArgs {
    /// Snapshot the read model after this many event records applied... (0: never by
    /// count). Written in the background; the events follow never waits for it.
    #[arg(
        long,
        env = "FLASHSALE_READMODEL_SNAPSHOT_EVERY_EVENTS",
        default_value_t = 100_000
    )]
    pub readmodel_snapshot_every_events: u64,
    /// ...or after this many seconds with at least one event applied (0: never by
    /// time). Both 0: this gateway writes no snapshots (it still starts from one).
    #[arg(
        long,
        env = "FLASHSALE_READMODEL_SNAPSHOT_EVERY_SECS",
        default_value_t = 60
    )]
    pub readmodel_snapshot_every_secs: u64,
}

impl From<ReadModelSnapshotArgs> for ReadModelSnapshotConfig {
    fn from(a: ReadModelSnapshotArgs) -> Self {
        ReadModelSnapshotConfig {
            readmodel_snapshot_every_events: a.readmodel_snapshot_every_events,
            readmodel_snapshot_every_secs: a.readmodel_snapshot_every_secs,
        }
    }
}

/// The engine's consumer-group settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Engine group (Kafka mode)")]
pub struct EngineTuning {
    /// Consumer group shared by the engines of one deployment.
    #[arg(
        long,
        env = "FLASHSALE_ENGINE_GROUP",
        default_value = "flashsale-engine"
    )]
    pub engine_group: String,
    /// Most command records applied as one batch.
    #[arg(long, env = "FLASHSALE_MAX_BATCH", default_value_t = 4096)]
    pub max_batch: usize,
    /// Group session in ms: an engine silent this long (killed, paused, cut off) is
    /// declared dead and its partitions move to the others. Short, for a fast
    /// failover: a kill -9 costs the dead engine's SKUs about this plus ~100 ms
    /// (measured: 600 → worst window 0.7 s, 1000 → 1.3 s; docs/performance.md). With
    /// `--group-protocol classic` this is the session itself (the broker's
    /// `group.min.session.timeout.ms` must allow it; ops/kafka/start.sh sets 500); with
    /// `consumer` (the default) the broker's `group.consumer.session.timeout.ms` is the
    /// session, and this is the longest one the engine accepts without a warning.
    #[arg(long, env = "FLASHSALE_SESSION_TIMEOUT_MS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(500..=300_000))]
    pub session_timeout_ms: u32,
    /// Heartbeat to the group every this many ms (at most a third of the session;
    /// `--group-protocol classic` only: under `consumer` the broker sets it).
    #[arg(long, env = "FLASHSALE_HEARTBEAT_INTERVAL_MS", default_value_t = 150,
          value_parser = clap::value_parser!(u32).range(50..=100_000))]
    pub heartbeat_interval_ms: u32,
    /// The consumer-group protocol of the engines. `consumer` (KIP-848, Kafka ≥ 4.0):
    /// only the broker ends a session (no client-side timer drops the partitions of an
    /// engine whose heartbeat answer came late; a broker itself starved for longer than
    /// the session still expires it: docs/overload.md); the session is the broker's
    /// `group.consumer.session.timeout.ms` and heartbeat its
    /// `group.consumer.heartbeat.interval.ms`. The broker must have
    /// `group.consumer.min.session.timeout.ms=500`, `group.consumer.session.timeout.ms=600`,
    /// `group.consumer.min.heartbeat.interval.ms=100` and
    /// `group.consumer.heartbeat.interval.ms=150` (ops/kafka/start.sh sets them): Kafka's
    /// defaults (45 s, 5 s) are accepted silently by the broker but make a failover take
    /// 45 s, so the engine reads the broker's settings before joining and warns when its
    /// session is longer than `--session-timeout-ms` (and refuses a broker without the
    /// consumer protocol). `classic`: the session and heartbeat above, timed by the
    /// client too (an answer the broker gives later than the session drops the engine's
    /// partitions, e.g. every few seconds when engine and broker share one busy core);
    /// use it against a broker without those settings.
    #[arg(long, env = "FLASHSALE_GROUP_PROTOCOL", default_value = "consumer",
          value_parser = ["classic", "consumer"])]
    pub group_protocol: String,
    /// Standby copies: each engine follows the commands of the partitions it does not
    /// own and keeps their state warm, so a takeover is a catch-up of a few records
    /// instead of a snapshot load and replay. The value is how many of the latest
    /// records' outputs each copy keeps (re-produced at a takeover from the committed
    /// offset on; it must exceed what a partition takes between two commits of its
    /// owner, ~100 ms of load, or a takeover falls back to the snapshot). Cost: one
    /// partition state per partition not owned (the same memory as its owner's) plus
    /// those outputs (a few hundred bytes a record: a few MB a partition at 10,000), and
    /// applying every partition's commands once more. 0: no standby copies (a takeover
    /// loads the newest snapshot and replays).
    #[arg(long, env = "FLASHSALE_STANDBY_WINDOW", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub standby_window: u64,
}

impl From<EngineTuning> for EngineGroupConfig {
    fn from(a: EngineTuning) -> Self {
        EngineGroupConfig {
            engine_group: a.engine_group,
            max_batch: a.max_batch,
            session_timeout_ms: a.session_timeout_ms,
            heartbeat_interval_ms: a.heartbeat_interval_ms,
            group_protocol_consumer: a.group_protocol == "consumer",
            standby_window: a.standby_window,
        }
    }
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        ServeConfig {
            listen: a.listen,
            admin_token: a.admin_token,
            data_dir: a.data_dir,
            partitions: a.partitions,
            demo: a.demo,
            gateway_id: a.gateway_id,
            reply_deadline_ms: a.reply_deadline_ms,
            max_in_flight: a.max_in_flight,
            max_in_flight_per_partition: a.max_in_flight_per_partition,
            queue_depth: a.queue_depth,
            ready_with_failed_partitions: a.ready_with_failed_partitions,
            rate_limit_per_user: a.rate_limit_per_user,
            rate_limit_burst: a.rate_limit_burst,
            snapshot_every_commands: a.snapshot_every_commands,
            snapshot_every_secs: a.snapshot_every_secs,
            keep_snapshots: a.keep_snapshots,
            retention_secs: a.retention_secs,
            snapshot_reserve_mb: a.snapshot_reserve_mb,
            http: a.http.into(),
            publish: None,
        }
    }
}

impl From<ServeCmd> for ServeCommandConfig {
    /// Kafka mode when `--kafka` (or FLASHSALE_KAFKA) is left after
    /// [`super::Cli::resolve`].
    fn from(cmd: ServeCmd) -> Self {
        let ServeCmd {
            args,
            kafka: k,
            publish,
        } = cmd;
        let mut node: ServeConfig = args.into();
        node.publish = publish.publish_kafka.map(|brokers| {
            publish
                .publisher
                .config(brokers, k.topic_prefix.clone(), "embedded-publisher")
        });
        let kafka = k.kafka.map(|brokers| KafkaServeConfig {
            kafka: brokers,
            postgres: k.postgres,
            pg_pool_size: k.pg_pool_size,
            topic_prefix: k.topic_prefix,
            replies_partitions: k.replies_partitions,
            linger_ms: k.linger_ms,
            batching: k.batching.into(),
            adopt_new_topics: k.adopt_new_topics,
            engine: k.engine.into(),
            readmodel: k.readmodel.into(),
        });
        ServeCommandConfig {
            node,
            kafka,
            mode_reason: k.mode_reason,
        }
    }
}
