//! The Kafka-mode subcommands: `topics create`/`grow`, `engine`, `gateway`, `serve --kafka`.

use super::topics::{self, TopicSpec};
use super::{Extras, GatewayParams, KafkaParams};
use crate::cli::{TopicsAction, TopicsArgs};
use crate::config::{
    EngineConfig, GatewayConfig, KafkaServeConfig, ServeCommandConfig, ServeConfig,
};
use anyhow::Context;
use flashsale_engine::actor::SnapshotPolicy;
use flashsale_engine::kafka::EngineOptions;
use flashsale_proto::Topics;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub async fn topics_command(args: TopicsArgs) -> anyhow::Result<()> {
    match args.action {
        TopicsAction::Create(a) => {
            let spec = TopicSpec {
                topics: Topics::with_prefix(&a.kafka.topic_prefix),
                partitions: a.partitions,
                replies_partitions: a.replies_partitions,
                replication_factor: a.replication_factor,
                min_insync_replicas: a.min_insync_replicas,
            };
            let brokers = a.kafka.kafka.clone();
            let outcomes = tokio::task::spawn_blocking(move || topics::create(&brokers, &spec))
                .await
                .context("topic creation panicked")??;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&outcomes)?);
            } else {
                println!(
                    "{:<40} {:>10} {:>11}  status",
                    "topic", "partitions", "replication"
                );
                for o in &outcomes {
                    println!(
                        "{:<40} {:>10} {:>11}  {}",
                        o.topic, o.partitions, o.replication_factor, o.status
                    );
                }
            }
            Ok(())
        }
        TopicsAction::Grow(a) => {
            let (brokers, names, n) = (
                a.kafka.kafka.clone(),
                Topics::with_prefix(&a.kafka.topic_prefix),
                a.replies_partitions,
            );
            let o = tokio::task::spawn_blocking(move || topics::grow(&brokers, &names, n))
                .await
                .context("growing the replies topic panicked")??;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else if o.status == "grown" {
                println!(
                    "{}: {} -> {} partitions; gateway ids 0-{} can start",
                    o.topic,
                    o.partitions_before,
                    o.partitions,
                    o.partitions - 1
                );
            } else {
                println!(
                    "{}: already {} partitions; gateway ids 0-{} can start",
                    o.topic,
                    o.partitions,
                    o.partitions - 1
                );
            }
            Ok(())
        }
    }
}

/// Snapshots under `<data dir>/snapshots/<topic>@<topic id>` (see [`super::logid`]).
fn file_store(data_dir: &Path) -> anyhow::Result<super::logid::StoreSpec> {
    let dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(super::logid::StoreSpec::Files(dir))
}

/// Read-model snapshots in Postgres, else under `<data dir>/readmodel`.
async fn readmodel_place(
    postgres: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<super::logid::ReadModelPlace> {
    match postgres {
        Some(url) => super::postgres::readmodel_place(url).await,
        None => {
            let dir = data_dir.join("readmodel");
            std::fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create {} (read-model snapshots); check --data-dir",
                    dir.display()
                )
            })?;
            Ok(super::logid::ReadModelPlace::Files(dir))
        }
    }
}

fn snapshot_policy(every_commands: u64, every_secs: u64, retention_secs: u64) -> SnapshotPolicy {
    SnapshotPolicy {
        every_commands: every_commands.max(1),
        every_ms: every_secs.max(1) * 1000,
        retention_ms: Some(retention_secs.saturating_mul(1000)),
    }
}

/// A Kafka-mode gateway without `--admin-token` invents its own: the gateways of one
/// deployment then each accept a different token (an admin call works or fails by
/// which gateway the load balancer picks). Said at start, before anything else fails.
pub fn warn_if_token_generated(admin_token: Option<&str>) {
    if admin_token.is_none_or(str::is_empty) {
        tracing::warn!("no --admin-token (FLASHSALE_ADMIN_TOKEN): this gateway invents its own admin token, so the gateways of this deployment would each accept a different one; set one --admin-token for all gateways");
    }
}

