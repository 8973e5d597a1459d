//! `flashsale audit`: every partition rebuilt and checked against the invariants, and
//! in Kafka mode the orders in Postgres against the confirmed reservations.

use super::rebuild::{rebuild, Stop};
use super::source::{self, SourceArgs};
use super::{print_json, ExitCode, ProblemsFound, Refused, EXIT_OK};
use anyhow::Context;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use flashsale_engine::{check_state, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;

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
