//! Where snapshots live. [`SnapshotStore`] has a file implementation here (embedded
//! mode: `<data-dir>/snapshots/pNNN/<offset>-<log time>.snap`) and a Postgres one in
//! Kafka mode. Writes are atomic (temp file, sync, rename, sync dir).

use flashsale_core::snapshot::{self, SnapshotError};
use flashsale_core::State;
use flashsale_proto::UnixMs;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    /// `p<partition>@<offset>`: what operators pass to `--from-snapshot`.
    pub id: String,
    pub partition: u32,
    /// The first offset NOT covered: replay starts here.
    pub offset: u64,
    /// Log time of the last applied record.
    pub taken_at: UnixMs,
    pub size_bytes: u64,
    pub checksum: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot store i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no snapshot {0}; `flashsale snapshot list` shows the ids")]
    NotFound(String),
    #[error("snapshot store error: {0}")]
    Other(String),
    #[error("snapshot of {bytes} bytes not written: {path} has {available} bytes free and the command log keeps a reserve of {reserve} bytes (--snapshot-reserve-mb); free space or move old files away, the next snapshot tries again")]
    LowSpace {
        path: PathBuf,
        bytes: u64,
        available: u64,
        reserve: u64,
    },
}

/// Blocking API: called from the background snapshot writer and from recovery, never
/// from the apply loop.
pub trait SnapshotStore: Send + Sync + 'static {
    fn save(
        &self,
        partition: u32,
        offset: u64,
        taken_at: UnixMs,
        bytes: &[u8],
    ) -> Result<SnapshotInfo, StoreError>;
    /// Newest first.
    fn list(&self, partition: u32) -> Result<Vec<SnapshotInfo>, StoreError>;
    fn load(&self, info: &SnapshotInfo) -> Result<Vec<u8>, StoreError>;
    /// Keeps the newest `keep` snapshots of the partition.
    fn prune(&self, partition: u32, keep: usize) -> Result<(), StoreError>;
    /// Where the snapshot is kept, for an operator who has to move it away: the file
    /// of the file store; the id elsewhere.
    fn location(&self, info: &SnapshotInfo) -> String {
        info.id.clone()
    }
}

pub fn snapshot_id(partition: u32, offset: u64) -> String {
    format!("p{partition}@{offset}")
}

/// Default free space a snapshot must leave for the command log (64 MiB).
pub const DEFAULT_LOG_RESERVE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct FileSnapshotStore {
    dir: PathBuf,
    /// Free bytes a snapshot write must leave on the file system (the command log's
    /// room: a full disk refuses holds, a skipped snapshot costs only replay time).
    reserve_bytes: u64,
}

