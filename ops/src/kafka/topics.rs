//! The topics of Kafka mode and `flashsale topics create`.
//!
//! | topic | partitions | key | retention | why |
//! |---|---|---|---|---|
//! | `<prefix>commands` | P | skuId | 7 days | the log the engine state is rebuilt from: recovery loads the newest snapshot at or below the group's committed offset and replays after it, so retention must exceed the snapshot interval (30 s by default) by a wide margin |
//! | `<prefix>events` | P (same as commands) | skuId | forever | gateways' read models and the order projector are built from it |
//! | `<prefix>replies` | G (one per gateway id) | none | 1 hour | a reply matters for seconds |
//!
//! Every topic: `cleanup.policy=delete` (never compacted: offsets are the engine's
//! sequence numbers), `message.timestamp.type=CreateTime` (the engine's clock is the
//! record time; `message.timestamp.after.max.ms=60000` refuses records from a producer
//! whose clock runs more than a minute ahead, which would expire holds early).
//!
//! Production: `--replication-factor 3 --min-insync-replicas 2` (with the producers'
//! `acks=all`, an acknowledged command survives the loss of any one broker); this
//! project's test broker is a single node, hence the defaults of 1.

use anyhow::Context;
use flashsale_proto::Topics;
use flashsale_runtime::kafka::{base_config, count_partitions, QuietContext, ADMIN_TIMEOUT};
pub use flashsale_runtime::kafka::{check, partition_counts};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// What to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub topics: Topics,
    /// Partitions of `commands` and `events` (engine actors).
    pub partitions: u32,
    /// Partitions of `replies`: one per gateway id (ids 0..G-1).
    pub replies_partitions: u32,
    pub replication_factor: i32,
    pub min_insync_replicas: u32,
}

/// Retention of the commands topic (7 days).
pub const COMMANDS_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Retention of the replies topic (1 hour).
pub const REPLIES_RETENTION_MS: u64 = 3600 * 1000;

/// One topic as `create` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: Vec<(&'static str, String)>,
}

/// The topics of a spec with their configs.
pub fn plan(spec: &TopicSpec) -> Vec<PlannedTopic> {
    let common = |retention: String| {
        vec![
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", retention),
            ("message.timestamp.type", "CreateTime".to_string()),
            ("message.timestamp.after.max.ms", "60000".to_string()),
            ("min.insync.replicas", spec.min_insync_replicas.to_string()),
        ]
    };
    let topic = |name: &str, partitions: u32, retention: String| PlannedTopic {
        name: name.to_string(),
        partitions,
        configs: common(retention),
    };
    vec![
        topic(
            &spec.topics.commands,
            spec.partitions,
            COMMANDS_RETENTION_MS.to_string(),
        ),
        topic(&spec.topics.events, spec.partitions, "-1".to_string()),
        topic(
            &spec.topics.replies,
            spec.replies_partitions,
            REPLIES_RETENTION_MS.to_string(),
        ),
    ]
}

/// What `create` did for one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicOutcome {
    pub topic: String,
    pub partitions: u32,
    /// `created` or `exists`.
    pub status: &'static str,
}

