//! The `flashsale` command line: one clap-derive struct per subcommand, every flag
//! with an `env = "FLASHSALE_…"`, a default and a doc comment.

use clap::{Args, Parser, Subcommand};
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
    after_help = "Examples:\n  flashsale serve --demo                 # embedded server with a demo sale on 127.0.0.1:8080\n  flashsale serve --data-dir /var/lib/flashsale --admin-token s3cret\n  flashsale serve --help                 # every flag of the server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `flashsale_gateway=debug`.
    #[arg(long, global = true, env = "FLASHSALE_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with the engine (embedded mode: log and snapshots in --data-dir).
    #[command(
        after_help = "Examples:\n  flashsale serve --demo\n  FLASHSALE_ADMIN_TOKEN=s3cret flashsale serve --listen 0.0.0.0:8080 --data-dir /var/lib/flashsale"
    )]
    Serve(ServeCmd),
    /// Create the Kafka topics (commands, events, replies); existing ones are checked.
    #[command(
        after_help = "Examples:\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 8\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 32 --replies-partitions 8 --replication-factor 3 --min-insync-replicas 2 --prefix shop1."
    )]
    Topics(TopicsArgs),
    /// Run an engine (Kafka mode): owns the command partitions the group gives it.
    #[command(
        after_help = "Examples:\n  flashsale engine --kafka 127.0.0.1:19092 --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  flashsale engine --kafka 127.0.0.1:19092 --data-dir /var/lib/flashsale   # snapshots in files, no Postgres\nStart as many as you like: the consumer group shares the partitions among them."
    )]
    Engine(EngineArgs),
    /// Run an HTTP gateway (Kafka mode): commands to Kafka, replies and events back.
    #[command(
        after_help = "Examples:\n  flashsale gateway --kafka 127.0.0.1:19092 --postgres postgres://postgres@127.0.0.1:15432/flashsale --listen 0.0.0.0:8080 --admin-token s3cret --gateway-id 0\n  flashsale gateway --kafka 127.0.0.1:19092 --listen 127.0.0.1:8081 --gateway-id 1\nEvery gateway needs its own --gateway-id (a partition of the replies topic)."
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
        after_help = "Examples:\n  flashsale migrate --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  FLASHSALE_POSTGRES=postgres://… flashsale migrate --json"
    )]
    Migrate(MigrateArgs),
    /// Follow the events topic and write reservations and orders to Postgres, exactly once.
    #[command(
        after_help = "Examples:\n  flashsale projector --kafka 127.0.0.1:19092 --postgres postgres://postgres@127.0.0.1:15432/flashsale"
    )]
    Projector(ProjectorArgs),
}

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
    /// not from memory: a node answers ~30,000 holds/s, so 4,096 waiting requests are
    /// ~140 ms of work; a deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4_096)]
    pub max_in_flight: usize,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One partition's actor applies ~30,000 commands/s,
    /// so 1,024 is ~35 ms of queue: admitted buyers stay fast, and one hot SKU cannot
    /// take the whole node's budget from the other products of the sale.
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = 1_024
    )]
    pub max_in_flight_per_partition: usize,
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
    /// On SIGTERM, how long open HTTP connections may take to finish before they are
    /// closed; then the final snapshots are written and the process exits 0.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_DRAIN_SECS", default_value_t = 10)]
    pub shutdown_drain_secs: u64,
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
    #[arg(long, env = "FLASHSALE_KAFKA")]
    pub kafka: String,
    #[command(flatten)]
    pub pg: PostgresArgs,
    /// Prefix of the topic names; events are read from <prefix>events.
    #[arg(long, env = "FLASHSALE_TOPIC_PREFIX", default_value = "flashsale.")]
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
    #[arg(long, env = "FLASHSALE_KAFKA")]
    pub kafka: Option<String>,
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
    /// Producer linger in ms: records are batched for at most this long. 5 measured
    /// best under load on a 2-core box (fewer, fuller requests); 1 lowers the latency
    /// of an idle system by a few ms.
    #[arg(long, env = "FLASHSALE_KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u32,
    #[command(flatten)]
    pub engine: EngineTuning,
}

/// Where Kafka is and what the topics are called.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA")]
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
        after_help = "Examples:\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 8\n  flashsale topics create --kafka kafka-1:9092,kafka-2:9092 --partitions 32 --replies-partitions 16 --replication-factor 3 --min-insync-replicas 2"
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
    /// Copies of every partition (production: 3).
    #[arg(long, env = "FLASHSALE_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// Copies that must have a record before it is acknowledged (production: 2).
    #[arg(long, env = "FLASHSALE_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub min_insync_replicas: u32,
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
    /// Producer linger in ms: records are batched for at most this long. 5 measured
    /// best under load on a 2-core box (fewer, fuller requests); 1 lowers the latency
    /// of an idle system by a few ms.
    #[arg(long, env = "FLASHSALE_KAFKA_LINGER_MS", default_value_t = 5)]
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
    /// not from memory: a node answers ~30,000 holds/s, so 4,096 waiting requests are
    /// ~140 ms of work; a deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 4_096)]
    pub max_in_flight: usize,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One partition's actor applies ~30,000 commands/s,
    /// so 1,024 is ~35 ms of queue: admitted buyers stay fast, and one hot SKU cannot
    /// take the whole node's budget from the other products of the sale.
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = 1_024
    )]
    pub max_in_flight_per_partition: usize,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
    /// Producer linger in ms: records are batched for at most this long. 5 measured
    /// best under load on a 2-core box (fewer, fuller requests); 1 lowers the latency
    /// of an idle system by a few ms.
    #[arg(long, env = "FLASHSALE_KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u32,
}
