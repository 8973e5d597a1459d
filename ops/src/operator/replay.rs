//! `flashsale replay`: one partition's state at an offset or a time (from a snapshot
//! or an offset), its invariants, and with `--verify` the snapshot path against a full
//! replay, to the first divergence.

use super::rebuild::{pick_snapshot, progress, rebuild, replay_into, Stop};
use super::source::{SourceArgs, Sources};
use super::{
    plural, print_json, print_skus, sku_rows, state_summary, ExitCode, ProblemsFound, Refused,
    EXIT_OK,
};
use anyhow::bail;
use clap::Args;
use flashsale_engine::actor::{PartitionActor, SnapshotPolicy};
use flashsale_engine::{check_state, State};
use serde_json::{json, Value};

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  # state now: newest snapshot + the log after it
  flashsale replay --partition 3
  flashsale replay --partition 3 --to-time 2025-01-15T10:00:03Z
  flashsale replay --partition 3 --to-offset 120000 --json
  # snapshot path vs full replay, first divergence
  flashsale replay --partition 3 --verify
  flashsale replay --partition 0 --kafka 127.0.0.1:19092 \\
      --postgres postgres://postgres@127.0.0.1:15432/flashsale")]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The partition to rebuild.
    #[arg(long)]
    pub partition: u32,
    /// Start from this snapshot (`flashsale snapshot list` shows ids, e.g. p3@120000).
    #[arg(long, conflicts_with = "from_offset")]
    pub from_snapshot: Option<String>,
    /// Start from an empty state at this offset (normally the oldest still kept).
    #[arg(long)]
    pub from_offset: Option<u64>,
    /// Stop after applying the record at this offset.
    #[arg(long, conflicts_with = "to_time")]
    pub to_offset: Option<u64>,
    /// Stop after the last record with log time at or before this RFC 3339 time.
    #[arg(long)]
    pub to_time: Option<String>,
    /// Rebuild the point twice (from the snapshot and from the oldest offset) and
    /// report the first divergence.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

pub async fn replay_command(args: ReplayArgs) -> anyhow::Result<()> {
    Ok(replay_inner(args).await??)
}

async fn replay_inner(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let stop = match (&args.to_offset, &args.to_time) {
        (Some(o), _) => Stop::Offset(*o),
        (None, Some(t)) => Stop::Time(
            flashsale_gateway::time::parse_time(t).map_err(|e| anyhow::anyhow!("--to-time {e}"))?,
        ),
        (None, None) => Stop::End,
    };
    let mut src = args.source.open().await?;
    tokio::task::spawn_blocking(move || replay_blocking(&args, &mut src, stop)).await?
}

fn replay_blocking(args: &ReplayArgs, src: &mut Sources, stop: Stop) -> anyhow::Result<ExitCode> {
    let p = args.partition;
    if p >= src.log.partitions() {
        bail!(
            "unknown partition {p}: {} has partitions 0-{}",
            src.describe,
            src.log.partitions().saturating_sub(1)
        );
    }
    let rebuilt = match rebuild(
        src,
        p,
        args.from_snapshot.as_deref(),
        args.from_offset,
        stop,
        args.quiet,
    ) {
        Ok(r) => r,
        Err(e) => match e.downcast::<Refused>() {
            Ok(refused) => {
                if args.json {
                    print_json(
                        &json!({"partition": p, "source": src.describe, "refused": refused.why}),
                    );
                }
                return Ok(Err(ProblemsFound(refused.to_string())));
            }
            Err(e) => return Err(e),
        },
    };
    for n in &rebuilt.notes {
        eprintln!("note: {n}");
    }
    let violations: Vec<String> = check_state(&rebuilt.state)
        .iter()
        .map(|v| v.to_string())
        .collect();
    let verify = if args.verify {
        Some(verify_point(src, p, stop, args.quiet)?)
    } else {
        None
    };
    let mut out = state_summary(p, &rebuilt.state);
    out["source"] = json!(src.describe);
    out["startedFrom"] = json!(rebuilt.started_from);
    out["recordsApplied"] = json!(rebuilt.applied);
    out["notes"] = json!(rebuilt.notes);
    out["violations"] = json!(violations);
    if let Some(v) = &verify {
        out["verify"] = v.clone();
    }
    if args.json {
        print_json(&out);
    } else {
        match (out["lastOffset"].as_u64(), &args.to_time) {
            (Some(last), _) => println!(
                "partition {p} from {} + {}: reached offset {last}, log time {}",
                rebuilt.started_from,
                plural(rebuilt.applied, "record"),
                out["logTime"].as_str().unwrap_or("-")
            ),
            (None, Some(t)) => println!(
                "partition {p}: no record at or before {t} (the state before the first record: empty)"
            ),
            (None, None) => println!("partition {p}: the log has no record yet (empty state)"),
        }
        print_skus(out["products"].as_array().map(Vec::as_slice).unwrap_or(&[]));
        for v in &violations {
            println!("VIOLATION: {v}");
        }
        if let Some(v) = &verify {
            println!("verify: {}", v["result"].as_str().unwrap_or(""));
        }
    }
    let diverged = verify
        .as_ref()
        .is_some_and(|v| v["identical"] == json!(false));
    Ok(if violations.is_empty() && !diverged {
        EXIT_OK()
    } else {
        Err(ProblemsFound(format!(
            "partition {p}: {} violation(s){}",
            violations.len(),
            if diverged { ", divergence" } else { "" }
        )))
    })
}

