//! The `flashsale` command line: one clap-derive struct per subcommand, every flag
//! with an `env = "FLASHSALE_…"`, a default and a doc comment.

use clap::{Args, Parser, Subcommand, ValueEnum};
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with the engine (embedded mode: log and snapshots in --data-dir).
    #[command(after_help = "Examples:\n  flashsale serve --demo\n  FLASHSALE_ADMIN_TOKEN=s3cret flashsale serve --listen 0.0.0.0:8080 --data-dir /var/lib/flashsale")]
    Serve(ServeArgs),
    /// Create or update the Postgres schema (Kafka mode); running it again is a no-op.
    #[command(after_help = "Examples:\n  flashsale migrate --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  FLASHSALE_POSTGRES=postgres://… flashsale migrate --json")]
    Migrate(MigrateArgs),
    /// Follow the events topic and write reservations and orders to Postgres, exactly once.
    #[command(after_help = "Examples:\n  flashsale projector --kafka 127.0.0.1:19092 --postgres postgres://postgres@127.0.0.1:15432/flashsale")]
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
    /// Most commands awaiting a reply at once; past it, 503 at once.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Commands queued per partition before new ones get 503.
    #[arg(long, env = "FLASHSALE_QUEUE_DEPTH", default_value_t = 16_384)]
    pub queue_depth: usize,
    /// Reservation attempts per second per userId (0 turns the limit off).
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_PER_USER", default_value_t = 5)]
    pub rate_limit_per_user: u32,
    /// Burst of reservation attempts allowed per userId.
    #[arg(long, env = "FLASHSALE_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
    /// Snapshot a partition after this many commands...
    #[arg(long, env = "FLASHSALE_SNAPSHOT_EVERY_COMMANDS", default_value_t = 50_000)]
    pub snapshot_every_commands: u64,
    /// ...or after this many seconds of log time, whichever comes first.
    #[arg(long, env = "FLASHSALE_SNAPSHOT_EVERY_SECS", default_value_t = 30)]
    pub snapshot_every_secs: u64,
    /// Snapshots kept per partition.
    #[arg(long, env = "FLASHSALE_KEEP_SNAPSHOTS", default_value_t = 3)]
    pub keep_snapshots: usize,
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
}
