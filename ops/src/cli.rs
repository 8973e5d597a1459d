//! The `flashsale` command line: one clap-derive struct per subcommand, every flag
//! with an `env = "FLASHSALE_…"`, a default and a doc comment.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
pub use flashsale_runtime::telemetry::{LogFormat, OtlpProtocol, TelemetryArgs};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale engine: every hold answered in milliseconds, no unit sold twice.",
    long_about = "flashsale holds stock for buyers during a flash sale. Commands are appended to a \
partitioned log keyed by SKU; one engine actor per partition applies them in order to an \
in-memory inventory, so there is no lock and no database row to fight over.\n\n\
With no Kafka configured, `flashsale serve` runs everything in one process over a local \
data directory (the embedded mode).",
    after_help = "Examples:\n  # embedded server with a demo sale on 127.0.0.1:8080\n  flashsale serve --demo\n  flashsale serve --data-dir /var/lib/flashsale --admin-token s3cret\n  flashsale serve --help                 # every flag of the server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `flashsale_gateway=debug`.
    #[arg(
        long,
        global = true,
        env = "FLASHSALE_LOG",
        default_value = "info",
        help_heading = GLOBAL
    )]
    pub log: String,
    #[command(flatten, next_help_heading = GLOBAL)]
    pub telemetry: TelemetryArgs,
}

/// The help section of the flags every subcommand takes (logging, tracing).
const GLOBAL: &str = "Global options (logging, tracing; any subcommand)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with the engine (embedded mode: log and snapshots in --data-dir).
    #[command(
        after_help = "Examples:\n  flashsale serve --demo\n  FLASHSALE_ADMIN_TOKEN=s3cret flashsale serve --listen 0.0.0.0:8080 \\\n      --data-dir /var/lib/flashsale"
    )]
    Serve(ServeCmd),
    /// Create the Kafka topics (commands, events, replies); existing ones are checked.
    #[command(
        after_help = "Examples:\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 8\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 32 \\\n      --replies-partitions 8 --replication-factor 3 \\\n      --min-insync-replicas 2 --prefix shop1."
    )]
    Topics(TopicsArgs),
    /// Run an engine (Kafka mode): owns the command partitions the group gives it.
    #[command(
        after_help = "Examples:\n  flashsale engine --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  # snapshots in files, no Postgres\n  flashsale engine --kafka 127.0.0.1:19092 --data-dir /var/lib/flashsale\nStart as many as you like: the consumer group shares the partitions among them."
    )]
    Engine(EngineArgs),
    /// Run an HTTP gateway (Kafka mode): commands to Kafka, replies and events back.
    #[command(
        after_help = "Examples:\n  flashsale gateway --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale \\\n      --listen 0.0.0.0:8080 --admin-token s3cret --gateway-id 0\n  flashsale gateway --kafka 127.0.0.1:19092 --listen 127.0.0.1:8081 \\\n      --gateway-id 1\nEvery gateway needs its own --gateway-id (a partition of the replies topic)."
    )]
    Gateway(GatewayArgs),
    /// Rebuild a partition's state from a snapshot and the log, to an offset or a time.
    Replay(crate::operator::ReplayArgs),
    /// Check every invariant: rebuild every partition; with Postgres, check the orders too.
    Audit(crate::operator::AuditArgs),
    /// List, show and verify engine snapshots.
    #[command(
        after_help = "Examples:\n  flashsale snapshot list\n  flashsale snapshot show p3@120000\n  flashsale snapshot verify --partition 3"
    )]
    Snapshot(crate::operator::SnapshotArgs),
    /// Create or update the Postgres schema (Kafka mode); running it again is a no-op.
    #[command(
        after_help = "Examples:\n  flashsale migrate \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  FLASHSALE_POSTGRES=postgres://postgres@127.0.0.1:15432/flashsale \\\n      flashsale migrate --json"
    )]
    Migrate(MigrateArgs),
    /// Follow the events topic and write reservations and orders to Postgres, exactly once.
    #[command(
        after_help = "Examples:\n  flashsale projector --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale"
    )]
    Projector(ProjectorArgs),
    /// Which partition (engine actor, and `replay --partition`) holds a SKU.
    #[command(
        after_long_help = "Examples:\n  flashsale partition-of SKU-1\n  flashsale partition-of SKU-1 --partitions 32 --json"
    )]
    PartitionOf(PartitionOfArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PartitionOfArgs {
    /// The SKU, exactly as in the API (case matters).
    pub sku: String,
    /// Partitions of the deployment (`serve --partitions`, `topics create --partitions`).
    #[arg(long, env = "FLASHSALE_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `flashsale partition-of SKU`: the partition the gateway routes the SKU to.
pub fn partition_of_command(args: PartitionOfArgs) -> anyhow::Result<()> {
    if args.partitions == 0 {
        anyhow::bail!("--partitions must be at least 1 (the deployment's partition count)");
    }
    let p = flashsale_proto::partition_for_key(args.sku.as_bytes(), args.partitions);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"sku": args.sku, "partition": p, "partitions": args.partitions})
        );
    } else {
        println!(
            "{} is in partition {p} of {}: flashsale replay --partition {p}",
            args.sku, args.partitions
        );
    }
    Ok(())
}

