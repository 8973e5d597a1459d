//! Typed configuration of each process, apart from the command line.
//!
//! One struct per process: [`ServeConfig`] (the HTTP node of `serve`, embedded mode
//! as is), [`KafkaServeConfig`] (what `serve --kafka` adds), [`EngineConfig`],
//! [`GatewayConfig`] and [`ProjectorCmdConfig`]. Each field is named as its flag
//! (`--reply-deadline-ms` is `reply_deadline_ms`), each has the flag's default
//! (`Default`, or `new(..)` where a value is required, such as the brokers), and
//! `validate()` says which flag is wrong and why.
//!
//! The command line ([`crate::cli`]) builds these from flags and `FLASHSALE_*`
//! variables and validates them before anything starts; tests and embedders build
//! them directly (`ServeConfig { partitions: 4, ..ServeConfig::default() }`), and the
//! entry points (`serve::start`, the Kafka-mode commands) validate them again.
//! `docs/configuration.md` is generated from the flags (`flashsale config-reference`);
//! a unit test of `cli` checks that parsing no flags gives exactly these defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration value out of its range: the flag, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag}: {reason}")]
pub struct Invalid {
    /// The flag, e.g. `--partitions`.
    pub flag: &'static str,
    pub reason: String,
}

fn check(ok: bool, flag: &'static str, reason: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid {
            flag,
            reason: reason(),
        })
    }
}

fn at_least_1(v: u64, flag: &'static str) -> Result<(), Invalid> {
    check(v >= 1, flag, || format!("{v}; must be at least 1"))
}

/// Default of `--retention-secs`: the core's idempotency window (24 h).
pub const DEFAULT_RETENTION_SECS: u64 = flashsale_core::core::IDEMPOTENCY_RETENTION_MS / 1000;
/// Largest `--retention-secs` (the core's limit, 30 days).
pub const MAX_RETENTION_SECS: u64 = flashsale_core::core::MAX_RETENTION_MS / 1000;
/// Default topic prefix (`--topic-prefix`).
pub const DEFAULT_TOPIC_PREFIX: &str = "flashsale.";
/// Default address of the HTTP API (`--listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `--session-timeout-ms` range (the broker's `group.min.session.timeout.ms` is 500
/// in `ops/kafka/start.sh`).
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 500..=300_000;
/// `--heartbeat-interval-ms` range.
pub const HEARTBEAT_INTERVAL_MS: std::ops::RangeInclusive<u32> = 50..=100_000;
/// Largest `--standby-window`.
pub const MAX_STANDBY_WINDOW: u64 = 1_000_000;

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid default address")
}

fn partitions_ok(p: u32, flag: &'static str) -> Result<(), Invalid> {
    let max = flashsale_proto::MAX_PARTITIONS;
    check((1..=max).contains(&p), flag, || {
        format!("{p}; must be 1-{max}")
    })
}

fn retention_ok(secs: u64) -> Result<(), Invalid> {
    check(
        (1..=MAX_RETENTION_SECS).contains(&secs),
        "--retention-secs",
        || format!("{secs}; must be 1-{MAX_RETENTION_SECS} (30 days)"),
    )
}

fn rate_limit_ok(per_user: u32, burst: u32) -> Result<(), Invalid> {
    check(per_user == 0 || burst >= 1, "--rate-limit-burst", || {
        format!("{burst}; must be at least 1 while --rate-limit-per-user is {per_user} (0 turns the limit off)")
    })
}

fn brokers_ok(brokers: &str) -> Result<(), Invalid> {
    flashsale_runtime::kafka::bootstrap_arg(brokers)
        .map(drop)
        .map_err(|reason| Invalid {
            flag: "--kafka",
            reason,
        })
}

