//! `flashsale events publish` and `flashsale events tail`: the public sale events
//! (docs/events.md).

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
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: String,
    /// Prefix of the topic names: reads <prefix>events, writes <prefix>reservations,
    /// <prefix>inventory-updates, <prefix>orders.
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
    /// The producer's transactional.id and the consumer group of its read positions;
    /// default <prefix>publisher. A second publisher with the same id fences the first.
    #[arg(long, env = "FLASHSALE_PUBLISHER_ID")]
    pub transactional_id: Option<String>,
    /// Most events records read into one Kafka transaction (1-100000).
    #[arg(long, env = "FLASHSALE_PUBLISHER_BATCH", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub publisher_batch: u32,
}

impl From<PublishArgs> for crate::publish::PublisherConfig {
    fn from(a: PublishArgs) -> Self {
        let mut c = crate::publish::PublisherConfig::new(a.kafka, a.topic_prefix);
        if let Some(id) = a.transactional_id {
            c.transactional_id = id;
        }
        c.max_batch = a.publisher_batch as usize;
        c
    }
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA", value_parser = flashsale_runtime::kafka::bootstrap_arg)]
    pub kafka: String,
    /// Prefix of the topic names.
    #[arg(
        long = "topic-prefix",
        visible_alias = "prefix",
        env = "FLASHSALE_TOPIC_PREFIX",
        default_value = "flashsale."
    )]
    pub topic_prefix: String,
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
