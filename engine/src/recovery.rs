//! One loader for a partition's durable state in embedded mode: which snapshot to
//! start from, how to open the log, and whether the partition may serve at all. The
//! server's recovery ([`crate::embedded::recover`]) and every operators' tool
//! (`flashsale audit`, `replay`, `snapshot verify`) call [`load_partition`], so they
//! reach the same verdict on the same data directory: a partition the server refuses
//! is one the tools report as damaged, with the same words.
//!
//! The verdict, in order:
//! 1. the newest snapshot that decodes, passes the invariants and holds what its
//!    name says ([`load_newest_valid`]; refused ones are named);
//! 2. the log file must exist: the data directory is created with every partition's
//!    log, so a missing one is a lost file, never silently recreated empty;
//! 3. the log is scanned ([`PartitionLog`]): a torn tail (an unfinished write, never
//!    acknowledged) is left for the server to cut; damage (anywhere, the last record
//!    included) is accepted only when that snapshot covers every offset it makes
//!    unreadable, else the partition is refused;
//! 4. the log must reach the snapshot: a log that ends before the offset its newest
//!    snapshot covers lost records (a truncated or emptied file), and is refused.

use crate::log::{log_path, Damage, LogError, PartitionLog};
use crate::store::{load_newest_valid, Rejected, SnapshotInfo, SnapshotStore};
use flashsale_core::State;
use std::path::Path;

/// Who opens the log: the server (may cut a torn tail afterwards, appends) or a tool
/// (reads only, a running server is fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Server,
    ReadOnly,
}

/// A partition the server may serve: where it starts and what it found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The log, scanned; a torn tail is still in the file
    /// ([`PartitionLog::truncated_bytes`]; the server cuts it with
    /// [`PartitionLog::cut_torn_tail`]).
    pub log: PartitionLog,
    /// The newest valid snapshot (none: start from offset 0).
    pub snapshot: Option<(SnapshotInfo, State)>,
    /// Where the snapshot lives (a file path for the file store).
    pub snapshot_location: Option<String>,
    /// Newer snapshots that were refused, and why.
    pub rejected: Vec<Rejected>,
}

impl Loaded {
    /// Damaged stretches of the log that the snapshot covers (recovered past).
    pub fn damage(&self) -> &[Damage] {
        self.log.damage()
    }

    /// What an operator should know, one sentence each: refused snapshots, damage
    /// recovered past, a torn tail to cut. Empty for a clean partition.
    pub fn notes(&self) -> Vec<String> {
        let p = self.log.partition();
        let mut out: Vec<String> = self
            .rejected
            .iter()
            .map(|r| {
                format!(
                    "snapshot {} refused ({}); falling back to an older one, as the server does",
                    r.info.id, r.error
                )
            })
            .collect();
        if let Some((info, _)) = &self.snapshot {
            for d in self.damage() {
                out.push(format!(
                    "partition {p}'s log {} is damaged at byte {} ({}; offsets {}..{} cannot be read), but valid snapshot {} covers offsets below {}: the server recovers it from that snapshot and the records after the damage, leaving the file as it is and copying the damaged bytes aside (docs/operations.md, \"Storage damage and recovery\")",
                    self.log.path().display(),
                    d.position,
                    d.reason,
                    d.offset,
                    d.resume_offset.saturating_sub(1),
                    info.id,
                    info.offset
                ));
            }
        }
        if self.log.truncated_bytes() > 0 {
            out.push(format!(
                "partition {p}'s log {} ends with a torn tail of {} bytes at offset {} (a write cut short by a crash, never acknowledged): the server copies it to {}.torn-<position> and cuts it",
                self.log.path().display(),
                self.log.truncated_bytes(),
                self.log.next_offset(),
                self.log.path().display(),
            ));
        }
        out
    }
}

const PROCEDURE: &str = "see docs/operations.md, \"Storage damage and recovery\"";

