//! The topics of Kafka mode, `flashsale topics create` and `flashsale topics grow`.
//!
//! | topic | partitions | key | retention | why |
//! |---|---|---|---|---|
//! | `<prefix>commands` | P | skuId | 7 days | the log the engine state is rebuilt from: recovery loads the newest snapshot at or below the group's committed offset and replays after it, so retention must exceed the snapshot interval (30 s by default) by a wide margin |
//! | `<prefix>events` | P (same as commands) | skuId | forever | gateways' read models and the order projector are built from it |
//! | `<prefix>replies` | G (one per gateway id) | none | 1 hour | a reply matters for seconds |
//! | `<prefix>reservations`, `<prefix>inventory-updates`, `<prefix>orders` | P | skuId | 7 days | the public sale events (`flashsale events publish`, docs/events.md): other teams' consumers, which catch up within days |
//!
//! Every topic: `cleanup.policy=delete` (never compacted: offsets are the engine's
//! sequence numbers), `message.timestamp.type=CreateTime` (the engine's clock is the
//! record time; `message.timestamp.after.max.ms=60000` refuses records from a producer
//! whose clock runs more than a minute ahead, which would expire holds early).
//!
//! Replication: by default 3 copies with `min.insync.replicas` 2 when the cluster has at
//! least three brokers (with the producers' `acks=all`, an acknowledged command survives
//! the loss of any one broker), and 1/1 on a smaller cluster (the single test broker);
//! `--replication-factor` / `--min-insync-replicas` override it.

