//! Where read-model snapshots are stored: files in one directory per log
//! ([`FileImageStore`]) or the `readmodel_snapshots` table of Postgres
//! ([`PgImageStore`]).

use super::{ImageInfo, ImageStore, SnapshotError};
use flashsale_proto::UnixMs;
use flashsale_runtime::pg::{ms_to_time, time_to_ms, to_i64, Pool, Retry};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Snapshots as files `<covered:020>-<taken_at>.rms` in one directory per log; written
/// atomically (temporary file, sync, rename, sync of the directory).
#[derive(Debug, Clone)]
pub struct FileImageStore {
    dir: PathBuf,
}

impl FileImageStore {
    /// The store of the log `topic@topic_id` under `root` (`<data-dir>/readmodel`).
    pub fn new(root: &Path, topic: &str, topic_id: &str) -> Result<Self, SnapshotError> {
        let dir = root.join(format!("{topic}@{topic_id}"));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(FileImageStore { dir })
    }
    fn file(&self, covered: u64, taken_at: UnixMs) -> PathBuf {
        self.dir.join(format!("{covered:020}-{taken_at}.rms"))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ImageStore for FileImageStore {
    fn save(&self, covered: u64, taken_at: UnixMs, bytes: &[u8]) -> Result<(), SnapshotError> {
        if self.list()?.first().is_some_and(|n| n.covered >= covered) {
            return Ok(());
        }
        let path = self.file(covered, taken_at);
        let tmp = path.with_extension("rms.tmp");
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(SnapshotError::Io {
                path: tmp,
                source: e,
            });
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    fn list(&self) -> Result<Vec<ImageInfo>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((c, t)) = name.strip_suffix(".rms").and_then(|s| s.split_once('-')) else {
                continue;
            };
            let (Ok(covered), Ok(taken_at)) = (c.parse::<u64>(), t.parse::<u64>()) else {
                continue;
            };
            let size_bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(ImageInfo {
                covered,
                taken_at,
                size_bytes,
            });
        }
        out.sort_by_key(|i| std::cmp::Reverse((i.covered, i.taken_at)));
        Ok(out)
    }

    fn load(&self, info: &ImageInfo) -> Result<Vec<u8>, SnapshotError> {
        let path = self.file(info.covered, info.taken_at);
        fs::read(&path).map_err(io(&path))
    }

    fn prune(&self, keep: usize) -> Result<(), SnapshotError> {
        for old in self.list()?.into_iter().skip(keep.max(1)) {
            let path = self.file(old.covered, old.taken_at);
            fs::remove_file(&path).map_err(io(&path))?;
        }
        // Leftovers of a write that did not finish (a crash, a full disk).
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".rms.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Snapshots in Postgres (`readmodel_snapshots`), rows of one log only. Each blocking
/// call runs on the runtime the store was made in.
#[derive(Clone)]
pub struct PgImageStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    log_id: String,
}

impl std::fmt::Debug for PgImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgImageStore")
            .field("log_id", &self.log_id)
            .finish()
    }
}

impl PgImageStore {
    /// `log_id`: `TopicIdentity::log_id` of the events topic.
    pub fn new(pool: Pool, runtime: tokio::runtime::Handle, log_id: String) -> Self {
        PgImageStore {
            pool,
            runtime,
            log_id,
        }
    }
}

/// Postgres calls of the store: a few retries, then give up (the next snapshot, or a
/// replay from an older one, costs only time).
const PG_RETRY: Retry = Retry {
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    give_up_after: Some(Duration::from_secs(10)),
};

impl ImageStore for PgImageStore {
    fn save(&self, covered: u64, taken_at: UnixMs, bytes: &[u8]) -> Result<(), SnapshotError> {
        let c = to_i64(covered, "covered records")?;
        let t = ms_to_time(taken_at)?;
        let checksum = i64::from(u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]));
        let (version, size) = (i16::from(bytes[4]), bytes.len() as i64);
        self.runtime
            .block_on(PG_RETRY.run("save read-model snapshot", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("../sql/readmodel_snapshot_save.sql"))
                    .await?;
                client
                    .execute(
                        &stmt,
                        &[&self.log_id, &c, &t, &version, &checksum, &size, &bytes],
                    )
                    .await?;
                Ok(())
            }))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<ImageInfo>, SnapshotError> {
        let rows = self
            .runtime
            .block_on(PG_RETRY.run("list read-model snapshots", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("../sql/readmodel_snapshot_list.sql"))
                    .await?;
                Ok(client.query(&stmt, &[&self.log_id]).await?)
            }))?;
        rows.iter()
            .map(|r| {
                Ok(ImageInfo {
                    covered: r.get::<_, i64>(0).max(0) as u64,
                    taken_at: time_to_ms(r.get(1))?,
                    size_bytes: r.get::<_, i64>(2).max(0) as u64,
                })
            })
            .collect()
    }

    fn load(&self, info: &ImageInfo) -> Result<Vec<u8>, SnapshotError> {
        let c = to_i64(info.covered, "covered records")?;
        let row = self
            .runtime
            .block_on(PG_RETRY.run("load read-model snapshot", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("../sql/readmodel_snapshot_load.sql"))
                    .await?;
                Ok(client.query_opt(&stmt, &[&self.log_id, &c]).await?)
            }))?;
        row.map(|r| r.get::<_, Vec<u8>>(0))
            .ok_or_else(|| SnapshotError::NotFound(info.id()))
    }

    fn prune(&self, keep: usize) -> Result<(), SnapshotError> {
        let k = keep.max(1) as i64;
        self.runtime
            .block_on(PG_RETRY.run("prune read-model snapshots", || async {
                let client = self.pool.get().await?;
                let stmt = client
                    .prepare_cached(include_str!("../sql/readmodel_snapshot_prune.sql"))
                    .await?;
                Ok(client.execute(&stmt, &[&self.log_id, &k]).await?)
            }))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("Postgres table readmodel_snapshots, log {}", self.log_id)
    }
}
