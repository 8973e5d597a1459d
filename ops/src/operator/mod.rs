//! Operators' tools: `flashsale replay`, `flashsale audit`, `flashsale snapshot`.
//!
//! They answer, without reading code: what was the stock of SKU X at offset N or at
//! time T; is anything oversold or double-ordered; can this snapshot be trusted. They
//! read the embedded data directory or Kafka + Postgres (read only), rebuild state
//! with the engine's own `apply`, check it with the engine's own invariants, print a
//! table (or `--json`), and exit non-zero on any problem.
//!
//! One module per command (`replay`, `audit`, `snapshots`, each with its clap
//! arguments), the rebuild they share (`rebuild`: from a snapshot or an offset, through
//! the server's own loader) and where they read from ([`source`]); this file holds
//! their shared error types and output helpers.

mod audit;
mod rebuild;
mod replay;
mod snapshots;
pub mod source;

pub use audit::{audit_command, AuditArgs};
pub use replay::{replay_command, ReplayArgs};
pub use snapshots::{
    snapshot_command, SnapshotArgs, SnapshotCommand, SnapshotListArgs, SnapshotShowArgs,
};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use flashsale_engine::State;
use flashsale_gateway::time::rfc3339;
use flashsale_proto::*;
use serde_json::{json, Value};
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
