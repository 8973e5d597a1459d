//! The Postgres parts Kafka mode plugs in (`flashsale_runtime::pg`): the snapshot store of
//! the engine, the order reads of the gateway, and the projector of `serve`.

use super::Sidecar;
use crate::projector::{self, ProjectorConfig};
use flashsale_engine::pg::PgSnapshotStore;
use flashsale_gateway::pg_orders::PgOrders;
use flashsale_proto::Topics;
use flashsale_runtime::pg::{self, Retry};
use std::sync::Arc;

/// A pool with the schema migrated. Waits for a Postgres that does not answer yet
/// (saying so once); fails at once when a retry cannot help (bad URL, authentication,
/// missing database).
async fn pool(url: &str, pool_size: usize) -> anyhow::Result<pg::Pool> {
    let pool = pg::connect_checked(url, pool_size, pg::Wait::Forever).await?;
    Retry::FOREVER
        .run("migrate", || pg::migrate(&pool))
        .await
        .map_err(|e| anyhow::anyhow!("Postgres migration failed: {e}"))?;
    Ok(pool)
}

/// Snapshots in Postgres; its blocking calls run on this runtime. Bound to a log by
/// [`super::logid::StoreSpec::bind`].
///
/// An engine does not need Postgres to recover (the log and its standby copies are
/// enough): if Postgres does not answer within a few seconds, the store is made
/// without it, its schema is migrated in the background once Postgres is back, and
/// snapshots are written from then on. Errors no retry can fix still fail at once.
pub async fn snapshot_store(
    url: &str,
    pool_size: usize,
) -> anyhow::Result<super::logid::StoreSpec> {
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        pg::connect_checked(url, pool_size, pg::Wait::Forever),
    )
    .await;
    let pool = match waited {
        Ok(pool) => {
            let pool = pool?;
            Retry::FOREVER
                .run("migrate", || pg::migrate(&pool))
                .await
                .map_err(|e| anyhow::anyhow!("Postgres migration failed: {e}"))?;
            pool
        }
        Err(_) => {
            tracing::warn!("Postgres does not answer: the engine recovers from the log and its standby copies, and writes snapshots to Postgres once it is back");
            let pool = pg::connect(url, pool_size)?;
            let background = pool.clone();
            tokio::spawn(async move {
                match Retry::FOREVER
                    .run("migrate", || pg::migrate(&background))
                    .await
                {
                    Ok(_) => tracing::info!("Postgres is back: snapshots are written there again"),
                    Err(e) => {
                        tracing::error!(error = %e, "Postgres migration failed; snapshots are not written")
                    }
                }
            });
            pool
        }
    };
    Ok(super::logid::StoreSpec::Postgres(PgSnapshotStore::new(
        pool,
    )))
}

/// Read-model snapshots in `readmodel_snapshots` (bound to the events topic's identity
/// by [`super::logid::ReadModelPlace::bind`]). A pool of its own, 2 connections: one
/// write at a time, and the load at start.
pub async fn readmodel_place(url: &str) -> anyhow::Result<super::logid::ReadModelPlace> {
    Ok(super::logid::ReadModelPlace::Postgres(pool(url, 2).await?))
}

/// The orders of this deployment's earlier logs (`GET /api/v1/orders/…` behind the
/// read model), from the projected tables: rows of the deployment whose events topic
/// is `events_topic` only.
pub async fn order_history(
    url: &str,
    pool_size: usize,
    events_topic: &str,
) -> anyhow::Result<PgOrders> {
    Ok(PgOrders::new(pool(url, pool_size).await?, events_topic))
}

/// The order projector as a background task (stopped by aborting it; its progress is
/// transactional, so stopping anywhere loses nothing).
pub async fn projector(
    url: &str,
    pool_size: usize,
    brokers: &str,
    topics: &Topics,
    metrics: &Arc<flashsale_runtime::metrics::Metrics>,
    adopt_new_topics: bool,
) -> anyhow::Result<Sidecar> {
    let pool = pool(url, pool_size).await?;
    let mut config = ProjectorConfig::new(brokers.to_string(), topics.events.clone());
    config.metrics = Some(metrics.clone());
    config.commands_topic = Some(topics.commands.clone());
    config.adopt_new_topics = adopt_new_topics;
    Ok(Box::pin(projector::run_projector(
        config,
        pool,
        futures::future::pending(),
    )))
}