impl FileSnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSnapshotStore {
            dir: dir.into(),
            reserve_bytes: DEFAULT_LOG_RESERVE_BYTES,
        }
    }
    /// Sets the free space a snapshot write must leave (0: only room for itself).
    pub fn with_reserve(mut self, reserve_bytes: u64) -> Self {
        self.reserve_bytes = reserve_bytes;
        self
    }
    /// Refuses a write of `bytes` that would leave less than the reserve free.
    fn check_space(&self, dir: &Path, bytes: u64) -> Result<(), StoreError> {
        let st = rustix::fs::statvfs(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        let available = st.f_bavail.saturating_mul(st.f_frsize);
        if available < bytes.saturating_add(self.reserve_bytes) {
            return Err(StoreError::LowSpace {
                path: dir.to_path_buf(),
                bytes,
                available,
                reserve: self.reserve_bytes,
            });
        }
        Ok(())
    }
    fn part_dir(&self, partition: u32) -> PathBuf {
        self.dir.join(format!("p{partition:03}"))
    }
    /// Removes `*.snap.tmp` files (a snapshot write that did not finish: a crash, or
    /// the disk filled up). Returns how many were removed.
    pub fn remove_temp_files(&self, partition: u32) -> Result<usize, StoreError> {
        let dir = self.part_dir(partition);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(StoreError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut n = 0;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.to_string_lossy().ends_with(".snap.tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
                n += 1;
            }
        }
        Ok(n)
    }
    fn file(&self, partition: u32, offset: u64, taken_at: UnixMs) -> PathBuf {
        self.part_dir(partition)
            .join(format!("{offset:020}-{taken_at}.snap"))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SnapshotStore for FileSnapshotStore {
    fn save(
        &self,
        partition: u32,
        offset: u64,
        taken_at: UnixMs,
        bytes: &[u8],
    ) -> Result<SnapshotInfo, StoreError> {
        let dir = self.part_dir(partition);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.check_space(&dir, bytes.len() as u64)?;
        let path = self.file(partition, offset, taken_at);
        let tmp = path.with_extension("snap.tmp");
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // A half-written snapshot (disk full) must not keep its room.
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                path: tmp,
                source: e,
            });
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(SnapshotInfo {
            id: snapshot_id(partition, offset),
            partition,
            offset,
            taken_at,
            size_bytes: bytes.len() as u64,
            checksum: header_checksum(bytes),
        })
    }

    fn list(&self, partition: u32) -> Result<Vec<SnapshotInfo>, StoreError> {
        let dir = self.part_dir(partition);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".snap") else {
                continue;
            };
            let Some((o, t)) = stem.split_once('-') else {
                continue;
            };
            let (Ok(offset), Ok(taken_at)) = (o.parse::<u64>(), t.parse::<u64>()) else {
                continue;
            };
            let path = entry.path();
            let size_bytes = entry.metadata().map_err(io(&path))?.len();
            let mut head = [0u8; 9];
            let checksum = fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .map(|_| header_checksum(&head))
                .unwrap_or(0);
            out.push(SnapshotInfo {
                id: snapshot_id(partition, offset),
                partition,
                offset,
                taken_at,
                size_bytes,
                checksum,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.offset));
        Ok(out)
    }

    fn load(&self, info: &SnapshotInfo) -> Result<Vec<u8>, StoreError> {
        let path = self.file(info.partition, info.offset, info.taken_at);
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(info.id.clone()),
            _ => StoreError::Io { path, source: e },
        })
    }

    fn prune(&self, partition: u32, keep: usize) -> Result<(), StoreError> {
        for old in self.list(partition)?.into_iter().skip(keep) {
            let path = self.file(partition, old.offset, old.taken_at);
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    fn location(&self, info: &SnapshotInfo) -> String {
        self.file(info.partition, info.offset, info.taken_at)
            .display()
            .to_string()
    }
}

fn header_checksum(bytes: &[u8]) -> u32 {
    if bytes.len() >= 9 {
        u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]])
    } else {
        0
    }
}

/// A snapshot refused at recovery, and why.
#[derive(Debug)]
pub struct Rejected {
    pub info: SnapshotInfo,
    pub error: String,
}

/// The newest usable snapshot (if any) and every newer one that was refused.
pub type Loaded = (Option<(SnapshotInfo, State)>, Vec<Rejected>);

/// Loads the newest snapshot that decodes and passes every invariant, falling back to
/// older ones. Returns it (if any) and every newer snapshot that was refused.
pub fn load_newest_valid(store: &dyn SnapshotStore, partition: u32) -> Result<Loaded, StoreError> {
    load_newest_valid_where(store, partition, |_| true)
}

/// [`load_newest_valid`] among the snapshots `admit` accepts (the operators' tools:
/// those before a point in time); the others are neither loaded nor reported.
pub fn load_newest_valid_where(
    store: &dyn SnapshotStore,
    partition: u32,
    admit: impl Fn(&SnapshotInfo) -> bool,
) -> Result<Loaded, StoreError> {
    let mut rejected = Vec::new();
    for info in store.list(partition)? {
        if !admit(&info) {
            continue;
        }
        match load_valid(store, &info) {
            Ok(state) => return Ok((Some((info, state)), rejected)),
            Err(error) => rejected.push(Rejected { info, error }),
        }
    }
    Ok((None, rejected))
}

/// Loads one snapshot: it must decode (checksum, invariants) and hold what its name
/// says (partition, offset). The error says why not.
pub fn load_valid(store: &dyn SnapshotStore, info: &SnapshotInfo) -> Result<State, String> {
    let state = store
        .load(info)
        .map_err(|e| e.to_string())
        .and_then(|bytes| snapshot::decode(&bytes).map_err(|e: SnapshotError| e.to_string()))?;
    if u32::from(state.partition()) != info.partition || state.next_offset() != info.offset {
        return Err(format!(
            "snapshot holds partition {} at offset {}, not what its name says",
            state.partition(),
            state.next_offset()
        ));
    }
    Ok(state)
}

