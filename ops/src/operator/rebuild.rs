//! Rebuilding one partition's state for the tools: where to start (a named snapshot,
//! an offset, or where the server starts, through its own loader), replaying the log
//! up to a stop point, with a progress bar.

use super::source::{CommandLog, Sources};
use super::Refused;
use anyhow::{bail, Context};
use flashsale_core::LogRecord;
use flashsale_engine::actor::{PartitionActor, SnapshotPolicy};
use flashsale_engine::store::{load_valid, SnapshotInfo, SnapshotStore};
use flashsale_engine::{snapshot, State};
use flashsale_proto::*;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a rebuild stops.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stop {
    End,
    /// Inclusive.
    Offset(u64),
    /// Inclusive, log time.
    Time(UnixMs),
}

impl Stop {
    pub(super) fn admits(self, rec: &LogRecord) -> bool {
        match self {
            Stop::End => true,
            Stop::Offset(o) => rec.offset <= o,
            Stop::Time(t) => rec.log_time <= t,
        }
    }
    pub(super) fn admits_snapshot(self, info: &SnapshotInfo) -> bool {
        match self {
            Stop::End => true,
            Stop::Offset(o) => info.offset <= o + 1,
            Stop::Time(t) => info.taken_at <= t,
        }
    }
}

pub(super) struct Rebuilt {
    pub(super) state: State,
    pub(super) started_from: String,
    pub(super) applied: u64,
    pub(super) notes: Vec<String>,
}

pub(super) fn progress(total: u64, quiet: bool, what: String) -> ProgressBar {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    };
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} records, {per_sec}, ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what);
    pb
}

/// Applies records of `partition` from the state's next offset while `stop` admits them.
pub(super) fn replay_into(
    log: &mut dyn CommandLog,
    actor: &mut PartitionActor,
    partition: u32,
    stop: Stop,
    pb: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut applied = 0u64;
    let from = actor.state().next_offset();
    log.scan(partition, from, &mut |rec| {
        if !stop.admits(&rec) {
            return false;
        }
        actor.apply_batch(std::slice::from_ref(&rec));
        applied += 1;
        if applied.is_multiple_of(4096) {
            pb.set_position(applied);
        }
        true
    })?;
    pb.set_position(applied);
    Ok(applied)
}

/// Newest snapshot that decodes, passes the invariants, holds what its name says (the
/// server's own check, `load_valid`), lies before `stop` and covers any damage (at
/// or past `first`, the oldest readable offset); refused ones are named in the notes.
pub(super) fn pick_snapshot(
    store: &dyn SnapshotStore,
    partition: u32,
    stop: Stop,
    (first, log_end): (u64, u64),
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<(SnapshotInfo, State)>> {
    for info in store.list(partition)? {
        if !stop.admits_snapshot(&info) {
            continue;
        }
        if info.offset > log_end {
            // Kafka mode (embedded: the server's verdict refuses such a partition): not
            // this log's, it covers records the log never had (a topic deleted and
            // recreated, or another deployment's snapshot in the same store).
            notes.push(format!(
                "snapshot {} covers up to offset {} but partition {partition}'s log ends at {log_end}: it was taken from another log (a recreated topic or another deployment); ignored",
                info.id, info.offset
            ));
            continue;
        }
        if info.offset < first {
            continue;
        }
        match load_valid(store, &info) {
            Ok(state) => return Ok(Some((info, state))),
            Err(e) => {
                let prefix = format!("snapshot {} refused", info.id);
                if !notes.iter().any(|n| n.starts_with(&prefix)) {
                    notes.push(format!("{prefix} ({e}); falling back to the one before"));
                }
            }
        }
    }
    Ok(None)
}

pub(super) fn rebuild(
    src: &mut Sources,
    partition: u32,
    from_snapshot: Option<&str>,
    from_offset: Option<u64>,
    stop: Stop,
    quiet: bool,
) -> anyhow::Result<Rebuilt> {
    // The server's verdict first: a partition it refuses is refused here, with its words.
    let verdict = src
        .log
        .verdict(partition)
        .map_err(|why| Refused { partition, why })?;
    let (first, end) = src.log.bounds(partition)?;
    if let Stop::Offset(o) = stop {
        if o >= end {
            let last = match end.checked_sub(1) {
                Some(l) => format!("its last offset is {l}"),
                None => "it has no record yet".to_string(),
            };
            bail!("--to-offset {o} is past the end of partition {partition}'s log ({last}); leave --to-offset out to replay to the end");
        }
    }
    let mut notes = verdict
        .as_ref()
        .map(|v| v.notes.clone())
        .unwrap_or_default();
    let (state, started_from) = if let Some(id) = from_snapshot {
        let info = src
            .store
            .list(partition)?
            .into_iter()
            .find(|i| i.id == id)
            .with_context(|| format!("no snapshot {id} for partition {partition}; `flashsale snapshot list --partition {partition}` shows the ids"))?;
        let bytes = src.store.load(&info)?;
        let state =
            snapshot::decode(&bytes).with_context(|| format!("snapshot {id} cannot be trusted"))?;
        (state, format!("snapshot {id}"))
    } else if let Some(off) = from_offset {
        if off < first {
            bail!("offset {off} is no longer retained: the oldest offset of partition {partition} is {first}; start from a snapshot instead");
        }
        let mut s = State::new(partition as u16);
        if off > 0 {
            // An empty state starting at `off`: only sound when nothing before it matters.
            notes.push(format!(
                "starting from an empty state at offset {off}; records before it are ignored"
            ));
            let mut actor = PartitionActor::new(s, SnapshotPolicy::default());
            actor.apply_batch(&[LogRecord {
                offset: off - 1,
                log_time: 0,
                payload: Vec::new(),
            }]);
            s = actor.snapshot_now();
        }
        (s, format!("offset {off}"))
    } else {
        let chosen = match verdict {
            // Where the server starts (the same snapshot, loaded by the same code).
            Some(v) if matches!(stop, Stop::End) => v.snapshot,
            _ => pick_snapshot(
                src.store.as_ref(),
                partition,
                stop,
                (first, end),
                &mut notes,
            )?,
        };
        match chosen {
            Some((info, state)) => (state, format!("snapshot {}", info.id)),
            None => {
                if first > 0 {
                    bail!("no usable snapshot and the log of partition {partition} starts at offset {first}: the state cannot be rebuilt");
                }
                (
                    State::new(partition as u16),
                    "offset 0 (no snapshot)".to_string(),
                )
            }
        }
    };
    if state.next_offset() > end {
        bail!(
            "the start point covers offset {} but partition {partition}'s log ends at {end}",
            state.next_offset()
        );
    }
    let pb = progress(
        end.saturating_sub(state.next_offset()),
        quiet,
        format!("partition {partition}"),
    );
    let mut actor = PartitionActor::new(state, SnapshotPolicy::default());
    let applied = replay_into(src.log.as_mut(), &mut actor, partition, stop, &pb)?;
    pb.finish_and_clear();
    Ok(Rebuilt {
        state: actor.snapshot_now(),
        started_from,
        applied,
        notes,
    })
}
