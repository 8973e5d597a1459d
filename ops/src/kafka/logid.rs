//! Binding a process to the log it serves: the commands topic's identity (name and
//! Kafka's topic id, [`flashsale_runtime::kafka_id`]), resolved once the broker is up,
//! picks the snapshots the engine may start from; the events topic's identity picks
//! the read-model snapshots a gateway may start from ([`ReadModelPlace`]).

use flashsale_engine::pg::PgSnapshotStore;
use flashsale_engine::store::{FileSnapshotStore, SnapshotStore};
use flashsale_runtime::kafka::ADMIN_TIMEOUT;
use flashsale_runtime::kafka_id::{topic_identity, TopicIdentity};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the engine keeps snapshots, before it knows which log they are for.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// `engine_snapshots`, rows of this log only.
    Postgres(PgSnapshotStore),
    /// A directory; each log gets its own subdirectory `<topic>@<topic id>`.
    Files(PathBuf),
}

impl StoreSpec {
    /// The store of `log`'s snapshots.
    pub fn bind(self, log: &TopicIdentity) -> anyhow::Result<Arc<dyn SnapshotStore>> {
        Ok(match self {
            StoreSpec::Postgres(s) => Arc::new(s.with_log_id(log.log_id())),
            StoreSpec::Files(dir) => {
                let dir = dir.join(format!("{}@{}", log.name, log.id));
                std::fs::create_dir_all(&dir).map_err(|e| {
                    anyhow::anyhow!("cannot create {}: {e}; check --data-dir", dir.display())
                })?;
                Arc::new(FileSnapshotStore::new(dir))
            }
        })
    }
}

/// Where a gateway keeps read-model snapshots, before it knows which log they are for.
pub enum ReadModelPlace {
    /// `readmodel_snapshots`, rows of this log only.
    Postgres(flashsale_runtime::pg::Pool),
    /// A directory (`<data-dir>/readmodel`); each log gets its own subdirectory
    /// `<topic>@<topic id>`.
    Files(PathBuf),
}

impl std::fmt::Debug for ReadModelPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadModelPlace::Postgres(_) => f.write_str("Postgres"),
            ReadModelPlace::Files(d) => write!(f, "Files({})", d.display()),
        }
    }
}

impl ReadModelPlace {
    /// The store of `log`'s (the events topic's) read-model snapshots.
    pub fn bind(
        self,
        log: &TopicIdentity,
    ) -> anyhow::Result<Arc<dyn flashsale_gateway::snapshot::ImageStore>> {
        use flashsale_gateway::snapshot::{FileImageStore, PgImageStore};
        Ok(match self {
            ReadModelPlace::Postgres(pool) => Arc::new(PgImageStore::new(
                pool,
                tokio::runtime::Handle::current(),
                log.log_id(),
            )),
            ReadModelPlace::Files(dir) => {
                Arc::new(FileImageStore::new(&dir, &log.name, &log.id).map_err(|e| {
                    anyhow::anyhow!("{e}; check --data-dir (read-model snapshots go there)")
                })?)
            }
        })
    }
}

/// The identity of `topic`, waiting (with backoff, one line then quiet) for the broker
/// and the topic to be there.
pub async fn wait_for_identity(brokers: &str, topic: &str) -> TopicIdentity {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let id = flashsale_runtime::patience::retry_forever(
        &format!("Kafka at {brokers} (topic {topic})"),
        move || topic_identity(&b, &t, ADMIN_TIMEOUT),
    )
    .await;
    tracing::info!(log = %id.log_id(), "serving log {id}");
    id
}
