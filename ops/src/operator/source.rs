//! Where the operators' tools read from: the command log (embedded files or the Kafka
//! `commands` topic) and the snapshot store (files or Postgres).

use anyhow::{bail, Context};
use clap::Args;
use flashsale_engine::log::{LogRecord, PartitionLog};
use flashsale_engine::recovery::{load_partition, Access};
use flashsale_engine::store::{FileSnapshotStore, SnapshotInfo, SnapshotStore};
use flashsale_engine::State;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which deployment to inspect: an embedded data directory (the default), or Kafka
/// (+ Postgres for snapshots and orders).
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Embedded mode: the server's data directory (read only; a running server is fine).
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Kafka mode: bootstrap servers. Set, the command log is read from Kafka.
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: Option<String>,
    /// Kafka mode: Postgres URL (snapshots; orders for `audit`).
    #[arg(long, env = "FLASHSALE_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Kafka mode: prefix of the topic names.
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
    /// Why this mode (set by `Cli::resolve`; not a flag).
    #[arg(skip)]
    pub mode_reason: String,
}

/// Sequential access to one partition's command records.
pub trait CommandLog: Send {
    fn partitions(&self) -> u32;
    /// `[first, end)`: the oldest offset still kept and the next offset to be written.
    fn bounds(&mut self, partition: u32) -> anyhow::Result<(u64, u64)>;
    /// Feeds records from `from` (up to the end seen when called) to `f` until it
    /// returns false.
    fn scan(
        &mut self,
        partition: u32,
        from: u64,
        f: &mut dyn FnMut(LogRecord) -> bool,
    ) -> anyhow::Result<()>;
    /// The server's verdict on the partition, reached by the server's own loader
    /// (`flashsale_engine::recovery`): `Ok(Some(..))` where it starts and what it
    /// found; `Err(why)`: it refuses the partition (it stays down), `why` naming the
    /// file and the damage. `Ok(None)`: no such verdict for this log (Kafka mode: an
    /// engine decides per assignment, from the topic and the snapshot store).
    fn verdict(&mut self, _partition: u32) -> Result<Option<Verdict>, String> {
        Ok(None)
    }
}

/// Where the server starts a partition, and what it found on the way.
#[derive(Debug)]
pub struct Verdict {
    /// The snapshot it starts from (none: offset 0).
    pub snapshot: Option<(SnapshotInfo, State)>,
    /// Where that snapshot is kept (its file).
    pub snapshot_location: Option<String>,
    /// Refused snapshots, damage recovered past, a torn tail to cut.
    pub notes: Vec<String>,
}

pub struct Sources {
    pub log: Box<dyn CommandLog>,
    pub store: Arc<dyn SnapshotStore>,
    pub pool: Option<flashsale_runtime::pg::Pool>,
    pub describe: String,
    /// "embedded mode: --data-dir given", "Kafka mode: FLASHSALE_KAFKA is set"...
    pub mode_reason: String,
    /// Kafka mode: the identities (`name/topic-id`) of the commands and events topics;
    /// snapshots and orders in Postgres are those of these logs.
    pub logs: Option<LogIds>,
}

/// Which logs a Kafka deployment's rows in Postgres must belong to.
#[derive(Debug, Clone)]
pub struct LogIds {
    /// Snapshots: keyed by the commands topic.
    pub commands: String,
    /// Projector offsets and orders: keyed by the events topic.
    pub events: String,
}

impl SourceArgs {
    /// An explicit `--data-dir` beats FLASHSALE_KAFKA from the environment; records why
    /// the mode was chosen.
    pub fn resolve(&mut self, m: &clap::ArgMatches) {
        use clap::parser::ValueSource::CommandLine;
        let dir_given = m.value_source("data_dir") == Some(CommandLine);
        let kafka_given = m.value_source("kafka") == Some(CommandLine);
        self.mode_reason = match &self.kafka {
            Some(_) if kafka_given => "Kafka mode: --kafka given".to_string(),
            Some(_) if dir_given => {
                self.kafka = None;
                self.postgres = None;
                "embedded mode: --data-dir given (FLASHSALE_KAFKA from the environment ignored)"
                    .to_string()
            }
            Some(_) => {
                "Kafka mode: FLASHSALE_KAFKA is set (pass --data-dir DIR to read an embedded data directory)"
                    .to_string()
            }
            None if dir_given => "embedded mode: --data-dir given".to_string(),
            None => "embedded mode: no --kafka and no FLASHSALE_KAFKA".to_string(),
        };
    }

