//! [`PgSnapshotStore`]: engine snapshots in `engine_snapshots` (a `bytea` per
//! snapshot, with its format version and checksum in columns of their own).

use crate::store::{snapshot_id, SnapshotInfo, SnapshotStore, StoreError};
use flashsale_core::snapshot::MAGIC;
use flashsale_proto::UnixMs;
use flashsale_runtime::pg::{ms_to_time, time_to_ms, to_i64, PgError, Pool, Retry};

/// The engine's snapshot store in Kafka mode.
///
/// [`SnapshotStore`] is blocking (it is called from `spawn_blocking` by the snapshot
/// writer and by recovery): each call runs the async version on the runtime this store
/// was made in. Never call the blocking methods from an async task; use the `*_async`
/// ones there.
///
/// Every operation retries transient errors with backoff ([`Retry::BACKGROUND`] by
/// default, see [`PgSnapshotStore::with_retry`]), so a snapshot taken while Postgres is
/// away is written when it is back; the engine keeps applying commands meanwhile.
///
/// Every snapshot belongs to one log ([`PgSnapshotStore::with_log_id`]: the commands
/// topic's name and Kafka topic id): `list`, `load` and `prune` see only that log's
/// rows, so an engine never starts from a snapshot of another deployment sharing the
/// database, or of a topic since deleted and created again. Snapshots of other logs
/// found for a partition are named once in a warning (see [`PgSnapshotStore::other_logs_async`]).
///
/// On load, the format version and checksum columns must match the snapshot's own
/// header; `flashsale_engine::snapshot::decode` then checks the body's CRC-32, the
/// decoding and every invariant. A snapshot failing any of these is refused by
/// `flashsale_engine::store::load_newest_valid`, which falls back to an older one.
#[derive(Clone)]
pub struct PgSnapshotStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    retry: Retry,
    log_id: String,
    /// Partitions whose snapshots of other logs were already reported.
    warned: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
}

impl std::fmt::Debug for PgSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshotStore")
            .field("retry", &self.retry)
            .field("log_id", &self.log_id)
            .finish()
    }
}

impl PgSnapshotStore {
    /// A store over `pool`, running its blocking calls on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime; use [`PgSnapshotStore::with_runtime`] there.
    pub fn new(pool: Pool) -> Self {
        Self::with_runtime(pool, tokio::runtime::Handle::current())
    }

    pub fn with_runtime(pool: Pool, runtime: tokio::runtime::Handle) -> Self {
        PgSnapshotStore {
            pool,
            runtime,
            retry: Retry::BACKGROUND,
            log_id: String::new(),
            warned: Default::default(),
        }
    }