/// The HTTP server's timeouts and limits (`serve` in both modes, `gateway`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub http_header_timeout_secs: u64,
    pub http_body_timeout_secs: u64,
    pub http_body_deadline_secs: u64,
    pub http_max_connections: u64,
    pub http_max_requests: u64,
    /// 0 turns the rule off.
    pub admission_max_wait_ms: u64,
    /// 0 turns the adaptive limit off (the fixed budgets stay).
    pub admission_target_ms: u64,
    /// 0 turns the lag rule off.
    pub admission_max_lag_ms: u64,
    pub shutdown_drain_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            http_header_timeout_secs: 30,
            http_body_timeout_secs: 10,
            http_body_deadline_secs: 30,
            http_max_connections: 10_000,
            http_max_requests: flashsale_gateway::server::DEFAULT_MAX_REQUESTS as u64,
            admission_max_wait_ms: flashsale_gateway::admission::DEFAULT_MAX_WAIT_MS,
            admission_target_ms: flashsale_gateway::admission::DEFAULT_TARGET_MS,
            admission_max_lag_ms: flashsale_gateway::admission::DEFAULT_MAX_LAG_MS,
            shutdown_drain_secs: 10,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_1(self.http_header_timeout_secs, "--http-header-timeout-secs")?;
        at_least_1(self.http_body_timeout_secs, "--http-body-timeout-secs")?;
        at_least_1(self.http_body_deadline_secs, "--http-body-deadline-secs")?;
        at_least_1(self.http_max_connections, "--http-max-connections")?;
        at_least_1(self.http_max_requests, "--http-max-requests")
    }

    pub fn limits(&self) -> flashsale_gateway::server::HttpLimits {
        use std::time::Duration;
        flashsale_gateway::server::HttpLimits {
            header_read_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            body_read_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
            body_deadline: Duration::from_secs(self.http_body_deadline_secs.max(1)),
            max_connections: usize::try_from(self.http_max_connections)
                .unwrap_or(usize::MAX)
                .max(1),
            max_requests: usize::try_from(self.http_max_requests)
                .unwrap_or(usize::MAX)
                .max(1),
            admission: flashsale_gateway::admission::AdmissionPolicy::from_millis(
                self.admission_max_wait_ms,
                self.admission_target_ms,
                self.admission_max_lag_ms,
            ),
            drain: Duration::from_secs(self.shutdown_drain_secs),
        }
    }
}

/// `serve`: the HTTP node and, embedded, the log and engine over `data_dir`. With
/// [`KafkaServeConfig`] beside it, the same node in Kafka mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// `None`: a random token, printed at start.
    pub admin_token: Option<String>,
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub demo: bool,
    pub gateway_id: u32,
    pub reply_deadline_ms: u64,
    /// `None`: the mode's default (`serve::EMBEDDED_MAX_IN_FLIGHT`,
    /// `kafka::KAFKA_MAX_IN_FLIGHT`).
    pub max_in_flight: Option<usize>,
    /// `None`: the mode's default, as `max_in_flight`.
    pub max_in_flight_per_partition: Option<usize>,
    pub queue_depth: usize,
    pub ready_with_failed_partitions: bool,
    pub rate_limit_per_user: u32,
    pub rate_limit_burst: u32,
    pub snapshot_every_commands: u64,
    pub snapshot_every_secs: u64,
    pub keep_snapshots: usize,
    pub retention_secs: u64,
    pub snapshot_reserve_mb: u64,
    pub http: HttpConfig,
    /// Embedded mode: publish the public events to Kafka (`--publish-kafka`;
    /// docs/events.md). `None`: no publishing.
    pub publish: Option<crate::publish::PublisherConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            admin_token: None,
            data_dir: PathBuf::from("./data"),
            partitions: 8,
            demo: false,
            gateway_id: 0,
            reply_deadline_ms: 2000,
            max_in_flight: None,
            max_in_flight_per_partition: None,
            queue_depth: 4_096,
            ready_with_failed_partitions: false,
            rate_limit_per_user: 5,
            rate_limit_burst: 10,
            snapshot_every_commands: 50_000,
            snapshot_every_secs: 30,
            keep_snapshots: 3,
            retention_secs: DEFAULT_RETENTION_SECS,
            snapshot_reserve_mb: 64,
            http: HttpConfig::default(),
            publish: None,
        }
    }
}