    /// Opens the log and the snapshot store. Must be called inside the tokio runtime
    /// (the Postgres store keeps its handle); use the result from blocking code.
    pub async fn open(&self) -> anyhow::Result<Sources> {
        let sources = self.open_inner().await?;
        if !sources.mode_reason.is_empty() {
            eprintln!("{}; reading {}", sources.mode_reason, sources.describe);
        }
        Ok(sources)
    }

    async fn open_inner(&self) -> anyhow::Result<Sources> {
        match &self.kafka {
            None => {
                let log = EmbeddedLog::open(self.data_dir.clone())?;
                let store = Arc::new(FileSnapshotStore::new(self.data_dir.join("snapshots")));
                Ok(Sources {
                    describe: format!("data dir {}", self.data_dir.display()),
                    mode_reason: self.mode_reason.clone(),
                    log: Box::new(log),
                    store,
                    pool: None,
                    logs: None,
                })
            }
            Some(brokers) => {
                let topic = format!("{}commands", self.topic_prefix);
                let log = KafkaLog::open(brokers, &topic)?;
                let timeout = flashsale_runtime::kafka::ADMIN_TIMEOUT;
                let commands =
                    flashsale_runtime::kafka_id::topic_identity(brokers, &topic, timeout)?;
                let events = flashsale_runtime::kafka_id::topic_identity(
                    brokers,
                    &format!("{}events", self.topic_prefix),
                    timeout,
                )?;
                let logs = LogIds {
                    commands: commands.log_id(),
                    events: events.log_id(),
                };
                let (store, pool): (Arc<dyn SnapshotStore>, _) = match &self.postgres {
                    Some(url) => {
                        let pool = flashsale_runtime::pg::connect_checked(
                            url,
                            4,
                            flashsale_runtime::pg::Wait::No,
                        )
                        .await?;
                        (
                            Arc::new(
                                flashsale_engine::pg::PgSnapshotStore::new(pool.clone())
                                    .with_log_id(logs.commands.clone()),
                            ),
                            Some(pool),
                        )
                    }
                    // As the engine keeps them: a directory per log (ops/src/kafka/logid.rs).
                    None => (
                        Arc::new(FileSnapshotStore::new(
                            self.data_dir
                                .join("snapshots")
                                .join(format!("{}@{}", commands.name, commands.id)),
                        )),
                        None,
                    ),
                };
                Ok(Sources {
                    describe: format!("Kafka {brokers}, topic {commands}"),
                    mode_reason: self.mode_reason.clone(),
                    log: Box::new(log),
                    store,
                    pool,
                    logs: Some(logs),
                })
            }
        }
    }
}

/// The embedded log files of a data directory, opened through the server's own loader.
pub struct EmbeddedLog {
    dir: PathBuf,
    partitions: u32,
    store: FileSnapshotStore,
    /// Logs opened so far (each scanned once), by partition.
    opened: std::collections::BTreeMap<u32, PartitionLog>,
}

impl EmbeddedLog {
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        let meta_path = dir.join("flashsale.json");
        let bytes = std::fs::read(&meta_path).with_context(|| {
            format!("{} not found: is {} a flashsale data directory? pass --data-dir (or --kafka for Kafka mode)", meta_path.display(), dir.display())
        })?;
        let meta: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", meta_path.display()))?;
        let partitions = meta
            .get("partitions")
            .and_then(|v| v.as_u64())
            .context("flashsale.json has no partition count")? as u32;
        Ok(EmbeddedLog {
            store: FileSnapshotStore::new(dir.join("snapshots")),
            dir,
            partitions,
            opened: Default::default(),
        })
    }

    fn check_partition(&self, partition: u32) -> anyhow::Result<()> {
        if partition >= self.partitions {
            bail!(
                "unknown partition {partition}: this data directory has partitions 0-{}",
                self.partitions - 1
            );
        }
        Ok(())
    }

    /// The partition's log as the server would open it; the server's refusal is the
    /// error.
    fn log(&mut self, partition: u32) -> anyhow::Result<&PartitionLog> {
        self.check_partition(partition)?;
        if !self.opened.contains_key(&partition) {
            let loaded = load_partition(
                &self.dir.join("log"),
                partition,
                &self.store,
                Access::ReadOnly,
            )?;
            self.opened.insert(partition, loaded.log);
        }
        Ok(&self.opened[&partition])
    }
}