/// Where a Kafka-mode process keeps snapshots and orders, for its first line.
fn state_place(postgres: Option<&str>, data_dir: &Path) -> String {
    match postgres.map(flashsale_runtime::pg::parse_url) {
        Some(Ok((_, t))) => format!("snapshots and orders in {t}"),
        Some(Err(_)) => "snapshots and orders in Postgres".to_string(),
        None => format!(
            "snapshots in {}, orders in memory (no --postgres)",
            data_dir.join("snapshots").display()
        ),
    }
}

pub async fn engine_command(
    args: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    args.validate()?;
    tracing::info!(
        "engine, Kafka mode; brokers {}, topics {}*, {}",
        args.kafka,
        args.topic_prefix,
        state_place(args.postgres.as_deref(), &args.data_dir)
    );
    let store = match &args.postgres {
        Some(url) => super::postgres::snapshot_store(url, args.pg_pool_size).await?,
        None => file_store(&args.data_dir)?,
    };
    let opts = EngineOptions {
        brokers: args.kafka.clone(),
        topics: Topics::with_prefix(&args.topic_prefix),
        group_id: args.engine.engine_group.clone(),
        snapshot: snapshot_policy(
            args.snapshot_every_commands,
            args.snapshot_every_secs,
            args.retention_secs,
        ),
        keep_snapshots: args.keep_snapshots.max(1),
        max_batch: args.engine.max_batch,
        session_timeout_ms: args.engine.session_timeout_ms,
        heartbeat_interval_ms: args.engine.heartbeat_ms(),
        group_protocol_consumer: args.engine.group_protocol_consumer,
        standby_window: args.engine.standby_window as usize,
        linger_ms: args.linger_ms,
        adopt_new_topics: args.adopt_new_topics,
        commands_topic_id: None,
    };
    super::run_engine(opts, store, args.metrics_listen, shutdown).await
}

pub async fn gateway_command(
    args: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    args.validate()?;
    tracing::info!(
        "gateway, Kafka mode; brokers {}, topics {}*, orders {}",
        args.kafka,
        args.topic_prefix,
        match args
            .postgres
            .as_deref()
            .map(flashsale_runtime::pg::parse_url)
        {
            Some(Ok((_, t))) => format!("from {t}"),
            Some(Err(_)) => "from Postgres".to_string(),
            None => "from the events topic, in memory (no --postgres)".to_string(),
        }
    );
    warn_if_token_generated(args.admin_token.as_deref());
    let gw = GatewayParams {
        listen: args.listen,
        admin_token: args.admin_token.clone(),
        gateway_id: args.gateway_id,
        reply_deadline_ms: args.reply_deadline_ms,
        max_in_flight: args.max_in_flight,
        max_in_flight_per_partition: args.max_in_flight_per_partition,
        rate_limit_per_user: args.rate_limit_per_user,
        rate_limit_burst: args.rate_limit_burst,
        demo: false,
        http: args.http.clone(),
    };
    let k = KafkaParams {
        brokers: args.kafka.clone(),
        topics: Topics::with_prefix(&args.topic_prefix),
        linger_ms: args.linger_ms,
        batching: args.batching.limits(),
        adopt_new_topics: args.adopt_new_topics,
    };
    let mut extras = Extras::default();
    if let Some(url) = &args.postgres {
        extras.order_history =
            Some(super::postgres::order_history(url, args.pg_pool_size, &k.topics.events).await?);
    }
    extras.readmodel_snapshots = Some((
        readmodel_place(args.postgres.as_deref(), &args.data_dir).await?,
        args.readmodel.policy(),
    ));
    super::serve(gw, k, extras, "gateway", shutdown).await
}