    /// The log this store's snapshots belong to:
    /// [`TopicIdentity::log_id`](flashsale_runtime::kafka_id::TopicIdentity::log_id) of
    /// the commands topic. Without it, the store uses the rows of log `''` (written
    /// before migration 0002, or by tests without Kafka).
    pub fn with_log_id(mut self, log_id: impl Into<String>) -> Self {
        self.log_id = log_id.into();
        self
    }

    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Snapshots of `partition` stored for other logs: (log id, how many, newest
    /// offset). Never loaded; `flashsale audit` and the engine name them.
    pub async fn other_logs_async(
        &self,
        partition: u32,
    ) -> Result<Vec<(String, u64, u64)>, PgError> {
        let p = partition as i32;
        let rows = self
            .retry
            .run("list snapshots of other logs", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("sql/snapshot_other_logs.sql"))
                    .await?;
                Ok(client.query(&stmt, &[&p, &self.log_id]).await?)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1).max(0) as u64,
                    r.get::<_, i64>(2).max(0) as u64,
                )
            })
            .collect())
    }

    /// Says once per partition that snapshots of other logs exist and are refused.
    async fn warn_other_logs(&self, partition: u32) {
        {
            let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            if !w.insert(partition) {
                return;
            }
        }
        match self.other_logs_async(partition).await {
            Ok(others) if !others.is_empty() => {
                let named: Vec<String> = others
                    .iter()
                    .map(|(id, n, max)| {
                        let id = if id.is_empty() {
                            "(unknown: written before migration 0002)"
                        } else {
                            id
                        };
                        format!("{n} of log {id} up to offset {max}")
                    })
                    .collect();
                tracing::warn!(
                    partition,
                    log = %self.log_id,
                    others = %named.join("; "),
                    "refusing snapshots of another log (another deployment sharing this database, or a topic since deleted and recreated); recovering from this log's own snapshots or from its start"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(partition, error = %e, "could not list snapshots of other logs")
            }
        }
    }

    /// How long operations retry while Postgres is away.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn save_async(
        &self,
        partition: u32,
        offset: u64,
        taken_at: UnixMs,
        bytes: &[u8],
    ) -> Result<SnapshotInfo, PgError> {
        let (version, checksum) = header(bytes).ok_or_else(|| {
            PgError::Data("refusing to store bytes that are not a flashsale snapshot".into())
        })?;
        let p = partition as i32;
        let o = to_i64(offset, "snapshot offset")?;
        let t = ms_to_time(taken_at)?;
        let (v, c, size) = (i16::from(version), i64::from(checksum), bytes.len() as i64);
        self.retry
            .run("save snapshot", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("sql/snapshot_save.sql"))
                    .await?;
                client
                    .execute(&stmt, &[&p, &o, &t, &v, &c, &size, &bytes, &self.log_id])
                    .await?;
                Ok(())
            })
            .await?;
        Ok(SnapshotInfo {
            id: snapshot_id(partition, offset),
            partition,
            offset,
            taken_at,
            size_bytes: bytes.len() as u64,
            checksum,
        })
    }

    /// Newest first.
    pub async fn list_async(&self, partition: u32) -> Result<Vec<SnapshotInfo>, PgError> {
        self.warn_other_logs(partition).await;
        let p = partition as i32;
        let rows = self
            .retry
            .run("list snapshots", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("sql/snapshot_list.sql"))
                    .await?;
                Ok(client.query(&stmt, &[&p, &self.log_id]).await?)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let offset = u64::try_from(row.get::<_, i64>(0))
                    .map_err(|_| PgError::Data("negative snapshot offset".into()))?;
                Ok(SnapshotInfo {
                    id: snapshot_id(partition, offset),
                    partition,
                    offset,
                    taken_at: time_to_ms(row.get(1))?,
                    size_bytes: row.get::<_, i64>(2).max(0) as u64,
                    checksum: row.get::<_, i64>(3) as u32,
                })
            })
            .collect()
    }

    /// The snapshot's bytes, after checking that its header matches the version and
    /// checksum recorded beside it.
    pub async fn load_async(&self, info: &SnapshotInfo) -> Result<Vec<u8>, StoreError> {
        let p = info.partition as i32;
        let o = to_i64(info.offset, "snapshot offset").map_err(other)?;
        let row = self
            .retry
            .run("load snapshot", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("sql/snapshot_load.sql"))
                    .await?;
                Ok(client.query_opt(&stmt, &[&p, &o, &self.log_id]).await?)
            })
            .await
            .map_err(other)?
            .ok_or_else(|| StoreError::NotFound(info.id.clone()))?;
        let (version, checksum, bytes): (i16, i64, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        match header(&bytes) {
            Some((v, c)) if i16::from(v) == version && i64::from(c) == checksum => Ok(bytes),
            Some((v, c)) => Err(StoreError::Other(format!(
                "snapshot {}: header says version {v} checksum {c:08x}, its row says version {version} checksum {checksum:08x}",
                info.id
            ))),
            None => Err(StoreError::Other(format!("snapshot {}: not a flashsale snapshot (bad header)", info.id))),
        }
    }

    /// Keeps the newest `keep` snapshots of the partition.
    pub async fn prune_async(&self, partition: u32, keep: usize) -> Result<u64, PgError> {
        let p = partition as i32;
        let k = keep.max(1) as i64;
        self.retry
            .run("prune snapshots", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("sql/snapshot_prune.sql"))
                    .await?;
                Ok(client.execute(&stmt, &[&p, &k, &self.log_id]).await?)
            })
            .await
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }
}

/// (format version, checksum) from a snapshot's header, if it has one.
fn header(bytes: &[u8]) -> Option<(u8, u32)> {
    if bytes.len() < 9 || &bytes[..4] != MAGIC {
        return None;
    }
    // An unknown format version is stored as it is and refused on load by
    // `snapshot::decode`, with a clear message.
    Some((
        bytes[4],
        u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
    ))
}

fn other(e: PgError) -> StoreError {
    StoreError::Other(e.to_string())
}

impl SnapshotStore for PgSnapshotStore {
    fn save(
        &self,
        partition: u32,
        offset: u64,
        taken_at: UnixMs,
        bytes: &[u8],
    ) -> Result<SnapshotInfo, StoreError> {
        self.block(self.save_async(partition, offset, taken_at, bytes))
            .map_err(other)
    }
    fn list(&self, partition: u32) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.block(self.list_async(partition)).map_err(other)
    }
    fn load(&self, info: &SnapshotInfo) -> Result<Vec<u8>, StoreError> {
        self.block(self.load_async(info))
    }
    fn prune(&self, partition: u32, keep: usize) -> Result<(), StoreError> {
        self.block(self.prune_async(partition, keep))
            .map(|_| ())
            .map_err(other)
    }
}
