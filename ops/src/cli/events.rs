//! `flashsale events publish` and `flashsale events tail`: the public sale events
//! (docs/events.md).

use super::KafkaArgs;
use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// Publish <prefix>reservations, <prefix>inventory-updates and <prefix>orders from
    /// <prefix>events, exactly once (Kafka transactions). Run one per deployment.
    #[command(
        after_help = "Examples:\n  flashsale events publish --kafka 127.0.0.1:19092\n  flashsale events publish --kafka 127.0.0.1:19092 \\\n      --topic-prefix shop1."
    )]
    Publish(PublishArgs),
    /// Print the public topics' records, one line each, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  flashsale events tail --kafka 127.0.0.1:19092\n  flashsale events tail --kafka 127.0.0.1:19092 --topic orders \\\n      --from-beginning --json"
    )]
    Tail(TailArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Brokers and prefix: reads <prefix>events, writes <prefix>reservations,
    /// <prefix>inventory-updates, <prefix>orders.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub publisher: PublisherTuning,
}

/// The transactional publisher's settings: `events publish` (Kafka mode) and
/// `serve --publish-kafka` (embedded mode).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = super::H_PUBLISH)]
pub struct PublisherTuning {
    /// The producer's transactional.id and the consumer group of its positions; default
    /// <prefix>publisher (`events publish`) or <prefix>embedded-publisher (`serve
    /// --publish-kafka`). A second publisher with the same id fences the first.
    #[arg(long, env = "FLASHSALE_PUBLISHER_ID")]
    pub transactional_id: Option<String>,
    /// Most records read into one Kafka transaction (events records in Kafka mode,
    /// event records of the log embedded), 1-100000.
    #[arg(long, env = "FLASHSALE_PUBLISHER_BATCH", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub publisher_batch: u32,
    /// `events publish`: how long one Kafka transaction stays open for more records, in
    /// ms, 1-10000. Each record read is sent at once; the transaction (its records and
    /// the read positions) commits when it is this old or holds --publisher-batch
    /// records. A commit costs a few broker round trips and a marker per touched
    /// partition, and a read_committed consumer sees a record only after it: shorter
    /// means lower lag and more broker work. 20 keeps that wait a fifth of the 100 ms
    /// lag target at ~50 commits a second (docs/events.md, "Benchmarks").
    /// `serve --publish-kafka` commits once per round of its feed instead.
    #[arg(long, env = "FLASHSALE_PUBLISHER_COMMIT_MS", default_value_t = crate::publish::DEFAULT_COMMIT_MS, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub publisher_commit_ms: u64,
}

impl PublisherTuning {
    /// The publisher's config on `kafka`/`prefix`; `default_id` names the
    /// transactional id when none is given.
    pub fn config(
        &self,
        kafka: String,
        prefix: String,
        default_id: &str,
    ) -> crate::publish::PublisherConfig {
        let mut c = crate::publish::PublisherConfig::new(kafka, prefix);
        c.transactional_id = self
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("{}{default_id}", c.topic_prefix));
        c.max_batch = self.publisher_batch as usize;
        c.commit_interval = std::time::Duration::from_millis(self.publisher_commit_ms);
        c
    }
}

impl From<PublishArgs> for crate::publish::PublisherConfig {
    fn from(a: PublishArgs) -> Self {
        a.publisher
            .config(a.kafka.kafka, a.kafka.topic_prefix, "publisher")
    }
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Which public topic: reservations, inventory-updates or orders (repeat for more);
    /// default all three.
    #[arg(long)]
    pub topic: Vec<String>,
    /// Start at the oldest record instead of the newest.
    #[arg(long)]
    pub from_beginning: bool,
    /// Print each record's value (the CloudEvent) as it is, one JSON object a line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records; 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max: u64,
    /// Stop once no record has come for this many seconds; 0: never.
    #[arg(long, default_value_t = 0)]
    pub idle_exit: u64,
    /// On exit, print to stderr how long records took from their event `time` (the
    /// log time of the command) to this reader: count, p50, p99, max in ms (the first
    /// 1,000,000 records). Measures the publishing lag; run it beside a load.
    #[arg(long)]
    pub lag_summary: bool,
}