impl ServeConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        partitions_ok(self.partitions, "--partitions")?;
        at_least_1(self.reply_deadline_ms, "--reply-deadline-ms")?;
        if let Some(n) = self.max_in_flight {
            at_least_1(n as u64, "--max-in-flight")?;
        }
        if let Some(n) = self.max_in_flight_per_partition {
            at_least_1(n as u64, "--max-in-flight-per-partition")?;
        }
        at_least_1(self.queue_depth as u64, "--queue-depth")?;
        if let Some(p) = &self.publish {
            flashsale_runtime::kafka::bootstrap_arg(&p.kafka)
                .map(drop)
                .map_err(|reason| Invalid {
                    flag: "--publish-kafka",
                    reason,
                })?;
        }
        rate_limit_ok(self.rate_limit_per_user, self.rate_limit_burst)?;
        at_least_1(self.snapshot_every_commands, "--snapshot-every-commands")?;
        at_least_1(self.snapshot_every_secs, "--snapshot-every-secs")?;
        at_least_1(self.keep_snapshots as u64, "--keep-snapshots")?;
        retention_ok(self.retention_secs)?;
        self.http.validate()
    }
}

/// The engine's consumer-group settings (`engine`, `serve --kafka`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineGroupConfig {
    pub engine_group: String,
    pub max_batch: usize,
    pub session_timeout_ms: u32,
    /// Used as at most a third of `session_timeout_ms`.
    pub heartbeat_interval_ms: u32,
    /// `--group-protocol consumer` (KIP-848), the default.
    pub group_protocol_consumer: bool,
    pub standby_window: u64,
}

impl Default for EngineGroupConfig {
    fn default() -> Self {
        EngineGroupConfig {
            engine_group: "flashsale-engine".into(),
            max_batch: 4096,
            session_timeout_ms: 600,
            heartbeat_interval_ms: 150,
            group_protocol_consumer: true,
            standby_window: 10_000,
        }
    }
}

impl EngineGroupConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check(!self.engine_group.is_empty(), "--engine-group", || {
            "empty; name the consumer group of the deployment's engines".into()
        })?;
        at_least_1(self.max_batch as u64, "--max-batch")?;
        let s = self.session_timeout_ms;
        check(
            SESSION_TIMEOUT_MS.contains(&s),
            "--session-timeout-ms",
            || format!("{s}; must be 500-300000"),
        )?;
        let h = self.heartbeat_interval_ms;
        check(
            HEARTBEAT_INTERVAL_MS.contains(&h),
            "--heartbeat-interval-ms",
            || format!("{h}; must be 50-100000"),
        )?;
        let w = self.standby_window;
        check(w <= MAX_STANDBY_WINDOW, "--standby-window", || {
            format!("{w}; must be 0-{MAX_STANDBY_WINDOW}")
        })
    }

    /// The heartbeat actually used: at most a third of the session.
    pub fn heartbeat_ms(&self) -> u32 {
        self.heartbeat_interval_ms.min(self.session_timeout_ms / 3)
    }
}

/// When a Kafka-mode gateway snapshots its read model (0 and 0: never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModelSnapshotConfig {
    pub readmodel_snapshot_every_events: u64,
    pub readmodel_snapshot_every_secs: u64,
}

impl Default for ReadModelSnapshotConfig {
    fn default() -> Self {
        ReadModelSnapshotConfig {
            readmodel_snapshot_every_events: 100_000,
            readmodel_snapshot_every_secs: 60,
        }
    }
}

impl ReadModelSnapshotConfig {
    pub fn policy(&self) -> flashsale_gateway::snapshot::Policy {
        flashsale_gateway::snapshot::Policy {
            every_events: self.readmodel_snapshot_every_events,
            every: std::time::Duration::from_secs(self.readmodel_snapshot_every_secs),
        }
    }
}

/// How a Kafka-mode gateway batches the commands of one partition into one record
/// (`--command-batch-*`; `flashsale_gateway::kafka::BatchLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandBatchConfig {
    pub max_commands: usize,
    pub max_bytes: usize,
    pub wait_us: u64,
    pub gap_us: u64,
}

impl Default for CommandBatchConfig {
    fn default() -> Self {
        use flashsale_gateway::kafka as k;
        CommandBatchConfig {
            max_commands: k::DEFAULT_BATCH_COMMANDS,
            max_bytes: k::DEFAULT_BATCH_BYTES,
            wait_us: k::DEFAULT_BATCH_WAIT_US,
            gap_us: k::DEFAULT_BATCH_GAP_US,
        }
    }
}