/// Encodes `state`, saves it and prunes to the newest `keep`: the background snapshot
/// writer of both hosts (embedded and Kafka). Never fatal: the log still holds
/// everything, and the next snapshot tries again.
pub fn write_snapshot(
    state: &State,
    store: &dyn SnapshotStore,
    keep: usize,
    metrics: &flashsale_runtime::metrics::Metrics,
) {
    let t = std::time::Instant::now();
    let p = u32::from(state.partition());
    let result = snapshot::encode(state)
        .map_err(WriteError::from)
        .and_then(|bytes| {
            store
                .save(p, state.next_offset(), state.clock(), &bytes)
                .map_err(WriteError::from)
        });
    match result {
        Ok(info) => {
            metrics.snapshot_written(t.elapsed());
            metrics.snapshot_at(p, flashsale_runtime::now_ms());
            tracing::debug!(
                partition = p,
                offset = info.offset,
                bytes = info.size_bytes,
                reservations = state.reservation_count(),
                ended_kept = state.ended_reservations(),
                pruned_total = state.pruned_total(),
                "snapshot written"
            );
            if let Err(e) = store.prune(p, keep.max(1)) {
                tracing::warn!(partition = p, error = %e, "could not prune old snapshots");
            }
        }
        Err(WriteError::Store(e @ StoreError::LowSpace { .. })) => {
            metrics.snapshot_skipped();
            // At most one line a minute per process: a full disk lasts.
            static LAST_WARN_MS: std::sync::atomic::AtomicU64 =
                std::sync::atomic::AtomicU64::new(0);
            let now = flashsale_runtime::now_ms();
            let last = LAST_WARN_MS.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= LOW_SPACE_WARN_EVERY_MS
                && LAST_WARN_MS
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(partition = p, error = %e, "snapshot skipped to keep room for the command log (warned at most once a minute; see flashsale_snapshots_skipped_total)");
            }
        }
        Err(e) => tracing::error!(partition = p, error = %e, "snapshot not written"),
    }
}

/// Least time between two "snapshot skipped" warnings.
const LOW_SPACE_WARN_EVERY_MS: u64 = 60_000;

/// Why the background writer did not write a snapshot.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Encode(#[from] SnapshotError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_runtime::metrics::Metrics;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn state_at(offset: u64) -> State {
        // A state whose next offset is `offset`: apply ticks.
        let mut s = State::new(1);
        let tick = flashsale_proto::CommandRecord {
            request_id: flashsale_proto::RequestId(0),
            reply_to: flashsale_proto::NO_REPLY,
            idempotency_key: None,
            command: flashsale_proto::Command::Tick,
        };
        let mut ev = Vec::new();
        for o in 0..offset {
            s.apply(o, 1000 + o, &tick, &mut ev);
        }
        s
    }

    #[test]
    fn the_writer_keeps_the_newest_n_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSnapshotStore::new(dir.path()).with_reserve(0);
        let metrics = Metrics::new();
        for offset in 1..=6 {
            write_snapshot(&state_at(offset), &store, 3, &metrics);
        }
        let kept: Vec<u64> = store.list(1).unwrap().iter().map(|i| i.offset).collect();
        assert_eq!(kept, vec![6, 5, 4]);
        assert_eq!(files(&dir.path().join("p001")).len(), 3);
    }

    #[test]
    fn a_snapshot_that_would_eat_the_logs_reserve_is_skipped_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        // More free space than any disk has: every write would cut into the reserve.
        let store = FileSnapshotStore::new(dir.path()).with_reserve(u64::MAX / 4);
        let bytes = snapshot::encode(&state_at(3)).unwrap();
        match store.save(1, 3, 1002, &bytes) {
            Err(StoreError::LowSpace { bytes: b, .. }) => assert_eq!(b, bytes.len() as u64),
            other => panic!("expected LowSpace, got {other:?}"),
        }
        assert!(
            files(&dir.path().join("p001")).is_empty(),
            "no snapshot, no .snap.tmp"
        );
        // The background writer counts it (and does not panic or retry in a loop).
        let metrics = Metrics::new();
        write_snapshot(&state_at(3), &store, 3, &metrics);
        write_snapshot(&state_at(4), &store, 3, &metrics);
        let text = metrics.render();
        assert!(
            text.contains("flashsale_snapshots_skipped_total 2"),
            "skipped snapshots are counted: {}",
            text.lines()
                .filter(|l| l.contains("skipped"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(files(&dir.path().join("p001")).is_empty());
        // With the reserve met, the same store writes.
        let store = store.with_reserve(0);
        write_snapshot(&state_at(5), &store, 3, &metrics);
        assert_eq!(store.list(1).unwrap().len(), 1);
    }
}
