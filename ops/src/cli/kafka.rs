//! The flags of the Kafka-mode processes (`engine`, `gateway`, `projector`, `topics`,
//! `migrate`), and their conversion into [`crate::config`].

use super::serve::{EngineTuning, HttpArgs, ReadModelSnapshotArgs};
use super::serve::{DEFAULT_RETENTION_SECS, MAX_RETENTION_SECS};
use super::{H_ADMISSION, H_KAFKA, H_METRICS, H_READMODEL, H_SERVER, H_SNAPSHOTS};
use crate::config::{CommandBatchConfig, EngineConfig, GatewayConfig, ProjectorCmdConfig};
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// When a topic is deleted and created again (a new Kafka topic id), follow the new
    /// topics from their start instead of waiting for an operator. Either way, nothing
    /// of the old log is served once the change is seen (docs/operations.md).
    #[arg(long, env = "FLASHSALE_ADOPT_NEW_TOPICS")]
    pub adopt_new_topics: bool,
    /// Address for GET /metrics (Prometheus); unset: no metrics endpoint.
    #[arg(long, env = "FLASHSALE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Where Kafka is and what the topics are called.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = H_KAFKA)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: String,
    /// Prefix of the topic names (<prefix>commands, <prefix>events, <prefix>replies,
    /// and the public <prefix>reservations, <prefix>inventory-updates, <prefix>orders).
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
#[command(next_help_heading = "Postgres")]
pub struct OptionalPostgres {
    /// Postgres URL, e.g. postgres://postgres@127.0.0.1:15432/flashsale (migrated at start).
    #[arg(long, env = "FLASHSALE_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Most connections this process opens to Postgres.
    #[arg(long, env = "FLASHSALE_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,
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
    /// Add partitions to <prefix>replies, so more gateways can start (--gateway-id
    /// 0..N-1), with the deployment running and without new topics. Only replies grows:
    /// it is keyed by gateway id, not SKU. Running engines learn the new count when the
    /// first reply for a new gateway id comes. Kafka cannot take partitions away.
    #[command(
        after_help = "Examples:\n  flashsale topics grow --kafka 127.0.0.1:19092 --replies-partitions 8\n  # then start the new gateways\n  flashsale gateway --kafka 127.0.0.1:19092 --gateway-id 4 --admin-token s3cret"
    )]
    Grow(TopicsGrowArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TopicsGrowArgs {
    /// Partitions replies should have: gateway ids 0..N-1 can start.
    #[arg(long, env = "FLASHSALE_REPLIES_PARTITIONS")]
    pub replies_partitions: u32,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    // Last: its help heading ("Kafka") applies to what follows it.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TopicsCreateArgs {
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
    // Last: its help heading ("Kafka") applies to what follows it.
    #[command(flatten)]
    pub kafka: KafkaArgs,
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
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data", help_heading = H_SNAPSHOTS)]
    pub data_dir: PathBuf,
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
    /// keys) are remembered after they end, then pruned from the state and snapshots.
    /// Orders are never pruned. 1-2592000 (30 days).
    #[arg(long, env = "FLASHSALE_RETENTION_SECS", default_value_t = DEFAULT_RETENTION_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_RETENTION_SECS), help_heading = H_SNAPSHOTS)]
    pub retention_secs: u64,
    /// Linger of the engine's producer in ms. 0: each record it produces is a whole
    /// applied batch (its events; its replies per gateway) already, so lingering would
    /// only add latency.
    /// (Env: FLASHSALE_ENGINE_LINGER_MS.)
    #[arg(long, env = "FLASHSALE_ENGINE_LINGER_MS", default_value_t = 0, help_heading = H_KAFKA)]
    pub linger_ms: u32,
    /// When `commands`, `events` or `replies` is deleted and created again (a new Kafka
    /// topic id), start again on the new log by itself (from its start, with none of the
    /// old log's state or snapshots) instead of waiting, not serving, for a restart.
    /// Either way nothing of the old log is served once the change is seen
    /// (docs/operations.md).
    #[arg(long, env = "FLASHSALE_ADOPT_NEW_TOPICS", help_heading = H_KAFKA)]
    pub adopt_new_topics: bool,
    /// Address for GET /metrics (Prometheus); unset: no metrics endpoint.
    #[arg(long, env = "FLASHSALE_METRICS_LISTEN", help_heading = H_METRICS)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub pg: OptionalPostgres,
    /// Address for the HTTP API.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:8080", help_heading = H_SERVER)]
    pub listen: SocketAddr,
    /// Bearer token for /api/v1/admin/*. Without one, a random token is generated and printed at start.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true, help_heading = H_SERVER)]
    pub admin_token: Option<String>,
    /// This gateway's id: the partition of the replies topic it reads. Unique per gateway.
    #[arg(long, env = "FLASHSALE_GATEWAY_ID", default_value_t = 0, help_heading = H_SERVER)]
    pub gateway_id: u32,
    /// When a topic is deleted and created again (a new Kafka topic id), follow the new
    /// topics from their start instead of waiting for an operator. Either way, nothing
    /// of the old log is served once the change is seen (docs/operations.md).
    #[arg(long, env = "FLASHSALE_ADOPT_NEW_TOPICS", help_heading = H_SERVER)]
    pub adopt_new_topics: bool,
    /// How long a request waits for the engine's reply before answering 503, counted
    /// from when the server read its head; a request whose deadline passed before its
    /// turn is never put on the log (docs/overload.md).
    #[arg(long, env = "FLASHSALE_REPLY_DEADLINE_MS", default_value_t = 2000, help_heading = H_ADMISSION)]
    pub reply_deadline_ms: u64,
    /// Admission: most commands awaiting a reply at once, all partitions together;
    /// past it, 503 + Retry-After at once, nothing done. Sized from the latency target,
    /// not from memory: a deeper queue only makes every buyer wait longer.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = crate::kafka::KAFKA_MAX_IN_FLIGHT, help_heading = H_ADMISSION)]
    pub max_in_flight: usize,
    /// Admission per partition: most commands of one partition awaiting a reply; past
    /// it, 503 + Retry-After at once. One hot SKU cannot take the whole node's budget
    /// from the other products of the sale. A command takes four broker hops (~10 ms
    /// under load), so 1,024 in flight carry a flash crowd of 10,000 holds/s on one
    /// SKU; 128 turned most of it away (docs/performance.md, "The 10:00 crowd").
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = crate::kafka::KAFKA_MAX_IN_FLIGHT_PER_PARTITION, help_heading = H_ADMISSION)]
    pub max_in_flight_per_partition: usize,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5, help_heading = H_ADMISSION)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10, help_heading = H_ADMISSION)]
    pub rate_limit_burst: u32,
    /// Linger of the gateway's command producer in ms. 0: the command batches
    /// (--command-batch-*) already gather the commands of a partition into one record,
    /// and --command-batch-gap-us paces a partition's records under a steady stream
    /// the way a linger did, without delaying a lone buyer's command (a linger of 1
    /// added ~1 ms to every idle request: lone buyer p50 ~2 ms at 0 against ~3-4 ms at
    /// 1, indicative, shared 2-core box). The engine's producer does not linger either:
    /// each of its records is a whole applied batch already.
    /// (Env: FLASHSALE_LINGER_MS; the old name FLASHSALE_KAFKA_LINGER_MS is still read.)
    #[arg(long, env = "FLASHSALE_LINGER_MS", default_value_t = 0, help_heading = H_KAFKA)]
    pub linger_ms: u32,
    #[command(flatten)]
    pub batching: CommandBatchArgs,
    /// Directory for read-model snapshots when no --postgres is given (in
    /// <data-dir>/readmodel/<events topic>@<topic id>/). Created if missing.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data", help_heading = H_READMODEL)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub readmodel: ReadModelSnapshotArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl From<EngineArgs> for EngineConfig {
    fn from(a: EngineArgs) -> Self {
        EngineConfig {
            kafka: a.kafka.kafka,
            topic_prefix: a.kafka.topic_prefix,
            postgres: a.pg.postgres,
            pg_pool_size: a.pg.pg_pool_size,
            engine: a.engine.into(),
            data_dir: a.data_dir,
            snapshot_every_commands: a.snapshot_every_commands,
            snapshot_every_secs: a.snapshot_every_secs,
            keep_snapshots: a.keep_snapshots,
            retention_secs: a.retention_secs,
            linger_ms: a.linger_ms,
            adopt_new_topics: a.adopt_new_topics,
            metrics_listen: a.metrics_listen,
        }
    }
}

