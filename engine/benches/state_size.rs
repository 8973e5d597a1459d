//! Memory per live hold and per order (issue 29): in the engine's partition state, in
//! the snapshot encoding, and in the gateway's read model.
//!
//! Builds, for many users and many SKUs, `STATE_SIZE_N` live holds (every one with an
//! `Idempotency-Key`, as storefronts send them) in one partition, then another state
//! where each of `STATE_SIZE_N` holds was checked out (an order). A counting global
//! allocator (`stats_alloc`) gives the bytes each structure keeps allocated (allocator bookkeeping
//! not included); the figures are that divided by N.
//!
//! Run: `cargo bench -p flashsale-engine --bench state_size` (env `STATE_SIZE_N`,
//! default 300000). Takes a few seconds; no timing is measured, so a busy machine
//! gives the same figures.

use flashsale_core::actor::{PartitionActor, SnapshotPolicy};
use flashsale_core::{snapshot, LogRecord, State};
use flashsale_gateway::readmodel::ReadModel;
use flashsale_proto::*;
use flashsale_runtime::metrics::Metrics;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts every allocation (the workspace forbids `unsafe`, so the counting allocator
/// is a crate's).
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed (`stats_alloc` counts a realloc's growth in
/// `bytes_allocated` and its shrinking in `bytes_deallocated`).
fn live() -> isize {
    let s = ALLOC.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

const T0: UnixMs = 1_736_935_200_000;
const SKUS: usize = 100;

fn sku(i: usize) -> SkuId {
    SkuId::parse(&format!("SKU-{i:03}")).expect("valid sku")
}
fn user(i: usize) -> UserId {
    UserId::parse(&format!("user-{i:08}")).expect("valid user")
}

fn rec(offset: u64, request: u128, key: Option<String>, command: Command) -> LogRecord {
    let r = CommandRecord {
        request_id: RequestId(request),
        reply_to: 0,
        idempotency_key: key,
        command,
    };
    LogRecord {
        offset,
        log_time: T0 + offset,
        payload: encode(&r),
    }
}

fn configure(n: usize) -> Command {
    let skus: Vec<SkuId> = (0..SKUS).map(sku).collect();
    let products = skus
        .iter()
        .map(|s| ProductSpec {
            sku: s.clone(),
            name: format!("Product {s}"),
            description: String::new(),
            category: "Electronics".into(),
            base_price: Cents(129_999),
            flash_sale_price: Cents(99_999),
            total_inventory: (n * 2 / SKUS) as u64 + 1000,
            per_user_limit: 5,
            image_url: String::new(),
        })
        .collect();
    Command::ConfigureSale(SaleConfig {
        sale: SaleMeta {
            sale_id: SaleId(42),
            name: "State size bench".into(),
            starts_at: T0,
            ends_at: T0 + 24 * 3_600_000,
            reservation_ttl_s: 3600,
            all_skus: skus,
        },
        products,
    })
}

/// `STATE_SIZE_KEYS=0`: holds without an `Idempotency-Key`.
fn keys() -> bool {
    std::env::var("STATE_SIZE_KEYS").map_or(true, |v| v != "0")
}

/// The request id of hold `i` (ULID-like: time-ordered high bits, distinct low bits).
fn hold_request(i: usize) -> u128 {
    (u128::from(T0 + i as u64) << 80) | (i as u128 * 0x9E37_79B9)
}

/// One partition with `n` live holds (users hold ~2 each, spread over SKUS products),
/// or with `n` orders when `checkout`. Returns the actor, every event record and the
/// longest time one record took to apply (a stall: a map rehashed as it grew).
fn build(n: usize, checkout: bool) -> (PartitionActor, Vec<EventRecord>, Duration) {
    let mut actor = PartitionActor::new(State::new(0), SnapshotPolicy::default());
    let mut events = Vec::new();
    let mut offset = 0u64;
    let mut longest = Duration::ZERO;
    let mut next = |actor: &mut PartitionActor, key: Option<String>, command: Command, id| {
        let r = rec(offset, id, key, command);
        offset += 1;
        let t = Instant::now();
        let out = actor.apply_batch(std::slice::from_ref(&r));
        longest = longest.max(t.elapsed());
        for (_, reply) in &out.replies {
            assert!(
                !matches!(reply.reply, Reply::Rejected(_)),
                "bench command refused: {:?}",
                reply.reply
            );
        }
        out.events
    };
    events.extend(next(&mut actor, None, configure(n), 1));
    for i in 0..n {
        let key = keys().then(|| format!("{:08x}-5a1e-4c0d-9f3b-{:012x}", i, i * 7));
        let cmd = Command::Reserve {
            user: user(i / 2),
            sku: sku(i % SKUS),
            quantity: 1,
        };
        events.extend(next(&mut actor, key, cmd, hold_request(i)));
        if checkout {
            let reservation = ReservationId {
                partition: 0,
                ulid: hold_request(i),
            };
            let cmd = Command::Checkout(CheckoutRequest {
                reservation,
                payment_transaction_id: format!("pay_{:020}", i),
                payment_method: PaymentMethod::CreditCard,
                shipping_address: "221B Baker Street, London NW1 6XE, United Kingdom".into(),
            });
            events.extend(next(&mut actor, None, cmd, hold_request(i) + 1));
        }
    }
    (actor, events, longest)
}

fn measure(n: usize, checkout: bool) {
    let what = if checkout { "order" } else { "live hold" };
    let before = live();
    let (actor, events, longest) = build(n, checkout);
    let model_before = live();
    let model = ReadModel::new(1, Arc::new(Metrics::new()));
    for e in &events {
        model.apply(e);
    }
    let model_bytes = live() - model_before;
    drop(events);
    let state_bytes = live() - before - model_bytes;
    let snap = snapshot::encode(actor.state()).expect("encodes");
    let per = |b: isize| b as f64 / n as f64;
    println!(
        "{n} {what}s ({} users, {SKUS} SKUs, keys {}): engine state {:.0} B/{what}, snapshot {:.0} B/{what}, read model {:.0} B/{what}",
        n / 2,
        if keys() { "on" } else { "off" },
        per(state_bytes),
        per(snap.len() as isize),
        per(model_bytes),
    );
    println!(
        "  longest single apply while building: {:.1} ms (timing: only meaningful on an idle machine)",
        longest.as_secs_f64() * 1000.0
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STATE_SIZE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 300_000 });
    measure(n, false);
    measure(n, true);
}