impl CommandBatchConfig {
    pub fn limits(&self) -> flashsale_gateway::kafka::BatchLimits {
        flashsale_gateway::kafka::BatchLimits {
            max_commands: self.max_commands,
            max_bytes: self.max_bytes,
            max_wait: std::time::Duration::from_micros(self.wait_us),
            min_gap: std::time::Duration::from_micros(self.gap_us),
        }
    }
}

/// What `serve --kafka` adds to [`ServeConfig`]: engine + gateway (+ projector with
/// `postgres`) in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaServeConfig {
    /// Bootstrap servers, host:port[,host:port].
    pub kafka: String,
    pub postgres: Option<String>,
    pub pg_pool_size: usize,
    pub topic_prefix: String,
    pub replies_partitions: u32,
    /// The gateway's command producer.
    pub linger_ms: u32,
    /// The gateway's command batches.
    pub batching: CommandBatchConfig,
    /// Engine, gateway and projector follow recreated topics by themselves
    /// (`--adopt-new-topics`).
    pub adopt_new_topics: bool,
    pub engine: EngineGroupConfig,
    pub readmodel: ReadModelSnapshotConfig,
}

impl KafkaServeConfig {
    /// The defaults, on the brokers `kafka`.
    pub fn new(kafka: impl Into<String>) -> Self {
        KafkaServeConfig {
            kafka: kafka.into(),
            postgres: None,
            pg_pool_size: 8,
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            replies_partitions: 4,
            linger_ms: 0,
            batching: CommandBatchConfig::default(),
            adopt_new_topics: false,
            engine: EngineGroupConfig::default(),
            readmodel: ReadModelSnapshotConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        brokers_ok(&self.kafka)?;
        at_least_1(self.pg_pool_size as u64, "--pg-pool-size")?;
        partitions_ok(self.replies_partitions, "--replies-partitions")?;
        self.engine.validate()
    }
}

/// `serve` as the command line gives it: the node, Kafka mode if asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeCommandConfig {
    pub node: ServeConfig,
    /// `Some`: Kafka mode.
    pub kafka: Option<KafkaServeConfig>,
    /// Why this mode, for the first line of the log.
    pub mode_reason: String,
}

impl ServeCommandConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.node.validate()?;
        match &self.kafka {
            Some(_) if self.node.publish.is_some() => Err(Invalid {
                flag: "--publish-kafka",
                reason: "embedded mode only; in Kafka mode run `flashsale events publish`".into(),
            }),
            Some(k) => k.validate(),
            None => Ok(()),
        }
    }
}

/// `engine` (Kafka mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub kafka: String,
    pub topic_prefix: String,
    /// Snapshots in Postgres; `None`: files under `data_dir`.
    pub postgres: Option<String>,
    pub pg_pool_size: usize,
    pub engine: EngineGroupConfig,
    pub data_dir: PathBuf,
    pub snapshot_every_commands: u64,
    pub snapshot_every_secs: u64,
    pub keep_snapshots: usize,
    pub retention_secs: u64,
    pub linger_ms: u32,
    /// Start again on a recreated topic's new log by itself (`--adopt-new-topics`).
    pub adopt_new_topics: bool,
    pub metrics_listen: Option<SocketAddr>,
}