/// Creates the topics that are missing (blocking; call it off the async runtime); accepts existing ones whose partition count
/// matches, and fails (creating nothing more) when one does not.
pub fn create(brokers: &str, spec: &TopicSpec) -> anyhow::Result<Vec<TopicOutcome>> {
    anyhow::ensure!(
        (1..=flashsale_proto::MAX_PARTITIONS).contains(&spec.partitions),
        "--partitions must be 1-{}",
        flashsale_proto::MAX_PARTITIONS
    );
    anyhow::ensure!(
        spec.replies_partitions >= 1,
        "--replies-partitions must be at least 1"
    );
    let plan = plan(spec);
    let names: Vec<&str> = plan.iter().map(|t| t.name.as_str()).collect();
    let existing = partition_counts(brokers, &names)?;
    for (
        PlannedTopic {
            name,
            partitions: want,
            ..
        },
        have,
    ) in plan.iter().zip(&existing)
    {
        if let Some(have) = have {
            anyhow::ensure!(
                have == want,
                "topic {name} exists with {have} partitions, not {want}; pass --partitions/--replies-partitions to match, or another --prefix"
            );
        }
    }
    let admin: AdminClient<QuietContext> = base_config(brokers, "flashsale-admin")
        .create_with_context(QuietContext::default())
        .context("cannot create a Kafka admin client")?;
    let mut outcomes = Vec::new();
    let mut to_create = Vec::new();
    for (
        PlannedTopic {
            name,
            partitions,
            configs,
        },
        have,
    ) in plan.iter().zip(&existing)
    {
        if have.is_some() {
            outcomes.push(TopicOutcome {
                topic: name.clone(),
                partitions: *partitions,
                status: "exists",
            });
        } else {
            to_create.push((name, *partitions, configs));
        }
    }
    let new_topics: Vec<NewTopic> = to_create
        .iter()
        .map(|(name, partitions, configs)| {
            let mut t = NewTopic::new(
                name,
                *partitions as i32,
                TopicReplication::Fixed(spec.replication_factor),
            );
            for (k, v) in configs.iter() {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    if !new_topics.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        // Blocking: the admin future is completed by librdkafka's own thread.
        let results = futures::executor::block_on(admin.create_topics(new_topics.iter(), &opts))
            .context("create topics")?;
        for (r, (name, partitions, _)) in results.into_iter().zip(&to_create) {
            match r {
                Ok(_) => outcomes.push(TopicOutcome {
                    topic: (*name).clone(),
                    partitions: *partitions,
                    status: "created",
                }),
                // Another process created it meanwhile: fine if the count matches.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let have = partition_counts(brokers, &[name.as_str()])?[0];
                    anyhow::ensure!(
                        have == Some(*partitions),
                        "topic {name} was created meanwhile with {have:?} partitions, not {partitions}"
                    );
                    outcomes.push(TopicOutcome {
                        topic: (*name).clone(),
                        partitions: *partitions,
                        status: "exists",
                    });
                }
                Err((_, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
        wait_visible(brokers, &plan)?;
    }
    outcomes.sort_by(|a, b| {
        names
            .iter()
            .position(|n| *n == a.topic)
            .cmp(&names.iter().position(|n| *n == b.topic))
    });
    Ok(outcomes)
}

/// Topic creation is asynchronous in the broker: wait (bounded) until metadata shows
/// every topic with all its partitions, each with a leader, so clients started next
/// can read offsets at once (not `NotLeaderForPartition`).
fn wait_visible(brokers: &str, plan: &[PlannedTopic]) -> anyhow::Result<()> {
    let names: Vec<&str> = plan.iter().map(|t| t.name.as_str()).collect();
    for _ in 0..100 {
        let counts = count_partitions(brokers, &names, true)?;
        if counts
            .iter()
            .zip(plan)
            .all(|(c, t)| *c == Some(t.partitions))
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("topics {names:?} were created but do not show in the metadata after 10 s")
}

/// Sets the committed offset of `group` on partition `partition` of `topic`: the next
/// engine to own that partition re-delivers (and re-produces the outputs of)
/// everything from there. Only while no member of the group runs (the broker refuses
/// commits from outside a live group). Blocking.
pub fn rewind_group(
    brokers: &str,
    group: &str,
    topic: &str,
    partition: u32,
    offset: u64,
) -> anyhow::Result<()> {
    use rdkafka::consumer::CommitMode;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer<QuietContext> = base_config(brokers, "flashsale-rewind")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(QuietContext::default())
        .context("cannot create a Kafka client")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))?;
    consumer.commit(&tpl, CommitMode::Sync).with_context(|| {
        format!("cannot commit offset {offset} of {topic} partition {partition} for group {group}")
    })?;
    Ok(())
}