impl From<GatewayArgs> for GatewayConfig {
    fn from(a: GatewayArgs) -> Self {
        GatewayConfig {
            kafka: a.kafka.kafka,
            topic_prefix: a.kafka.topic_prefix,
            postgres: a.pg.postgres,
            pg_pool_size: a.pg.pg_pool_size,
            listen: a.listen,
            admin_token: a.admin_token,
            gateway_id: a.gateway_id,
            adopt_new_topics: a.adopt_new_topics,
            reply_deadline_ms: a.reply_deadline_ms,
            max_in_flight: a.max_in_flight,
            max_in_flight_per_partition: a.max_in_flight_per_partition,
            rate_limit_per_user: a.rate_limit_per_user,
            rate_limit_burst: a.rate_limit_burst,
            linger_ms: a.linger_ms,
            batching: a.batching.into(),
            data_dir: a.data_dir,
            readmodel: a.readmodel.into(),
            http: a.http.into(),
        }
    }
}

impl From<ProjectorArgs> for ProjectorCmdConfig {
    fn from(a: ProjectorArgs) -> Self {
        ProjectorCmdConfig {
            kafka: a.kafka,
            postgres: a.pg.postgres,
            pg_pool_size: a.pg.pg_pool_size,
            topic_prefix: a.topic_prefix,
            projector_batch: a.projector_batch,
            adopt_new_topics: a.adopt_new_topics,
            metrics_listen: a.metrics_listen,
        }
    }
}

