//! `flashsale snapshot list | show | verify`: the snapshots per partition, one decoded,
//! and each checked as the server checks it, with the server's verdict on the log.

use super::source::{SourceArgs, Sources};
use super::{plural, print_json, print_skus, state_summary, ExitCode, ProblemsFound, EXIT_OK};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use flashsale_engine::snapshot;
use flashsale_engine::store::load_valid;
use flashsale_gateway::time::rfc3339;
use serde_json::{json, Value};

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