impl CommandLog for EmbeddedLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }
    fn bounds(&mut self, partition: u32) -> anyhow::Result<(u64, u64)> {
        let log = self.log(partition)?;
        Ok((log.first_offset(), log.next_offset()))
    }
    fn scan(
        &mut self,
        partition: u32,
        from: u64,
        f: &mut dyn FnMut(LogRecord) -> bool,
    ) -> anyhow::Result<()> {
        let log = self.log(partition)?;
        for rec in log.reader_from(from)? {
            if !f(rec?) {
                break;
            }
        }
        Ok(())
    }
    fn verdict(&mut self, partition: u32) -> Result<Option<Verdict>, String> {
        self.check_partition(partition).map_err(|e| e.to_string())?;
        let loaded = load_partition(
            &self.dir.join("log"),
            partition,
            &self.store,
            Access::ReadOnly,
        )
        .map_err(|e| format!("{e:#}"))?;
        let notes = loaded.notes();
        self.opened.insert(partition, loaded.log);
        Ok(Some(Verdict {
            snapshot: loaded.snapshot,
            snapshot_location: loaded.snapshot_location,
            notes,
        }))
    }
}

/// A partition of the Kafka `commands` topic, read with a plain consumer (no group).
pub struct KafkaLog {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: u32,
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaLog {
    pub fn open(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "flashsale-operator")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating a Kafka consumer")?;
        let md = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .with_context(|| {
                format!("cannot reach the Kafka broker at {brokers}: is it running? check --kafka")
            })?;
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len() as u32)
            .unwrap_or(0);
        if partitions == 0 {
            bail!("topic {topic} does not exist on {brokers}: check --topic-prefix, or create it with `flashsale topics create`");
        }
        Ok(KafkaLog {
            consumer,
            topic: topic.to_string(),
            partitions,
        })
    }
}

impl CommandLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }
    fn bounds(&mut self, partition: u32) -> anyhow::Result<(u64, u64)> {
        use rdkafka::consumer::Consumer;
        if partition >= self.partitions {
            bail!(
                "unknown partition {partition}: topic {} has partitions 0-{}",
                self.topic,
                self.partitions - 1
            );
        }
        let (lo, hi) = self
            .consumer
            .fetch_watermarks(&self.topic, partition as i32, KAFKA_TIMEOUT)
            .context("reading the partition's offsets from Kafka")?;
        Ok((lo.max(0) as u64, hi.max(0) as u64))
    }
    fn scan(
        &mut self,
        partition: u32,
        from: u64,
        f: &mut dyn FnMut(LogRecord) -> bool,
    ) -> anyhow::Result<()> {
        use rdkafka::consumer::Consumer;
        use rdkafka::Message;
        let (_, end) = self.bounds(partition)?;
        if from >= end {
            return Ok(());
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topic,
            partition as i32,
            rdkafka::Offset::Offset(from as i64),
        )?;
        self.consumer.assign(&tpl)?;
        let mut idle = 0;
        loop {
            match self.consumer.poll(Duration::from_millis(500)) {
                None => {
                    idle += 1;
                    if idle > 60 {
                        bail!("no records from {} partition {partition} for 30 s (next expected offset below {end})", self.topic);
                    }
                }
                Some(Err(e)) => bail!("reading {} partition {partition}: {e}", self.topic),
                Some(Ok(m)) => {
                    idle = 0;
                    let offset = m.offset() as u64;
                    let rec = LogRecord {
                        offset,
                        log_time: m.timestamp().to_millis().unwrap_or(0).max(0) as u64,
                        payload: m.payload().unwrap_or_default().to_vec(),
                    };
                    if !f(rec) || offset + 1 >= end {
                        break;
                    }
                }
            }
        }
        self.consumer.unassign()?;
        Ok(())
    }
}