/// How the gateway puts commands on `commands`: the commands of one partition that
/// arrive while a record of that partition is in flight leave together, as one record
/// (ARCHITECTURE.md, "Command batches").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Command batches (Kafka mode)")]
pub struct CommandBatchArgs {
    /// Most commands in one `commands` record. A command whose partition has nothing in
    /// flight leaves at once, alone (a lone buyer waits for nothing); the ones that
    /// arrive while a record is in flight wait for its acknowledgement and leave
    /// together. 512 is a few ms of a hot SKU's crowd: one record instead of hundreds,
    /// while the engine's fetch (--max-batch records) still takes many batches at once.
    /// 1: one record per command (the layout before batches).
    #[arg(long, env = "FLASHSALE_COMMAND_BATCH_MAX", default_value_t = flashsale_gateway::kafka::DEFAULT_BATCH_COMMANDS,
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|v| v as usize))]
    pub command_batch_max: usize,
    /// Most payload bytes of one `commands` record (a single command bigger than this
    /// still goes, alone). 256 KiB holds 512 holds with room to spare and stays well
    /// under the broker's `message.max.bytes` (1 MiB by default); at most 1,000,000.
    #[arg(long, env = "FLASHSALE_COMMAND_BATCH_BYTES", default_value_t = flashsale_gateway::kafka::DEFAULT_BATCH_BYTES,
          value_parser = clap::value_parser!(u64).range(256..=1_000_000).map(|v| v as usize))]
    pub command_batch_bytes: usize,
    /// Longest a command waits (µs) behind its partition's record in flight before its
    /// batch leaves anyway. The acknowledgement normally comes first (~1-3 ms on one
    /// broker); this bounds the wait when the broker is slow. 0: a command never waits
    /// (each leaves with whatever queued with it).
    #[arg(long, env = "FLASHSALE_COMMAND_BATCH_WAIT_US", default_value_t = flashsale_gateway::kafka::DEFAULT_BATCH_WAIT_US,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub command_batch_wait_us: u64,
    /// Least time (µs) between two `commands` records of one partition while its
    /// commands keep coming: a command that finds its partition quiet for this long
    /// leaves at once (a lone buyer's next command comes after the reply to the one
    /// before, itself more than 1 ms after that record left, so it is not held back);
    /// under a steady stream each record waits for its predecessor's acknowledgement and
    /// for this gap, so it carries more commands, and the engine, the gateways' follower
    /// and the projector each handle fewer records per hold. It replaces the command producer's linger
    /// (--linger-ms, now 0), which delayed every record, the lone buyer's too.
    /// At most --command-batch-wait-us. 0: records leave as soon as the one before is
    /// acknowledged.
    #[arg(long, env = "FLASHSALE_COMMAND_BATCH_GAP_US", default_value_t = flashsale_gateway::kafka::DEFAULT_BATCH_GAP_US,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub command_batch_gap_us: u64,
}

impl From<CommandBatchArgs> for CommandBatchConfig {
    fn from(a: CommandBatchArgs) -> Self {
        CommandBatchConfig {
            max_commands: a.command_batch_max,
            max_bytes: a.command_batch_bytes,
            wait_us: a.command_batch_wait_us,
            gap_us: a.command_batch_gap_us,
        }
    }
}