/// The verdict on one partition (module doc). `Err`: the server refuses the
/// partition (it stays down); the message names the file, the damage and what to do.
pub fn load_partition(
    log_dir: &Path,
    partition: u32,
    store: &dyn SnapshotStore,
    access: Access,
) -> anyhow::Result<Loaded> {
    let (found, rejected) = load_newest_valid(store, partition)?;
    let path = log_path(log_dir, partition);
    if let Err(e) = std::fs::symlink_metadata(&path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::bail!(
                "partition {partition}'s log {} is missing: the data directory was created with it, so its records are lost (a deleted or moved file){}; nothing was created in its place and the partition stays down. Put the file back (from a backup), or {PROCEDURE}",
                path.display(),
                match &found {
                    Some((info, _)) => format!(
                        ", and snapshot {} says it held offsets below {}",
                        info.id, info.offset
                    ),
                    None => String::new(),
                }
            );
        }
    }
    let covering = found.as_ref().map(|(info, _)| info);
    let log = open_log(log_dir, partition, covering, access)?;
    if let Some((info, _)) = &found {
        if info.offset > log.next_offset() {
            anyhow::bail!(
                "snapshot {} ({}) covers offset {} but partition {partition}'s log {} ends at {}{}: the log lost records (cut short, emptied or replaced), so this is corruption and nothing was cut; the partition stays down. Restore the log from a backup, or {PROCEDURE}",
                info.id,
                store.location(info),
                info.offset,
                path.display(),
                log.next_offset(),
                if log.truncated_bytes() > 0 {
                    format!(
                        " (then {} bytes of an unfinished record)",
                        log.truncated_bytes()
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    let snapshot_location = covering.map(|i| store.location(i));
    Ok(Loaded {
        log,
        snapshot: found,
        snapshot_location,
        rejected,
    })
}

/// Opens the log. Damage is accepted only when `snapshot` (the newest valid one)
/// covers every offset it made unreadable.
fn open_log(
    log_dir: &Path,
    partition: u32,
    snapshot: Option<&SnapshotInfo>,
    access: Access,
) -> anyhow::Result<PartitionLog> {
    let first = match access {
        Access::Server => PartitionLog::open_uncut(log_dir, partition),
        Access::ReadOnly => PartitionLog::open_read_only(log_dir, partition),
    };
    let (offset, resume_offset, first) = match first {
        Err(
            e @ LogError::Corrupt {
                offset,
                resume_offset,
                ..
            },
        ) => (offset, resume_offset, e),
        other => return Ok(other?),
    };
    let lost = lost_offsets(offset, resume_offset);
    let Some(info) = snapshot else {
        anyhow::bail!("{first}. No valid snapshot covers the damage ({lost}), so the partition cannot be rebuilt past it and stays down");
    };
    let past = match access {
        Access::Server => PartitionLog::open_past_damage(log_dir, partition, info.offset),
        Access::ReadOnly => {
            PartitionLog::open_read_only_past_damage(log_dir, partition, info.offset)
        }
    };
    match past {
        Ok(log) => Ok(log),
        Err(LogError::Corrupt {
            offset: o,
            position: p,
            resume_offset: r,
            reason,
            evidence,
            ..
        }) => anyhow::bail!(
            "partition {partition}'s log {} is corrupt at byte {p} (record offset {o}; {}): {reason}, and {evidence}, so this is not a torn tail; the newest valid snapshot {} covers only offsets below {}: the records between cannot be rebuilt, so the partition stays down; nothing was cut. Diagnose with `flashsale snapshot verify --partition {partition}`; to recover, {PROCEDURE}",
            log_path(log_dir, partition).display(),
            lost_offsets(o, r),
            info.id,
            info.offset
        ),
        Err(e) => Err(e.into()),
    }
}

fn lost_offsets(offset: u64, resume_offset: Option<u64>) -> String {
    match resume_offset {
        Some(r) => format!("offsets {offset}..{} cannot be read", r.saturating_sub(1)),
        None => format!("offsets from {offset} cannot be read"),
    }
}