impl EngineConfig {
    /// The defaults, on the brokers `kafka`.
    pub fn new(kafka: impl Into<String>) -> Self {
        EngineConfig {
            kafka: kafka.into(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            postgres: None,
            pg_pool_size: 8,
            engine: EngineGroupConfig::default(),
            data_dir: PathBuf::from("./data"),
            snapshot_every_commands: 50_000,
            snapshot_every_secs: 30,
            keep_snapshots: 3,
            retention_secs: DEFAULT_RETENTION_SECS,
            linger_ms: 0,
            adopt_new_topics: false,
            metrics_listen: None,
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        brokers_ok(&self.kafka)?;
        at_least_1(self.pg_pool_size as u64, "--pg-pool-size")?;
        self.engine.validate()?;
        at_least_1(self.snapshot_every_commands, "--snapshot-every-commands")?;
        at_least_1(self.snapshot_every_secs, "--snapshot-every-secs")?;
        at_least_1(self.keep_snapshots as u64, "--keep-snapshots")?;
        retention_ok(self.retention_secs)
    }
}

/// `gateway` (Kafka mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub kafka: String,
    pub topic_prefix: String,
    /// Orders and read-model snapshots in Postgres; `None`: orders in memory,
    /// snapshots under `data_dir`.
    pub postgres: Option<String>,
    pub pg_pool_size: usize,
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    pub gateway_id: u32,
    /// Follow recreated topics by itself (`--adopt-new-topics`).
    pub adopt_new_topics: bool,
    pub reply_deadline_ms: u64,
    pub max_in_flight: usize,
    pub max_in_flight_per_partition: usize,
    pub rate_limit_per_user: u32,
    pub rate_limit_burst: u32,
    pub linger_ms: u32,
    /// The command batches.
    pub batching: CommandBatchConfig,
    pub data_dir: PathBuf,
    pub readmodel: ReadModelSnapshotConfig,
    pub http: HttpConfig,
}

impl GatewayConfig {
    /// The defaults, on the brokers `kafka`.
    pub fn new(kafka: impl Into<String>) -> Self {
        GatewayConfig {
            kafka: kafka.into(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            postgres: None,
            pg_pool_size: 8,
            listen: default_listen(),
            admin_token: None,
            gateway_id: 0,
            adopt_new_topics: false,
            reply_deadline_ms: 2000,
            max_in_flight: crate::kafka::KAFKA_MAX_IN_FLIGHT,
            max_in_flight_per_partition: crate::kafka::KAFKA_MAX_IN_FLIGHT_PER_PARTITION,
            rate_limit_per_user: 5,
            rate_limit_burst: 10,
            linger_ms: 0,
            batching: CommandBatchConfig::default(),
            data_dir: PathBuf::from("./data"),
            readmodel: ReadModelSnapshotConfig::default(),
            http: HttpConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        brokers_ok(&self.kafka)?;
        at_least_1(self.pg_pool_size as u64, "--pg-pool-size")?;
        at_least_1(self.reply_deadline_ms, "--reply-deadline-ms")?;
        at_least_1(self.max_in_flight as u64, "--max-in-flight")?;
        at_least_1(
            self.max_in_flight_per_partition as u64,
            "--max-in-flight-per-partition",
        )?;
        rate_limit_ok(self.rate_limit_per_user, self.rate_limit_burst)?;
        self.http.validate()
    }
}

/// `projector` (Kafka mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorCmdConfig {
    pub kafka: String,
    pub postgres: String,
    pub pg_pool_size: usize,
    pub topic_prefix: String,
    pub projector_batch: usize,
    /// Follow recreated topics by itself (`--adopt-new-topics`).
    pub adopt_new_topics: bool,
    pub metrics_listen: Option<SocketAddr>,
}

impl ProjectorCmdConfig {
    /// The defaults, on the brokers `kafka` and the Postgres `postgres`.
    pub fn new(kafka: impl Into<String>, postgres: impl Into<String>) -> Self {
        ProjectorCmdConfig {
            kafka: kafka.into(),
            postgres: postgres.into(),
            pg_pool_size: 8,
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            projector_batch: 5000,
            adopt_new_topics: false,
            metrics_listen: None,
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        brokers_ok(&self.kafka)?;
        check(!self.postgres.trim().is_empty(), "--postgres", || {
            "empty; give a URL such as postgres://postgres@127.0.0.1:15432/flashsale".into()
        })?;
        at_least_1(self.pg_pool_size as u64, "--pg-pool-size")?;
        at_least_1(self.projector_batch as u64, "--projector-batch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServeConfig::default().validate().unwrap();
        KafkaServeConfig::new("127.0.0.1:9092").validate().unwrap();
        EngineConfig::new("127.0.0.1:9092").validate().unwrap();
        GatewayConfig::new("127.0.0.1:9092").validate().unwrap();
        ProjectorCmdConfig::new("127.0.0.1:9092", "postgres://u@h/db")
            .validate()
            .unwrap();
    }

    #[test]
    fn each_out_of_range_value_names_its_flag() {
        let serve = |f: fn(&mut ServeConfig)| {
            let mut c = ServeConfig::default();
            f(&mut c);
            c.validate().unwrap_err().flag
        };
        assert_eq!(serve(|c| c.partitions = 0), "--partitions");
        assert_eq!(serve(|c| c.partitions = 4097), "--partitions");
        assert_eq!(serve(|c| c.reply_deadline_ms = 0), "--reply-deadline-ms");
        assert_eq!(serve(|c| c.max_in_flight = Some(0)), "--max-in-flight");
        assert_eq!(
            serve(|c| c.max_in_flight_per_partition = Some(0)),
            "--max-in-flight-per-partition"
        );
        assert_eq!(serve(|c| c.queue_depth = 0), "--queue-depth");
        assert_eq!(serve(|c| c.rate_limit_burst = 0), "--rate-limit-burst");
        assert_eq!(
            serve(|c| c.snapshot_every_commands = 0),
            "--snapshot-every-commands"
        );
        assert_eq!(
            serve(|c| c.snapshot_every_secs = 0),
            "--snapshot-every-secs"
        );
        assert_eq!(serve(|c| c.keep_snapshots = 0), "--keep-snapshots");
        assert_eq!(serve(|c| c.retention_secs = 0), "--retention-secs");
        assert_eq!(
            serve(|c| c.retention_secs = MAX_RETENTION_SECS + 1),
            "--retention-secs"
        );
        assert_eq!(
            serve(|c| c.http.http_max_connections = 0),
            "--http-max-connections"
        );
        assert_eq!(
            serve(|c| c.http.http_max_requests = 0),
            "--http-max-requests"
        );
        // The rate limit off: any burst.
        let mut c = ServeConfig {
            rate_limit_per_user: 0,
            rate_limit_burst: 0,
            ..ServeConfig::default()
        };
        c.validate().unwrap();
        c.max_in_flight = Some(1);
        c.validate().unwrap();

        let kafka = |f: fn(&mut KafkaServeConfig)| {
            let mut c = KafkaServeConfig::new("127.0.0.1:9092");
            f(&mut c);
            c.validate().unwrap_err().flag
        };
        assert_eq!(kafka(|c| c.kafka = "no-port".into()), "--kafka");
        assert_eq!(kafka(|c| c.replies_partitions = 0), "--replies-partitions");
        assert_eq!(kafka(|c| c.pg_pool_size = 0), "--pg-pool-size");
        assert_eq!(
            kafka(|c| c.engine.session_timeout_ms = 499),
            "--session-timeout-ms"
        );
        assert_eq!(
            kafka(|c| c.engine.heartbeat_interval_ms = 10),
            "--heartbeat-interval-ms"
        );
        assert_eq!(
            kafka(|c| c.engine.standby_window = MAX_STANDBY_WINDOW + 1),
            "--standby-window"
        );
        assert_eq!(kafka(|c| c.engine.engine_group.clear()), "--engine-group");

        let mut e = EngineConfig::new("127.0.0.1:9092");
        e.keep_snapshots = 0;
        assert_eq!(e.validate().unwrap_err().flag, "--keep-snapshots");
        let mut g = GatewayConfig::new("127.0.0.1:9092");
        g.max_in_flight_per_partition = 0;
        assert_eq!(
            g.validate().unwrap_err().flag,
            "--max-in-flight-per-partition"
        );
        let mut p = ProjectorCmdConfig::new("127.0.0.1:9092", "postgres://u@h/db");
        p.projector_batch = 0;
        assert_eq!(p.validate().unwrap_err().flag, "--projector-batch");
        p.projector_batch = 1;
        p.postgres = " ".into();
        assert_eq!(p.validate().unwrap_err().flag, "--postgres");
        let sc = ServeCommandConfig {
            node: ServeConfig::default(),
            kafka: Some(KafkaServeConfig::new("h:1")),
            mode_reason: String::new(),
        };
        sc.validate().unwrap();
    }

    #[test]
    fn heartbeat_is_at_most_a_third_of_the_session() {
        let g = EngineGroupConfig {
            session_timeout_ms: 600,
            heartbeat_interval_ms: 1000,
            ..EngineGroupConfig::default()
        };
        assert_eq!(g.heartbeat_ms(), 200);
        assert_eq!(EngineGroupConfig::default().heartbeat_ms(), 150);
    }
}