/// Rebuilds the point from the newest usable snapshot and from the oldest offset,
/// in lockstep after the snapshot, and reports the first divergence.
fn verify_point(src: &mut Sources, p: u32, stop: Stop, quiet: bool) -> anyhow::Result<Value> {
    let (first, end) = src.log.bounds(p)?;
    if first > 0 {
        bail!("--verify needs the log from offset 0, but partition {p} starts at {first} (older records are no longer retained)");
    }
    let mut notes = Vec::new();
    let Some((info, snap_state)) =
        pick_snapshot(src.store.as_ref(), p, stop, (first, end), &mut notes)?
    else {
        return Ok(
            json!({"identical": true, "result": "no snapshot before this point: there is only one way to rebuild it", "notes": notes}),
        );
    };
    // Full replay up to the snapshot's offset, then compare.
    let pb = progress(info.offset, quiet, format!("verify partition {p}"));
    let mut full = PartitionActor::new(State::new(p as u16), SnapshotPolicy::default());
    replay_into(
        src.log.as_mut(),
        &mut full,
        p,
        Stop::Offset(info.offset.saturating_sub(1)),
        &pb,
    )?;
    pb.finish_and_clear();
    if info.offset > 0 && *full.state() != snap_state {
        let a = sku_rows(&snap_state);
        let b = sku_rows(full.state());
        return Ok(
            json!({"identical": false, "result": format!("snapshot {} differs from a full replay to offset {}", info.id, info.offset),
                          "snapshot": a, "fullReplay": b}),
        );
    }
    // Then both apply the same records; compare replies and events record by record.
    let mut from_snap = PartitionActor::new(snap_state, SnapshotPolicy::default());
    let mut first_divergence: Option<Value> = None;
    src.log.scan(p, info.offset, &mut |rec| {
        if !stop.admits(&rec) {
            return false;
        }
        let a = from_snap.apply_batch(std::slice::from_ref(&rec));
        let b = full.apply_batch(std::slice::from_ref(&rec));
        let same = a.replies.iter().map(|r| &r.1.reply).eq(b.replies.iter().map(|r| &r.1.reply)) && a.events.len() == b.events.len();
        if !same {
            first_divergence = Some(json!({"offset": rec.offset, "fromSnapshot": format!("{:?}", a.replies), "fullReplay": format!("{:?}", b.replies)}));
            return false;
        }
        true
    })?;
    if let Some(d) = first_divergence {
        return Ok(
            json!({"identical": false, "result": format!("first divergence at offset {}", d["offset"]), "divergence": d}),
        );
    }
    if from_snap.state() != full.state() {
        return Ok(json!({"identical": false, "result": "final states differ"}));
    }
    Ok(
        json!({"identical": true, "result": format!("identical: snapshot {} + replay equals a full replay from offset 0", info.id), "notes": notes}),
    )
}