/// `serve`: embedded without `--kafka`, else engine + gateway (+ projector with
/// `--postgres`) in one process.
pub async fn serve_command(
    cmd: ServeCommandConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    cmd.validate()?;
    let ServeCommandConfig {
        node: args,
        kafka,
        mode_reason,
    } = cmd;
    let reason = if mode_reason.is_empty() {
        if kafka.is_some() {
            "Kafka mode"
        } else {
            "embedded mode"
        }
    } else {
        mode_reason.as_str()
    };
    let Some(kafka) = kafka else {
        tracing::info!(
            "{reason}; command log and snapshots in {}",
            args.data_dir.display()
        );
        return crate::serve::serve(args, shutdown).await;
    };
    tracing::info!(
        "{reason}; brokers {}, topics {}*, {}",
        kafka.kafka,
        kafka.topic_prefix,
        state_place(kafka.postgres.as_deref(), &args.data_dir)
    );
    warn_if_token_generated(args.admin_token.as_deref());
    let (gw, k, extras) = serve_parts(&args, &kafka).await?;
    super::serve(gw, k, extras, "serve", shutdown).await
}

/// The pieces of `serve --kafka` (tests start them in-process with [`node::start`]).
pub async fn serve_parts(
    args: &ServeConfig,
    kafka: &KafkaServeConfig,
) -> anyhow::Result<(GatewayParams, KafkaParams, Extras)> {
    args.validate()?;
    kafka.validate()?;
    let brokers = kafka.kafka.clone();
    let topics = Topics::with_prefix(&kafka.topic_prefix);
    let store = match &kafka.postgres {
        Some(url) => super::postgres::snapshot_store(url, kafka.pg_pool_size).await?,
        None => file_store(&args.data_dir)?,
    };
    let engine = EngineOptions {
        brokers: brokers.clone(),
        topics: topics.clone(),
        group_id: kafka.engine.engine_group.clone(),
        snapshot: snapshot_policy(
            args.snapshot_every_commands,
            args.snapshot_every_secs,
            args.retention_secs,
        ),
        keep_snapshots: args.keep_snapshots.max(1),
        max_batch: kafka.engine.max_batch,
        session_timeout_ms: kafka.engine.session_timeout_ms,
        heartbeat_interval_ms: kafka.engine.heartbeat_ms(),
        group_protocol_consumer: kafka.engine.group_protocol_consumer,
        standby_window: kafka.engine.standby_window as usize,
        // Its records are whole applied batches: lingering would only add latency
        // (`--linger-ms` is the gateway's command producer).
        linger_ms: 0,
        // The engine of `serve --kafka` waits for a restart on a recreated topic (its
        // `/ready` says why); `--adopt-new-topics` here is the gateway's and the
        // projector's. A separate `flashsale engine --adopt-new-topics` starts again
        // by itself.
        adopt_new_topics: false,
        commands_topic_id: None,
    };
    let mut extras = Extras {
        engine: Some((engine, store)),
        create_topics: Some(TopicSpec {
            topics: topics.clone(),
            partitions: args.partitions,
            replies_partitions: kafka.replies_partitions.max(args.gateway_id + 1),
            // The cluster decides: 3/2 from three brokers up, else 1/1.
            replication_factor: None,
            min_insync_replicas: None,
        }),
        ..Extras::default()
    };
    extras.readmodel_snapshots = Some((
        readmodel_place(kafka.postgres.as_deref(), &args.data_dir).await?,
        kafka.readmodel.policy(),
    ));
    if let Some(url) = &kafka.postgres {
        extras.order_history =
            Some(super::postgres::order_history(url, kafka.pg_pool_size, &topics.events).await?);
        // One registry for the node, the projector's counters included.
        let metrics = Arc::new(flashsale_runtime::metrics::Metrics::new());
        let projector = super::postgres::projector(
            url,
            kafka.pg_pool_size,
            &brokers,
            &topics,
            &metrics,
            kafka.adopt_new_topics,
        )
        .await?;
        extras.sidecars.push(("projector", projector));
        extras.metrics = Some(metrics);
    }
    let k = KafkaParams {
        brokers,
        topics,
        linger_ms: kafka.linger_ms,
        batching: kafka.batching.limits(),
        adopt_new_topics: kafka.adopt_new_topics,
    };
    Ok((GatewayParams::from(args), k, extras))
}