use anyhow::Context;
use flashsale_proto::Topics;
use flashsale_runtime::kafka::{base_config, count_partitions, QuietContext, ADMIN_TIMEOUT};
pub use flashsale_runtime::kafka::{check, partition_counts};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
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
    /// Copies of each partition; `None`: [`Replication::for_brokers`].
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas`; `None`: [`Replication::for_brokers`].
    pub min_insync_replicas: Option<u32>,
}

/// Replication factor and `min.insync.replicas` of the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub factor: i32,
    pub min_insync: u32,
}

impl Replication {
    /// The default for a cluster of `brokers` brokers: 3/2 from three brokers up, else 1/1.
    pub fn for_brokers(brokers: usize) -> Self {
        if brokers >= 3 {
            Replication {
                factor: 3,
                min_insync: 2,
            }
        } else {
            Replication {
                factor: 1,
                min_insync: 1,
            }
        }
    }

    /// The spec's explicit values over the cluster's default; refuses what the cluster
    /// cannot do, naming the flag.
    pub fn resolve(spec: &TopicSpec, brokers: usize) -> anyhow::Result<Self> {
        let auto = Self::for_brokers(brokers);
        let factor = spec.replication_factor.unwrap_or(auto.factor);
        let min_insync = spec
            .min_insync_replicas
            .unwrap_or(auto.min_insync.min(factor.max(1) as u32));
        anyhow::ensure!(
            factor >= 1 && factor as usize <= brokers.max(1),
            "--replication-factor {factor} needs at least {factor} brokers; the cluster has {brokers}"
        );
        anyhow::ensure!(
            min_insync >= 1 && min_insync as i32 <= factor,
            "--min-insync-replicas {min_insync} must be 1-{factor} (the replication factor)"
        );
        Ok(Replication { factor, min_insync })
    }
}

/// Retention of the commands topic (7 days).
pub const COMMANDS_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Retention of the replies topic (1 hour).
pub const REPLIES_RETENTION_MS: u64 = 3600 * 1000;
/// Retention of the public event topics (7 days).
pub const PUBLIC_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// One topic as `create` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: Vec<(&'static str, String)>,
}

/// The topics of a spec with their configs.
pub fn plan(spec: &TopicSpec, replication: Replication) -> Vec<PlannedTopic> {
    let common = |retention: String| {
        vec![
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", retention),
            ("message.timestamp.type", "CreateTime".to_string()),
            ("message.timestamp.after.max.ms", "60000".to_string()),
            ("min.insync.replicas", replication.min_insync.to_string()),
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
    .into_iter()
    .chain(crate::publish::Channel::ALL.into_iter().map(|c| {
        topic(
            &c.topic(&public_prefix(&spec.topics)),
            spec.partitions,
            PUBLIC_RETENTION_MS.to_string(),
        )
    }))
    .collect()
}

/// The prefix of the public topics: the events topic's name without `events`.
fn public_prefix(topics: &Topics) -> String {
    topics
        .events
        .strip_suffix("events")
        .map_or_else(|| format!("{}.", topics.events), str::to_string)
}

/// What `create` did for one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicOutcome {
    pub topic: String,
    pub partitions: u32,
    /// Copies of each partition (of a topic that existed: what this run would have used).
    pub replication_factor: i32,
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
    let replication = Replication::resolve(spec, broker_count(brokers)?)?;
    let plan = plan(spec, replication);
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
                replication_factor: replication.factor,
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
                TopicReplication::Fixed(replication.factor),
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
                    replication_factor: replication.factor,
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
                        replication_factor: replication.factor,
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

/// Most partitions `topics grow` gives `replies` (gateway ids 0..N-1): far more
/// gateways than any deployment runs, and a bound on a mistyped number.
pub const MAX_REPLIES_PARTITIONS: u32 = 1024;

/// What `grow` did to `replies`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrowOutcome {
    pub topic: String,
    pub partitions_before: u32,
    pub partitions: u32,
    /// `grown` or `unchanged` (it had that many already).
    pub status: &'static str,
}

/// Adds partitions to `replies` (blocking; call it off the async runtime) so gateway
/// ids up to `replies_partitions - 1` can start, without new topics and with the
/// deployment running. Only `replies` grows: it is keyed by gateway id, not SKU, so
/// no record changes partition; `commands` and `events` are keyed by SKU and their
/// count is fixed for the life of the log. Running engines learn the new count when
/// the first reply for a new gateway id comes (engine/src/kafka/shell/output.rs); gateways already
/// running keep their partition. Shrinking is refused (Kafka cannot).
pub fn grow(
    brokers: &str,
    topics: &Topics,
    replies_partitions: u32,
) -> anyhow::Result<GrowOutcome> {
    anyhow::ensure!(
        (1..=MAX_REPLIES_PARTITIONS).contains(&replies_partitions),
        "--replies-partitions must be 1-{MAX_REPLIES_PARTITIONS}"
    );
    let name = topics.replies.as_str();
    let Some(have) = partition_counts(brokers, &[name])?[0] else {
        anyhow::bail!(
            "topic {name} does not exist; create the topics first: flashsale topics create --replies-partitions {replies_partitions}"
        );
    };
    let outcome = |status| GrowOutcome {
        topic: name.to_string(),
        partitions_before: have,
        partitions: replies_partitions.max(have),
        status,
    };
    if have == replies_partitions {
        return Ok(outcome("unchanged"));
    }
    anyhow::ensure!(
        have < replies_partitions,
        "topic {name} has {have} partitions; Kafka cannot take partitions away (gateway ids 0-{} can start already)",
        have - 1
    );
    let admin: AdminClient<QuietContext> = base_config(brokers, "flashsale-admin")
        .create_with_context(QuietContext::default())
        .context("cannot create a Kafka admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let more = NewPartitions::new(name, replies_partitions as usize);
    // Blocking: the admin future is completed by librdkafka's own thread.
    let results = futures::executor::block_on(admin.create_partitions([&more], &opts))
        .context("add partitions")?;
    for r in results {
        match r {
            Ok(_) => {}
            // Another `grow` got there first: fine if the count is now what we want.
            Err((_, RDKafkaErrorCode::InvalidPartitions)) => {
                let now = partition_counts(brokers, &[name])?[0];
                anyhow::ensure!(
                    now == Some(replies_partitions),
                    "cannot grow topic {name} to {replies_partitions} partitions: it has {now:?}"
                );
            }
            Err((_, code)) => {
                anyhow::bail!("cannot grow topic {name} to {replies_partitions} partitions: {code}")
            }
        }
    }
    wait_visible(
        brokers,
        &[PlannedTopic {
            name: name.to_string(),
            partitions: replies_partitions,
            configs: Vec::new(),
        }],
    )?;
    Ok(outcome("grown"))
}

/// How many brokers the cluster has (from metadata).
fn broker_count(brokers: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = base_config(brokers, "flashsale-admin")
        .create()
        .context("cannot create a Kafka client")?;
    let md = consumer
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .with_context(|| {
            format!("cannot read cluster metadata from {brokers}; is Kafka running?")
        })?;
    Ok(md.brokers().len())
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

#[cfg(test)]
mod replication_tests {
    use super::*;

    fn spec(factor: Option<i32>, min_insync: Option<u32>) -> TopicSpec {
        TopicSpec {
            topics: Topics::with_prefix("t."),
            partitions: 8,
            replies_partitions: 4,
            replication_factor: factor,
            min_insync_replicas: min_insync,
        }
    }

    #[test]
    fn three_brokers_get_three_copies_and_two_in_sync_by_default() {
        let r = Replication::resolve(&spec(None, None), 3).unwrap();
        assert_eq!((r.factor, r.min_insync), (3, 2));
        let planned = plan(&spec(None, None), r);
        assert!(planned.iter().all(|t| t
            .configs
            .contains(&("min.insync.replicas", "2".to_string()))));
    }

    #[test]
    fn the_public_event_topics_are_planned_with_the_others() {
        let planned = plan(&spec(None, None), Replication::for_brokers(1));
        let names: Vec<&str> = planned.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t.commands",
                "t.events",
                "t.replies",
                "t.reservations",
                "t.inventory-updates",
                "t.orders"
            ]
        );
        assert!(planned[3..].iter().all(|t| t.partitions == 8
            && t.configs
                .contains(&("retention.ms", PUBLIC_RETENTION_MS.to_string()))));
    }

    #[test]
    fn one_broker_gets_one_copy_and_flags_override_the_default() {
        let r = Replication::resolve(&spec(None, None), 1).unwrap();
        assert_eq!((r.factor, r.min_insync), (1, 1));
        let r = Replication::resolve(&spec(Some(2), None), 3).unwrap();
        assert_eq!((r.factor, r.min_insync), (2, 2));
        let r = Replication::resolve(&spec(Some(3), Some(1)), 5).unwrap();
        assert_eq!((r.factor, r.min_insync), (3, 1));
    }

    #[test]
    fn impossible_replication_names_the_flag() {
        let e = Replication::resolve(&spec(Some(3), None), 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("--replication-factor 3 needs at least 3 brokers"),
            "{e}"
        );
        let e = Replication::resolve(&spec(Some(1), Some(2)), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("--min-insync-replicas 2 must be 1-1"),
            "{e}"
        );
    }
}
