//! Operators' tools: `flashsale replay`, `flashsale audit`, `flashsale snapshot`.
//!
//! They answer, without reading code: what was the stock of SKU X at offset N or at
//! time T; is anything oversold or double-ordered; can this snapshot be trusted. They
//! read the embedded data directory or Kafka + Postgres (read only), rebuild state
//! with the engine's own `apply`, check it with the engine's own invariants, print a
//! table (or `--json`), and exit non-zero on any problem.

pub mod source;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use flashsale_core::LogRecord;
use flashsale_engine::actor::{PartitionActor, SnapshotPolicy};
use flashsale_engine::store::{load_valid, SnapshotInfo, SnapshotStore};
use flashsale_engine::{check_state, snapshot, State};
use flashsale_gateway::time::rfc3339;
use flashsale_proto::*;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use source::{CommandLog, SourceArgs, Sources};
use std::collections::BTreeMap;

/// Returned when a tool ran fine but found problems (violations, a divergence, a
/// failed snapshot); `flashsale` exits with status 1 for it and 2 for other errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProblemsFound(pub String);

/// The server refuses the partition: its verdict, from the loader it shares with the
/// tools (`flashsale_engine::recovery`).
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} is refused by the server (it stays down): {why}")]
pub struct Refused {
    pub partition: u32,
    pub why: String,
}

type ExitCode = Result<(), ProblemsFound>;
#[allow(non_snake_case)]
fn EXIT_OK() -> ExitCode {
    Ok(())
}

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

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  flashsale audit --data-dir ./data
  flashsale audit --kafka 127.0.0.1:19092 \\
      --postgres postgres://postgres@127.0.0.1:15432/flashsale --json
Every partition is reported; one the server would refuse (damaged storage: the same verdict, from the same code) is listed with the damage.
Exit status: 0 when every partition is served and every invariant holds, 1 when any partition is damaged or any invariant broken (each is listed), 2 when the audit could not run.")]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshots per partition: id, offset, age, size, checksum.
    #[command(
        after_help = "Examples:\n  flashsale snapshot list\n  flashsale snapshot list --partition 3 --json"
    )]
    List(SnapshotListArgs),
    /// One snapshot decoded: header and per-SKU stock.
    #[command(after_help = "Examples:\n  flashsale snapshot show p3@120000")]
    Show(SnapshotShowArgs),
    /// Decode every snapshot (or one), check its checksum and invariants, and check the
    /// log beside them as the server does.
    #[command(
        after_help = "Examples:\n  flashsale snapshot verify\n  flashsale snapshot verify --partition 3\nEach snapshot is listed with its file; then, per partition, where the server starts it or why it refuses it.\nExit status 1 when any snapshot fails or the server would refuse a partition."
    )]
    Verify(SnapshotListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotListArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Snapshot id, e.g. p3@120000.
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

// ------------------------------------------------------------------ rebuilding

/// Where a rebuild stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    End,
    /// Inclusive.
    Offset(u64),
    /// Inclusive, log time.
    Time(UnixMs),
}

impl Stop {
    fn admits(self, rec: &LogRecord) -> bool {
        match self {
            Stop::End => true,
            Stop::Offset(o) => rec.offset <= o,
            Stop::Time(t) => rec.log_time <= t,
        }
    }
    fn admits_snapshot(self, info: &SnapshotInfo) -> bool {
        match self {
            Stop::End => true,
            Stop::Offset(o) => info.offset <= o + 1,
            Stop::Time(t) => info.taken_at <= t,
        }
    }
}

struct Rebuilt {
    state: State,
    started_from: String,
    applied: u64,
    notes: Vec<String>,
}