/// Default of `--retention-secs`: the core's idempotency window (24 h).
pub const DEFAULT_RETENTION_SECS: u64 = flashsale_core::core::IDEMPOTENCY_RETENTION_MS / 1000;
/// Largest `--retention-secs` (the core's limit, 30 days).
pub const MAX_RETENTION_SECS: u64 = flashsale_core::core::MAX_RETENTION_MS / 1000;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for the HTTP API.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token for /api/v1/admin/*. Without one, a random token is generated and printed at start.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Directory for the command log and snapshots (embedded mode). Created if missing.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Number of partitions (engine actors). Fixed for the life of a data directory.
    #[arg(long, env = "FLASHSALE_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Create a demo sale of a few products opening now (only when no products exist yet).
    #[arg(long, env = "FLASHSALE_DEMO")]
    pub demo: bool,
    /// This gateway's id: the partition of the replies topic it reads.
    #[arg(long, env = "FLASHSALE_GATEWAY_ID", default_value_t = 0)]
    pub gateway_id: u32,
    /// How long a request waits for the engine's reply before answering 503.
    #[arg(long, env = "FLASHSALE_REPLY_DEADLINE_MS", default_value_t = 2000)]
    pub reply_deadline_ms: u64,
    /// Admission: most commands awaiting a reply at once, all partitions together;
    /// past it, 503 + Retry-After at once, nothing done. Sized from the latency target,
    /// not from memory [default: 1024 embedded (8 partitions × 128), 4096 with --kafka].
    /// A deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One hot SKU cannot take the whole node's budget
    /// from the other products of the sale. Sized from the latency target by
    /// measurement (README "The 10:00 crowd") [default: 128 embedded, 1024 with
    /// --kafka]. Embedded, one partition answers 10,000–16,000 holds/s on 2 cores, so
    /// 128 waiting commands are ~10 ms of queue; at twice the node's capacity 128 kept
    /// the admitted p99 near 100 ms where 1,024 let it reach 0.4–0.9 s. With --kafka a
    /// command takes four broker hops (~10 ms under load), so the same rate needs ~8×
    /// the commands in flight: 128 there turned most of a 10,000/s flash crowd away.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION")]
    pub max_in_flight_per_partition: Option<usize>,
    /// Commands queued per partition in the embedded log's writer before new ones get
    /// 503 (a backstop behind --max-in-flight-per-partition; the writer commits up to
    /// 4,096 records per fsync).
    #[arg(long, env = "FLASHSALE_QUEUE_DEPTH", default_value_t = 4_096)]
    pub queue_depth: usize,
    /// Report ready (`/ready` 200) while some partitions failed recovery and stay down
    /// (the others serve either way, and `/ready` names the failed ones). Off: a node
    /// with a failed partition answers `/ready` 503, so a load balancer skips it.
    #[arg(
        long,
        env = "FLASHSALE_READY_WITH_FAILED_PARTITIONS",
        default_value_t = false
    )]
    pub ready_with_failed_partitions: bool,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
    /// Snapshot a partition after this many commands...
    #[arg(
        long,
        env = "FLASHSALE_SNAPSHOT_EVERY_COMMANDS",
        default_value_t = 50_000
    )]
    pub snapshot_every_commands: u64,
    /// ...or after this many seconds of log time, whichever comes first.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_EVERY_SECS", default_value_t = 30)]
    pub snapshot_every_secs: u64,
    /// Snapshots kept per partition.
    #[arg(long, env = "FLASHSALE_KEEP_SNAPSHOTS", default_value_t = 3)]
    pub keep_snapshots: usize,
    /// Seconds of log time that expired and cancelled reservations (and idempotency
    /// keys) are remembered after they end (a cancelled hold at least until its
    /// expiresAt); then they are pruned from the engine's state, its snapshots and the
    /// read model, and a GET answers 404 as for an unknown id. Orders are never
    /// pruned. 1-2592000 (30 days).
    #[arg(long, env = "FLASHSALE_RETENTION_SECS", default_value_t = DEFAULT_RETENTION_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_RETENTION_SECS))]
    pub retention_secs: u64,
    /// Free space (MiB) a snapshot must leave on the data directory's file system for
    /// the command log; a snapshot that would leave less is skipped (with a warning and
    /// the `flashsale_snapshots_skipped_total` metric) and tried again later.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_RESERVE_MB", default_value_t = 64)]
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
    /// Most HTTP connections open at once. A connection past it is answered at once
    /// with 503 + Retry-After (the API's error body) and closed, never left waiting.
    /// Keep it below the process's open-file limit (`ulimit -n`), with room for the
    /// log, snapshot and Kafka files.
    #[arg(long, env = "FLASHSALE_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,
    /// On SIGTERM, how long requests in flight may take to finish before their
    /// connections are closed; then the final snapshots are written and the process
    /// exits 0.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_DRAIN_SECS", default_value_t = 10)]
    pub shutdown_drain_secs: u64,
}

impl Default for HttpArgs {
    /// The flags' defaults (for tests and embedders that build args by hand).
    fn default() -> Self {
        HttpArgs {
            http_header_timeout_secs: 30,
            http_body_timeout_secs: 10,
            http_max_connections: 10_000,
            shutdown_drain_secs: 10,
        }
    }
}

impl HttpArgs {
    pub fn limits(&self) -> flashsale_gateway::server::HttpLimits {
        use std::time::Duration;
        flashsale_gateway::server::HttpLimits {
            header_read_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            body_read_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
            max_connections: usize::try_from(self.http_max_connections)
                .unwrap_or(usize::MAX)
                .max(1),
            drain: Duration::from_secs(self.shutdown_drain_secs),
        }
    }
}

/// Where Postgres is, for every command of Kafka mode that needs it.
#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:15432/flashsale.
    #[arg(long, env = "FLASHSALE_POSTGRES", hide_env_values = true)]
    pub postgres: String,
    /// Most connections this process opens to Postgres.
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub pg: PostgresArgs,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectorArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: String,
    #[command(flatten)]
    pub pg: PostgresArgs,
    /// Prefix of the topic names; events are read from <prefix>events.
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
    /// Most event records applied in one Postgres transaction.
    #[arg(long, env = "FLASHSALE_PROJECTOR_BATCH", default_value_t = 5000)]
    pub projector_batch: usize,
    /// Address for GET /metrics (Prometheus); unset: no metrics endpoint.
    #[arg(long, env = "FLASHSALE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `serve`: the embedded server, or with `--kafka` engine + gateway + projector in one
/// process against Kafka (and Postgres).
#[derive(Debug, Clone, Args)]
pub struct ServeCmd {
    #[command(flatten)]
    pub args: ServeArgs,
    #[command(flatten)]
    pub kafka: ServeKafkaArgs,
}

/// Kafka mode of `serve`. Without `--kafka`, serve runs embedded.
#[derive(Debug, Clone, Args)]
pub struct ServeKafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port]. Set: Kafka mode (missing topics are created with --partitions).
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: Option<String>,
    /// Run embedded (log and snapshots in --data-dir) even when FLASHSALE_KAFKA or
    /// FLASHSALE_POSTGRES are set in the environment, e.g. by `.services.env`.
    #[arg(long, env = "FLASHSALE_EMBEDDED")]
    pub embedded: bool,
    /// Why this mode was chosen (set by [`Cli::resolve`]; not a flag).
    #[arg(skip)]
    pub mode_reason: String,
    /// Postgres URL (Kafka mode): snapshots, and orders written by the projector. Without it, snapshots go to --data-dir and orders are served from memory.
    #[arg(
        long,
        env = "FLASHSALE_POSTGRES",
        hide_env_values = true,
        requires = "kafka"
    )]
    pub postgres: Option<String>,
    /// Most connections this process opens to Postgres.
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,
    /// Prefix of the topic names (<prefix>commands, <prefix>events, <prefix>replies).
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
    /// Partitions of the replies topic when serve creates it (gateway ids 0..N-1).
    #[arg(long, env = "FLASHSALE_REPLIES_PARTITIONS", default_value_t = 4)]
    pub replies_partitions: u32,
    /// Linger of the gateway's command producer in ms: commands are batched into one
    /// produce request for at most this long. 1 measured best on a 2-core box (side by
    /// side at 64 connections: 0 costs ~40 % more CPU per hold in produce requests, 2
    /// adds ~1 ms to an idle request; README "Performance"). The engine's producer
    /// does not linger: each of its records is a whole applied batch already.
    /// (Env: FLASHSALE_LINGER_MS; the old name FLASHSALE_KAFKA_LINGER_MS is still read.)
    #[arg(long, env = "FLASHSALE_LINGER_MS", default_value_t = 1)]
    pub linger_ms: u32,
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

impl Default for ReadModelSnapshotArgs {
    /// The flags' defaults (for tests that build args by hand).
    fn default() -> Self {
        ReadModelSnapshotArgs {
            readmodel_snapshot_every_events: 100_000,
            readmodel_snapshot_every_secs: 60,
        }
    }
}

impl ReadModelSnapshotArgs {
    pub fn policy(&self) -> flashsale_gateway::snapshot::Policy {
        flashsale_gateway::snapshot::Policy {
            every_events: self.readmodel_snapshot_every_events,
            every: std::time::Duration::from_secs(self.readmodel_snapshot_every_secs),
        }
    }
}

/// Where Kafka is and what the topics are called.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: String,
    /// Prefix of the topic names (<prefix>commands, <prefix>events, <prefix>replies).
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
}

/// Optional Postgres of the engine and gateway commands.
#[derive(Debug, Clone, Args)]
pub struct OptionalPostgres {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:15432/flashsale (migrated at start).
    #[arg(long, env = "FLASHSALE_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Most connections this process opens to Postgres.
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,
}

/// The engine's consumer-group settings.
#[derive(Debug, Clone, Args)]
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
    /// (measured: 600 → worst window 0.7 s, 1000 → 1.3 s; README "Failover"). The
    /// heartbeat thread is librdkafka's own, so a busy engine still heartbeats; raise
    /// it on a machine whose processes stall for longer. The broker's
    /// `group.min.session.timeout.ms` must allow it (ops/kafka/start.sh sets 500).
    #[arg(long, env = "FLASHSALE_SESSION_TIMEOUT_MS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(500..=300_000))]
    pub session_timeout_ms: u32,
    /// Heartbeat to the group every this many ms (at most a third of the session).
    #[arg(long, env = "FLASHSALE_HEARTBEAT_INTERVAL_MS", default_value_t = 150,
          value_parser = clap::value_parser!(u32).range(50..=100_000))]
    pub heartbeat_interval_ms: u32,
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

#[derive(Debug, Clone, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub action: TopicsAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TopicsAction {
    /// Create <prefix>commands and <prefix>events (--partitions each) and <prefix>replies
    /// (--replies-partitions). Idempotent: existing topics with the same partition
    /// counts are fine; other counts are an error.
    ///
    /// Configs set: cleanup.policy=delete everywhere; retention.ms 7 days on commands
    /// (recovery replays from the newest snapshot, taken every 30 s by default, so the
    /// retention must exceed that by far), forever on events (read models and the
    /// projector rebuild from it), 1 hour on replies; message.timestamp.type=CreateTime
    /// (the engine's clock) with message.timestamp.after.max.ms=60000 (refuses producers
    /// whose clock is a minute ahead). Production: --replication-factor 3
    /// --min-insync-replicas 2 (producers use acks=all).
    #[command(
        after_help = "Examples:\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 8\n  flashsale topics create --kafka kafka-1:9092,kafka-2:9092 \\\n      --partitions 32 --replies-partitions 16 --replication-factor 3 \\\n      --min-insync-replicas 2"
    )]
    Create(TopicsCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TopicsCreateArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Partitions of commands and events: the number of engine actors. Fixed for the life of the topics.
    #[arg(long, env = "FLASHSALE_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Partitions of replies: one per gateway (--gateway-id 0..N-1).
    #[arg(long, env = "FLASHSALE_REPLIES_PARTITIONS", default_value_t = 4)]
    pub replies_partitions: u32,
    /// Copies of every partition [default: 3 on a cluster of 3+ brokers, else 1].
    #[arg(long, env = "FLASHSALE_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    /// Copies that must have a record before it is acknowledged [default: 2 on a cluster of 3+ brokers, else 1].
    #[arg(long, env = "FLASHSALE_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<u32>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub pg: OptionalPostgres,
    #[command(flatten)]
    pub engine: EngineTuning,
    /// Directory for snapshots when no --postgres is given.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Snapshot a partition after this many commands...
    #[arg(
        long,
        env = "FLASHSALE_SNAPSHOT_EVERY_COMMANDS",
        default_value_t = 50_000
    )]
    pub snapshot_every_commands: u64,
    /// ...or after this many seconds of log time, whichever comes first.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_EVERY_SECS", default_value_t = 30)]
    pub snapshot_every_secs: u64,
    /// Snapshots kept per partition.
    #[arg(long, env = "FLASHSALE_KEEP_SNAPSHOTS", default_value_t = 3)]
    pub keep_snapshots: usize,
    /// Seconds of log time that expired and cancelled reservations (and idempotency
    /// keys) are remembered after they end, then pruned from the state and snapshots.
    /// Orders are never pruned. 1-2592000 (30 days).
    #[arg(long, env = "FLASHSALE_RETENTION_SECS", default_value_t = DEFAULT_RETENTION_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_RETENTION_SECS))]
    pub retention_secs: u64,
    /// Linger of the engine's producer in ms. 0: each record it produces is a whole
    /// applied batch (its events; its replies per gateway) already, so lingering would
    /// only add latency (README "Performance").
    /// (Env: FLASHSALE_ENGINE_LINGER_MS.)
    #[arg(long, env = "FLASHSALE_ENGINE_LINGER_MS", default_value_t = 0)]
    pub linger_ms: u32,
    /// Address for GET /metrics (Prometheus); unset: no metrics endpoint.
    #[arg(long, env = "FLASHSALE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub pg: OptionalPostgres,
    /// Address for the HTTP API.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token for /api/v1/admin/*. Without one, a random token is generated and printed at start.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// This gateway's id: the partition of the replies topic it reads. Unique per gateway.
    #[arg(long, env = "FLASHSALE_GATEWAY_ID", default_value_t = 0)]
    pub gateway_id: u32,
    /// How long a request waits for the engine's reply before answering 503.
    #[arg(long, env = "FLASHSALE_REPLY_DEADLINE_MS", default_value_t = 2000)]
    pub reply_deadline_ms: u64,
    /// Admission: most commands awaiting a reply at once, all partitions together;
    /// past it, 503 + Retry-After at once, nothing done. Sized from the latency target,
    /// not from memory: a deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = crate::kafka::KAFKA_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One hot SKU cannot take the whole node's budget
    /// from the other products of the sale. A command takes four broker hops (~10 ms
    /// under load), so 1,024 in flight carry a flash crowd of 10,000 holds/s on one
    /// SKU; 128 turned most of it away (README "The 10:00 crowd").
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = crate::kafka::KAFKA_MAX_IN_FLIGHT_PER_PARTITION
    )]
    pub max_in_flight_per_partition: usize,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
    /// Linger of the gateway's command producer in ms: commands are batched into one
    /// produce request for at most this long. 1 measured best on a 2-core box (side by
    /// side at 64 connections: 0 costs ~40 % more CPU per hold in produce requests, 2
    /// adds ~1 ms to an idle request; README "Performance"). The engine's producer
    /// does not linger: each of its records is a whole applied batch already.
    /// (Env: FLASHSALE_LINGER_MS; the old name FLASHSALE_KAFKA_LINGER_MS is still read.)
    #[arg(long, env = "FLASHSALE_LINGER_MS", default_value_t = 1)]
    pub linger_ms: u32,
    /// Directory for read-model snapshots when no --postgres is given (in
    /// <data-dir>/readmodel/<events topic>@<topic id>/). Created if missing.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub readmodel: ReadModelSnapshotArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// The environment variable the gateway's `linger_ms` was read from before it followed
/// the `FLASHSALE_<FLAG>` pattern; still honoured when the new one is not set (not by
/// the engine, whose producer no longer lingers by default).
pub const OLD_LINGER_ENV: &str = "FLASHSALE_KAFKA_LINGER_MS";

impl Cli {
    /// Parses the process's arguments (exiting with clap's message on a mistake), then
    /// [`Cli::resolve`]s them.
    pub fn parse_resolved() -> Cli {
        let matches = Cli::command().get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(mut cli) => match cli.resolve(&matches) {
                Ok(()) => cli,
                Err(e) => e.exit(),
            },
            Err(e) => e.exit(),
        }
    }

    /// [`Cli::parse_resolved`] for tests: from given arguments, errors returned.
    pub fn try_parse_resolved_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.resolve(&matches)?;
        Ok(cli)
    }

    /// An explicit flag beats the environment: `--data-dir` on `replay`/`audit`/
    /// `snapshot` means the embedded data directory even when FLASHSALE_KAFKA is set;
    /// `serve --embedded` drops FLASHSALE_KAFKA/FLASHSALE_POSTGRES. Records why each
    /// process runs in its mode, for its first line. Also reads the old name of the
    /// linger variable.
    pub fn resolve(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let Some((_, sub)) = matches.subcommand() else {
            return Ok(());
        };
        let old_linger = std::env::var(OLD_LINGER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let linger = |m: &ArgMatches, v: &mut u32| {
            if m.value_source("linger_ms") == Some(ValueSource::DefaultValue) {
                if let Some(old) = old_linger {
                    *v = old;
                }
            }
        };
        match &mut self.command {
            Command::Serve(cmd) => {
                linger(sub, &mut cmd.kafka.linger_ms);
                let k = &mut cmd.kafka;
                if k.embedded && sub.value_source("kafka") == Some(ValueSource::CommandLine) {
                    return Err(Cli::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--embedded and --kafka contradict each other: give one (--embedded: log and snapshots in --data-dir; --kafka: Kafka mode)",
                    ));
                }
                k.mode_reason = if k.embedded {
                    let ignored = if k.kafka.is_some() || k.postgres.is_some() {
                        " (FLASHSALE_KAFKA/FLASHSALE_POSTGRES from the environment ignored)"
                    } else {
                        ""
                    };
                    k.kafka = None;
                    k.postgres = None;
                    format!("embedded mode: --embedded given{ignored}")
                } else if k.kafka.is_some() {
                    if sub.value_source("kafka") == Some(ValueSource::CommandLine) {
                        "Kafka mode: --kafka given".to_string()
                    } else {
                        "Kafka mode: FLASHSALE_KAFKA is set (pass --embedded to run embedded)"
                            .to_string()
                    }
                } else {
                    "embedded mode: no --kafka and no FLASHSALE_KAFKA".to_string()
                };
            }
            Command::Gateway(a) => linger(sub, &mut a.linger_ms),
            Command::Replay(a) => a.source.resolve(sub),
            Command::Audit(a) => a.source.resolve(sub),
            Command::Snapshot(a) => {
                if let Some((_, leaf)) = sub.subcommand() {
                    match &mut a.command {
                        crate::operator::SnapshotCommand::List(l)
                        | crate::operator::SnapshotCommand::Verify(l) => l.source.resolve(leaf),
                        crate::operator::SnapshotCommand::Show(s) => s.source.resolve(leaf),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long help of `cmd` and of every subcommand under it, at 80 columns.
    fn helps(cmd: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
        let mut c = cmd.clone().term_width(80);
        out.push((path.clone(), c.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            let name = format!("{path} {}", sub.get_name());
            helps(sub, name, out);
        }
    }

    /// Each example command of a help text: lines under "Examples:" that start with
    /// two spaces, joined across trailing backslashes; comments dropped.
    fn examples(help: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_examples = false;
        let mut pending = String::new();
        for line in help.lines() {
            if line.starts_with("Examples:") {
                in_examples = true;
                continue;
            }
            if !in_examples {
                continue;
            }
            if !line.starts_with("  ") && pending.is_empty() {
                in_examples = false;
                continue;
            }
            let t = line.trim();
            if t.starts_with('#') {
                continue;
            }
            match t.strip_suffix('\\') {
                Some(head) => {
                    pending.push_str(head);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(t);
                    out.push(std::mem::take(&mut pending));
                }
            }
        }
        out
    }

    /// Runs `f` with no FLASHSALE_* or OTEL_* variable in the environment (clap reads
    /// them while parsing; `make test` exports .services.env), one test at a time,
    /// and puts the environment back afterwards.
    fn with_clean_env<T>(f: impl FnOnce() -> T) -> T {
        static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let saved: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
            .collect();
        for (k, _) in &saved {
            std::env::remove_var(k);
        }
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        for (k, v) in &saved {
            std::env::set_var(k, v);
        }
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    #[test]
    fn every_help_example_parses_as_written() {
        with_clean_env(every_help_example_parses);
    }

    fn every_help_example_parses() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        helps(&mut cmd, "flashsale".into(), &mut all);
        let mut checked = 0;
        for (path, help) in &all {
            for ex in examples(help) {
                let words =
                    shlex::split(&ex).unwrap_or_else(|| panic!("{path}: cannot split {ex:?}"));
                // Leading VAR=value words: the environment of that one command.
                let env: Vec<(&str, &str)> = words
                    .iter()
                    .take_while(|w| w.contains('=') && !w.starts_with('-'))
                    .filter_map(|w| w.split_once('='))
                    .collect();
                let words: Vec<&String> = words.iter().skip(env.len()).collect();
                assert_eq!(
                    words.first().map(|w| w.as_str()),
                    Some("flashsale"),
                    "{path}: example {ex:?} does not start with flashsale"
                );
                if words.iter().any(|w| *w == "--help") {
                    continue;
                }
                for (k, v) in &env {
                    std::env::set_var(k, v);
                }
                let parsed = Cli::try_parse_resolved_from(words.iter().map(|w| w.as_str()));
                for (k, _) in &env {
                    std::env::remove_var(k);
                }
                if let Err(e) = parsed {
                    panic!("{path}: the example {ex:?} does not parse:\n{e}");
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 15,
            "only {checked} examples found; the parser of help texts lost them"
        );
    }

    #[test]
    fn admission_defaults_follow_the_mode_and_flags_win() {
        with_clean_env(|| {
            let serve = |argv: &[&str]| {
                let cli = Cli::try_parse_resolved_from(argv.iter().copied()).unwrap();
                let Command::Serve(s) = cli.command else {
                    panic!("serve")
                };
                s.args
            };
            let a = serve(&["flashsale", "serve", "--embedded"]);
            assert_eq!(crate::serve::admission(&a), (1_024, 128));
            let k = crate::kafka::GatewayParams::from(&a);
            assert_eq!(
                (k.max_in_flight, k.max_in_flight_per_partition),
                (4_096, 1_024)
            );
            let a = serve(&[
                "flashsale",
                "serve",
                "--embedded",
                "--max-in-flight",
                "9",
                "--max-in-flight-per-partition",
                "7",
            ]);
            assert_eq!(crate::serve::admission(&a), (9, 7));
            let k = crate::kafka::GatewayParams::from(&a);
            assert_eq!((k.max_in_flight, k.max_in_flight_per_partition), (9, 7));
        });
    }

    #[test]
    fn explicit_data_dir_beats_kafka_from_the_environment() {
        with_clean_env(explicit_data_dir_beats_kafka);
    }

    fn explicit_data_dir_beats_kafka() {
        // Only the parse: the variable is read by clap, so set it for this process.
        // Only this test of the crate parses with FLASHSALE_KAFKA in mind.
        std::env::set_var("FLASHSALE_KAFKA", "127.0.0.1:1");
        let cli =
            Cli::try_parse_resolved_from(["flashsale", "audit", "--data-dir", "/tmp/x"]).unwrap();
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        assert_eq!(a.source.kafka, None);
        assert!(
            a.source.mode_reason.contains("--data-dir given"),
            "{}",
            a.source.mode_reason
        );
        let cli = Cli::try_parse_resolved_from(["flashsale", "audit"]).unwrap();
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        assert_eq!(a.source.kafka.as_deref(), Some("127.0.0.1:1"));
        assert!(
            a.source.mode_reason.contains("FLASHSALE_KAFKA is set"),
            "{}",
            a.source.mode_reason
        );
        let cli =
            Cli::try_parse_resolved_from(["flashsale", "serve", "--embedded", "--demo"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert_eq!(s.kafka.kafka, None);
        assert!(s
            .kafka
            .mode_reason
            .starts_with("embedded mode: --embedded given"));
        let cli = Cli::try_parse_resolved_from(["flashsale", "serve", "--demo"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert!(
            s.kafka.mode_reason.contains("pass --embedded"),
            "{}",
            s.kafka.mode_reason
        );
        let err =
            Cli::try_parse_resolved_from(["flashsale", "serve", "--embedded", "--kafka", "h:1"])
                .unwrap_err();
        assert!(err.to_string().contains("contradict"), "{err}");
        let cli = Cli::try_parse_resolved_from([
            "flashsale",
            "replay",
            "--partition",
            "1",
            "--prefix",
            "shop1.",
        ])
        .unwrap();
        let Command::Replay(r) = cli.command else {
            panic!("replay")
        };
        assert_eq!(r.source.topic_prefix, "shop1.");
        std::env::remove_var("FLASHSALE_KAFKA");
    }
}