fn progress(total: u64, quiet: bool, what: String) -> ProgressBar {
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
fn replay_into(
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
fn pick_snapshot(
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

fn rebuild(
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

// ------------------------------------------------------------------ output

/// "1 product", "2 products", "0 products".
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn sku_rows(state: &State) -> Vec<Value> {
    let mut live: BTreeMap<&SkuId, u64> = BTreeMap::new();
    for r in state.reservations() {
        if r.status() == ReservationStatus::Reserved {
            *live.entry(r.sku()).or_default() += 1;
        }
    }
    let mut rows: Vec<Value> = state
        .products()
        .map(|(sku, p)| {
            json!({"sku": sku.as_str(), "sale": p.sale_id().to_string(), "total": p.total(), "available": p.available(),
                   "held": p.held(), "sold": p.sold(), "liveReservations": live.get(sku).copied().unwrap_or(0),
                   "paused": p.is_paused(), "endsAt": rfc3339(p.ends_at()), "maxHoldSeconds": p.max_hold_ms() / 1000})
        })
        .collect();
    rows.sort_by(|a, b| a["sku"].as_str().cmp(&b["sku"].as_str()));
    rows
}

fn state_summary(partition: u32, state: &State) -> Value {
    json!({
        "partition": partition,
        "nextOffset": state.next_offset(),
        "lastOffset": state.next_offset().checked_sub(1),
        "logTime": if state.clock() > 0 { Value::String(rfc3339(state.clock())) } else { Value::Null },
        "products": sku_rows(state),
    })
}

fn print_skus(rows: &[Value]) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "sku",
        "total",
        "available",
        "held",
        "sold",
        "live reservations",
        "paused",
        "ends at",
    ]);
    for r in rows {
        t.add_row(vec![
            r["sku"].as_str().unwrap_or("").to_string(),
            r["total"].to_string(),
            r["available"].to_string(),
            r["held"].to_string(),
            r["sold"].to_string(),
            r["liveReservations"].to_string(),
            r["paused"].to_string(),
            r["endsAt"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{t}");
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

// ------------------------------------------------------------------ replay

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

// ------------------------------------------------------------------ audit

pub async fn audit_command(args: AuditArgs) -> anyhow::Result<()> {
    Ok(audit_inner(args).await??)
}

async fn audit_inner(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut src = args.source.open().await?;
    let logs = src.logs.clone();
    let quiet = args.quiet;
    let (mut report, states) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut partitions = Vec::new();
        let mut violations = Vec::new();
        let mut damaged = Vec::new();
        let mut states = Vec::new();
        // Every partition, whatever happens to the others: one the server refuses (or
        // that cannot be rebuilt) is reported and the audit goes on.
        for p in 0..src.log.partitions() {
            let r = match rebuild(&mut src, p, None, None, Stop::End, quiet) {
                Ok(r) => r,
                Err(e) => {
                    let why = match e.downcast_ref::<Refused>() {
                        Some(r) => r.why.clone(),
                        None => format!("cannot be rebuilt: {e:#}"),
                    };
                    partitions.push(json!({"partition": p, "refused": why}));
                    damaged.push(json!({"partition": p, "damage": why}));
                    continue;
                }
            };
            for v in check_state(&r.state) {
                violations.push(json!({"partition": p, "violation": v.to_string()}));
            }
            let s = &r.state;
            partitions.push(json!({"partition": p, "startedFrom": r.started_from, "recordsReplayed": r.applied,
                "nextOffset": s.next_offset(), "products": s.products().count(), "reservations": s.reservations().count(),
                "liveReservations": s.live_reservations(), "notes": r.notes}));
            states.push(r.state);
        }
        Ok((json!({"source": src.describe, "partitions": partitions, "violations": violations, "damaged": damaged}), (states, src.pool)))
    })
    .await??;
    let (states, pool) = states;
    if let Some(pool) = pool {
        let extra = audit_orders(&pool, &states, logs.as_ref()).await?;
        report["ordersChecked"] = json!(extra.0);
        if let Some(v) = report["violations"].as_array_mut() {
            v.extend(extra.1);
        }
        if let Some(logs) = &logs {
            let others = other_logs(&pool, logs).await?;
            report["log"] = json!({"commands": logs.commands, "events": logs.events});
            report["otherLogs"] = json!(others);
        }
    }
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    let damaged = report["damaged"].as_array().cloned().unwrap_or_default();
    if args.json {
        print_json(&report);
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "partition",
            "started from",
            "replayed",
            "next offset",
            "products",
            "reservations",
            "live",
        ]);
        for p in report["partitions"].as_array().into_iter().flatten() {
            if p.get("refused").is_some() {
                t.add_row(vec![
                    p["partition"].to_string(),
                    "REFUSED: damaged (below)".to_string(),
                ]);
                continue;
            }
            t.add_row(vec![
                p["partition"].to_string(),
                p["startedFrom"].as_str().unwrap_or("").to_string(),
                p["recordsReplayed"].to_string(),
                p["nextOffset"].to_string(),
                p["products"].to_string(),
                p["reservations"].to_string(),
                p["liveReservations"].to_string(),
            ]);
        }
        println!("audit of {}", report["source"].as_str().unwrap_or(""));
        println!("{t}");
        if let Some(n) = report.get("ordersChecked") {
            println!("orders in Postgres checked: {n}");
        }
        if let Some(l) = report.get("log") {
            println!(
                "log: {} (events {})",
                l["commands"].as_str().unwrap_or(""),
                l["events"].as_str().unwrap_or("")
            );
        }
        for n in report["otherLogs"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
        for p in report["partitions"].as_array().into_iter().flatten() {
            for n in p["notes"].as_array().into_iter().flatten() {
                println!(
                    "note (partition {}): {}",
                    p["partition"],
                    n.as_str().unwrap_or("")
                );
            }
        }
        for d in &damaged {
            println!(
                "DAMAGED: partition {}: {}",
                d["partition"],
                d["damage"].as_str().unwrap_or("")
            );
        }
        if violations.is_empty() && damaged.is_empty() {
            println!("clean: every invariant holds");
        } else if violations.is_empty() {
            println!(
                "{} partition(s) damaged (the server keeps them down); every invariant holds in the others",
                damaged.len()
            );
        } else {
            println!("{} violation(s):", violations.len());
            for v in &violations {
                println!("  VIOLATION: {}", v["violation"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(if violations.is_empty() && damaged.is_empty() {
        EXIT_OK()
    } else {
        Err(ProblemsFound(format!(
            "audit found {} violation(s) and {} damaged partition(s)",
            violations.len(),
            damaged.len()
        )))
    })
}

/// Orders in Postgres against confirmed reservations in the rebuilt engine state:
/// exactly one order per confirmed reservation, none without one, no user over a limit.
async fn audit_orders(
    pool: &flashsale_runtime::pg::Pool,
    states: &[State],
    logs: Option<&source::LogIds>,
) -> anyhow::Result<(u64, Vec<Value>)> {
    let client = pool.get().await.context("connecting to Postgres")?;
    // Kafka mode: only the orders projected from this deployment's log (migration 0002);
    // those of other logs sharing the database are counted by `other_logs`.
    let rows = match logs {
        Some(l) => client
            .query(
                "SELECT order_id, reservation_id, user_id, sku, quantity FROM orders WHERE log_id = $1 ORDER BY order_id",
                &[&l.events],
            )
            .await,
        None => client
            .query(
                "SELECT order_id, reservation_id, user_id, sku, quantity FROM orders ORDER BY order_id",
                &[],
            )
            .await,
    }
    .context("reading orders from Postgres (has `flashsale migrate` run?)")?;
    let mut confirmed: BTreeMap<String, (String, String, String, u32, u32)> = BTreeMap::new();
    let mut limits: BTreeMap<String, u32> = BTreeMap::new();
    for s in states {
        for (sku, p) in s.products() {
            limits.insert(sku.to_string(), p.spec().per_user_limit);
        }
        for r in s.reservations() {
            if let Some(o) = r.order() {
                let limit = s
                    .product(r.sku())
                    .map(|p| p.spec().per_user_limit)
                    .unwrap_or(0);
                confirmed.insert(
                    r.id().to_string(),
                    (
                        o.order_id.to_string(),
                        r.user().to_string(),
                        r.sku().to_string(),
                        r.quantity(),
                        limit,
                    ),
                );
            }
        }
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_user: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in &rows {
        let order_id: String = row.get(0);
        let reservation_id: String = row.get(1);
        let user: String = row.get(2);
        let sku: String = row.get(3);
        let quantity: i32 = row.get(4);
        *per_user.entry((user.clone(), sku.clone())).or_default() += i64::from(quantity);
        match confirmed.get(&reservation_id) {
            None => out.push(json!({"violation": format!("order {order_id} has no confirmed reservation ({reservation_id} is not confirmed in the engine)"),
                                    "orderId": order_id, "reservationId": reservation_id})),
            Some((engine_order, ..)) if *engine_order != order_id => out.push(json!({
                "violation": format!("order {order_id} for reservation {reservation_id} is not the engine's order {engine_order}"),
                "orderId": order_id, "reservationId": reservation_id})),
            Some(_) => {}
        }
        seen.entry(reservation_id).or_default().push(order_id);
    }
    for (rid, (oid, ..)) in &confirmed {
        match seen.get(rid).map(Vec::len).unwrap_or(0) {
            0 => out.push(json!({"violation": format!("confirmed reservation {rid} has no order row (expected {oid}; is the projector behind?)"), "reservationId": rid})),
            1 => {}
            n => out.push(json!({"violation": format!("confirmed reservation {rid} has {n} order rows"), "reservationId": rid})),
        }
    }
    for ((user, sku), n) in per_user {
        let limit = limits.get(&sku).copied().unwrap_or(0);
        if n > i64::from(limit) {
            out.push(json!({"violation": format!("user {user} bought {n} of {sku}, over the limit {limit}"), "userId": user, "skuId": sku}));
        }
    }
    Ok((rows.len() as u64, out))
}

/// Rows in Postgres that belong to other logs than the audited one (another
/// deployment sharing the database, a topic since deleted and recreated, or rows from
/// before migration 0002): not checked, only explained.
async fn other_logs(
    pool: &flashsale_runtime::pg::Pool,
    logs: &source::LogIds,
) -> anyhow::Result<Vec<String>> {
    let client = pool.get().await.context("connecting to Postgres")?;
    let mut out = Vec::new();
    let name = |id: &str| {
        if id.is_empty() {
            "an unknown log (rows written before migration 0002)".to_string()
        } else {
            format!("log {id}")
        }
    };
    for row in client
        .query(
            "SELECT log_id, count(*), count(DISTINCT partition) FROM engine_snapshots WHERE log_id <> $1 GROUP BY log_id ORDER BY log_id",
            &[&logs.commands],
        )
        .await
        .context("reading engine_snapshots")?
    {
        out.push(format!(
            "{} snapshot(s) of {} partition(s) belong to {}, not to this deployment's {}; ignored (another deployment on this database, or a topic deleted and recreated)",
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            name(row.get::<_, &str>(0)),
            logs.commands
        ));
    }
    for row in client
        .query(
            "SELECT log_id, count(*) FROM orders WHERE log_id <> $1 GROUP BY log_id ORDER BY log_id",
            &[&logs.events],
        )
        .await
        .context("reading orders")?
    {
        out.push(format!(
            "{} order(s) were projected from {}, not from this deployment's {}; not checked",
            row.get::<_, i64>(1),
            name(row.get::<_, &str>(0)),
            logs.events
        ));
    }
    Ok(out)
}

// ------------------------------------------------------------------ snapshots

pub async fn snapshot_command(args: SnapshotArgs) -> anyhow::Result<()> {
    Ok(snapshot_inner(args).await??)
}

async fn snapshot_inner(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SnapshotCommand::List(a) => {
            let mut src = a.source.open().await?;
            tokio::task::spawn_blocking(move || snapshot_list(&mut src, a.partition, a.json, false))
                .await?
        }
        SnapshotCommand::Verify(a) => {
            let mut src = a.source.open().await?;
            tokio::task::spawn_blocking(move || snapshot_list(&mut src, a.partition, a.json, true))
                .await?
        }
        SnapshotCommand::Show(a) => {
            let src = a.source.open().await?;
            tokio::task::spawn_blocking(move || snapshot_show(&src, &a.id, a.json)).await?
        }
    }
}

fn parse_snapshot_id(id: &str) -> anyhow::Result<u32> {
    id.strip_prefix('p')
        .and_then(|r| r.split_once('@'))
        .and_then(|(p, _)| p.parse().ok())
        .with_context(|| format!("{id} is not a snapshot id (they look like p3@120000; see `flashsale snapshot list`)"))
}

fn snapshot_list(
    src: &mut Sources,
    partition: Option<u32>,
    as_json: bool,
    verify: bool,
) -> anyhow::Result<ExitCode> {
    let n = src.log.partitions();
    let parts: Vec<u32> = match partition {
        Some(p) if p >= n => bail!(
            "unknown partition {p}: {} has partitions 0-{}",
            src.describe,
            n.saturating_sub(1)
        ),
        Some(p) => vec![p],
        None => (0..n).collect(),
    };
    let now = flashsale_runtime::now_ms();
    let mut rows = Vec::new();
    let mut failed = 0;
    let parts_checked = parts.clone();
    for p in parts {
        for info in src.store.list(p)? {
            let mut row = json!({"id": info.id, "partition": info.partition, "offset": info.offset,
                "takenAt": rfc3339(info.taken_at), "ageSeconds": now.saturating_sub(info.taken_at) / 1000,
                "sizeBytes": info.size_bytes, "checksum": format!("{:08x}", info.checksum),
                "file": src.store.location(&info)});
            if verify {
                // The server's own check (checksum, invariants, name).
                match load_valid(src.store.as_ref(), &info) {
                    Ok(s) => {
                        row["verify"] = json!(format!(
                            "ok: {}, {} ({} ended, kept {} s), {} pruned so far",
                            plural(s.products().count() as u64, "product"),
                            plural(s.reservation_count() as u64, "reservation"),
                            s.ended_reservations(),
                            s.retention_ms() / 1000,
                            s.pruned_total()
                        ))
                    }
                    Err(e) => {
                        failed += 1;
                        row["verify"] = json!(format!("FAILED: {e}"));
                    }
                }
            }
            rows.push(row);
        }
    }
    // The log beside the snapshots, through the server's own loader: whether the
    // server serves the partition (from which snapshot, past which damage) or refuses it.
    let mut logs = Vec::new();
    let mut refused = 0;
    if verify {
        for p in &parts_checked {
            match src.log.verdict(*p) {
                Err(why) => {
                    refused += 1;
                    logs.push(json!({"partition": p, "partitionDown": true, "log": format!("REFUSED: the server keeps partition {p} down: {why}")}));
                }
                Ok(Some(v)) => {
                    for n in v.notes {
                        logs.push(json!({"partition": p, "partitionDown": false, "log": n}));
                    }
                    let start = match (&v.snapshot, &v.snapshot_location) {
                        (Some((info, _)), Some(file)) => {
                            format!("snapshot {} ({file})", info.id)
                        }
                        (Some((info, _)), None) => format!("snapshot {}", info.id),
                        _ => "offset 0 (no valid snapshot)".to_string(),
                    };
                    logs.push(json!({"partition": p, "partitionDown": false, "log": format!("ok: the server starts partition {p} from {start}")}));
                }
                Ok(None) => {}
            }
        }
    }
    if as_json {
        // stdout stays the array of snapshots; what the logs say goes to stderr.
        print_json(&Value::Array(rows));
        for l in &logs {
            eprintln!(
                "log of partition {}: {}",
                l["partition"],
                l["log"].as_str().unwrap_or("")
            );
        }
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        let mut header = vec![
            "id",
            "partition",
            "offset",
            "taken at",
            "age (s)",
            "bytes",
            "crc32",
        ];
        if verify {
            header.push("verify");
            header.push("file");
        }
        t.set_header(header);
        for r in &rows {
            let mut cells = vec![
                r["id"].as_str().unwrap_or("").to_string(),
                r["partition"].to_string(),
                r["offset"].to_string(),
                r["takenAt"].as_str().unwrap_or("").to_string(),
                r["ageSeconds"].to_string(),
                r["sizeBytes"].to_string(),
                r["checksum"].as_str().unwrap_or("").to_string(),
            ];
            if verify {
                cells.push(r["verify"].as_str().unwrap_or("").to_string());
                cells.push(r["file"].as_str().unwrap_or("").to_string());
            }
            t.add_row(cells);
        }
        println!("{t}");
        if rows.is_empty() {
            println!("no snapshots in {}", src.describe);
        }
        for l in &logs {
            println!(
                "log of partition {}: {}",
                l["partition"],
                l["log"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if failed == 0 && refused == 0 {
        EXIT_OK()
    } else {
        Err(ProblemsFound(format!(
            "{failed} snapshot(s) failed verification, {refused} partition(s) refused by the server"
        )))
    })
}

fn snapshot_show(src: &Sources, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let p = parse_snapshot_id(id)?;
    let info = src
        .store
        .list(p)?
        .into_iter()
        .find(|i| i.id == id)
        .with_context(|| {
            format!("no snapshot {id}; `flashsale snapshot list --partition {p}` shows the ids")
        })?;
    let bytes = src.store.load(&info)?;
    let state =
        snapshot::decode(&bytes).with_context(|| format!("snapshot {id} cannot be trusted"))?;
    let mut out = state_summary(p, &state);
    out["id"] = json!(info.id);
    out["sizeBytes"] = json!(info.size_bytes);
    out["checksum"] = json!(format!("{:08x}", info.checksum));
    out["reservations"] = json!(state.reservations().count());
    out["liveReservations"] = json!(state.live_reservations());
    if as_json {
        print_json(&out);
    } else {
        println!(
            "snapshot {} (partition {p}): covers offsets < {}, log time {}, {}, crc32 {}, {} ({} live)",
            info.id,
            info.offset,
            out["logTime"].as_str().unwrap_or("-"),
            plural(info.size_bytes, "byte"),
            out["checksum"].as_str().unwrap_or(""),
            plural(state.reservations().count() as u64, "reservation"),
            out["liveReservations"]
        );
        print_skus(out["products"].as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
    Ok(EXIT_OK())
}
