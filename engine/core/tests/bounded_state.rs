//! Bounded state (issue 15, invariant 5): expired and cancelled reservations leave the
//! state, and so every snapshot, one retention (log time) after they ended; orders stay.
//! The state's size follows live holds + orders + the retention window, not history.

use flashsale_core::core::IDEMPOTENCY_RETENTION_MS;
use flashsale_core::{check_state, snapshot, State};
use flashsale_proto::*;

const T0: u64 = 1_735_725_600_000;

struct Run {
    state: State,
    offset: u64,
    req: u128,
    events: Vec<Event>,
}

impl Run {
    fn new(state: State) -> Self {
        Run {
            state,
            offset: 0,
            req: 1,
            events: Vec::new(),
        }
    }
    fn apply(&mut self, t: u64, command: Command, key: Option<&str>) -> Reply {
        self.req += 1;
        let rec = CommandRecord {
            // Ids of one varint width (bincode): sizes compare like for like.
            request_id: RequestId((1 << 40) + self.req),
            reply_to: 0,
            idempotency_key: key.map(str::to_string),
            command,
        };
        self.events.clear();
        let r = self.state.apply(self.offset, t, &rec, &mut self.events);
        self.offset += 1;
        r
    }
    fn pruned_in_last(&self) -> Vec<ReservationId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ReservationsPruned { reservations } => Some(reservations.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

fn sku() -> SkuId {
    SkuId::parse("ONE-UNIT").unwrap()
}

fn configure(run: &mut Run, total: u64, ttl_s: u32) {
    let sku = sku();
    let cfg = SaleConfig {
        sale: SaleMeta {
            sale_id: SaleId(1),
            name: "s".into(),
            starts_at: T0,
            ends_at: T0 + 30 * 24 * 3_600_000,
            reservation_ttl_s: ttl_s,
            all_skus: vec![sku.clone()],
        },
        products: vec![ProductSpec {
            sku,
            name: "p".into(),
            description: String::new(),
            category: String::new(),
            base_price: Cents(200),
            flash_sale_price: Cents(100),
            total_inventory: total,
            per_user_limit: 1,
            image_url: String::new(),
        }],
    };
    assert!(matches!(
        run.apply(T0, Command::ConfigureSale(cfg), None),
        Reply::SaleConfigured { .. }
    ));
}

fn hold(run: &mut Run, t: u64, user: &str, key: Option<&str>) -> ReservationId {
    match run.apply(
        t,
        Command::Reserve {
            user: UserId::parse(user).unwrap(),
            sku: sku(),
            quantity: 1,
        },
        key,
    ) {
        Reply::Reserved { reservation, .. } => reservation.id,
        other => panic!("hold refused: {other:?}"),
    }
}

/// Tens of thousands of hold/cancel cycles on a 1-unit product: with a 10 s retention
/// (above the 5 s TTL) and one cycle every 100 ms of log time, about 100 ended holds are
/// kept at any time, whatever the history; the snapshot's size stops growing with it.
#[test]
fn hold_cancel_cycles_keep_the_state_bounded_by_the_window() {
    const RETENTION_MS: u64 = 10_000;
    const STEP_MS: u64 = 100;
    const CYCLES: u64 = 40_000;
    let mut run = Run::new(State::with_retention(0, RETENTION_MS));
    configure(&mut run, 1, 5);
    // One order that must survive every prune.
    let buyer = hold(&mut run, T0 + 1, "buyer", None);
    let paid = run.apply(
        T0 + 2,
        Command::Checkout(CheckoutRequest {
            reservation: buyer,
            payment_transaction_id: "pay_1".into(),
            payment_method: PaymentMethod::ALL[0],
            shipping_address: "1 Main St".into(),
        }),
        None,
    );
    assert!(matches!(paid, Reply::CheckedOut { repeat: false, .. }));
    run.apply(
        T0 + 3,
        Command::AdjustInventory {
            sku: sku(),
            delta: 1,
        },
        None,
    );
    let mut sizes = Vec::new();
    let mut first = None;
    let mut pruned_seen = 0u64;
    for i in 0..CYCLES {
        let t = T0 + 1_000 + i * STEP_MS;
        let id = hold(&mut run, t, &format!("u{}", i % 1000), None);
        pruned_seen += run.pruned_in_last().len() as u64;
        first.get_or_insert(id);
        let r = run.apply(t + STEP_MS / 2, Command::Cancel { reservation: id }, None);
        assert!(matches!(r, Reply::Cancelled { .. }), "{r:?}");
        pruned_seen += run.pruned_in_last().len() as u64;
        if i % 10_000 == 9_999 {
            assert!(check_state(&run.state).is_empty());
            // Kept: the order + the holds that ended within the last retention.
            let window = (RETENTION_MS / STEP_MS) as usize;
            let kept = run.state.reservation_count();
            assert!(
                kept <= window + 2,
                "after {} cycles {kept} reservations kept, window {window}",
                i + 1
            );
            assert_eq!(run.state.ended_reservations(), kept - 1);
            sizes.push(snapshot::encode(&run.state).unwrap().len());
        }
    }
    // Every cycle's hold was pruned except the ones in the last window.
    assert_eq!(run.state.pruned_total(), pruned_seen);
    assert!(pruned_seen >= CYCLES - RETENTION_MS / STEP_MS - 1);
    // Snapshot size is flat: the 40,000-cycle state is no bigger than a few percent over
    // the 10,000-cycle one (the pruned count's varint may grow by a few bytes).
    let (s1, s4) = (sizes[0], sizes[3]);
    assert!(s4 <= s1 + s1 / 20, "snapshot grew with history: {sizes:?}");
    // The order stays; the first (long pruned) hold is unknown.
    let order = run
        .state
        .reservation(&buyer)
        .expect("orders are never pruned");
    assert_eq!(order.status(), ReservationStatus::Confirmed);
    let first = first.unwrap();
    assert!(run.state.reservation(&first).is_none());
    let t = T0 + 1_000 + CYCLES * STEP_MS;
    assert_eq!(
        run.apply(t, Command::Cancel { reservation: first }, None),
        Reply::Rejected(Rejection::ReservationNotFound { reservation: first })
    );
    // Per-user limits stay exact: the buyer (limit 1) bought one, still can't hold.
    match run.apply(
        t,
        Command::Reserve {
            user: UserId::parse("buyer").unwrap(),
            sku: sku(),
            quantity: 1,
        },
        None,
    ) {
        Reply::Rejected(Rejection::PurchaseLimitExceeded { held, .. }) => assert_eq!(held, 1),
        other => panic!("the buyer's order must still count: {other:?}"),
    }
}

/// A hold is pruned one retention after it ended (not after it was created), and not
/// before its `expiresAt` (a hold cancelled early); expired holds too; the event names
/// it.
#[test]
fn pruning_follows_log_time_from_the_end_of_a_hold() {
    let mut run = Run::new(State::with_retention(0, 5_000));
    configure(&mut run, 10, 120);
    let a = hold(&mut run, T0 + 1_000, "a", Some("key-a"));
    let early = hold(&mut run, T0 + 1_000, "e", None);
    // Cancelled 60 s after it was created: kept until 61 s + 5 s.
    run.apply(T0 + 61_000, Command::Cancel { reservation: a }, None);
    run.apply(T0 + 65_999, Command::Tick, None);
    assert!(run.pruned_in_last().is_empty());
    assert!(run.state.reservation(&a).is_some());
    run.apply(T0 + 66_000, Command::Tick, None);
    assert!(
        run.state.reservation(&a).is_some(),
        "not before its expiresAt"
    );
    // Cancelled right away: past its retention long before its expiresAt (121 s).
    run.apply(T0 + 66_001, Command::Cancel { reservation: early }, None);
    run.apply(T0 + 120_999, Command::Tick, None);
    assert!(run.pruned_in_last().is_empty());
    assert_eq!(run.state.ended_reservations(), 2);
    run.apply(T0 + 121_000, Command::Tick, None);
    assert_eq!(run.pruned_in_last(), vec![a, early]);
    assert!(run.state.reservation(&a).is_none());
    assert!(check_state(&run.state).is_empty());
    // Its idempotency key was forgotten first (one retention after the hold was made;
    // a key never names a pruned hold): the same key now makes a new hold.
    let again = hold(&mut run, T0 + 121_001, "a", Some("key-a"));
    assert_ne!(again, a);
    // An expired hold: TTL 120 s, expired by the tick at 241.001 s, pruned 5 s later.
    run.apply(T0 + 241_001, Command::Tick, None);
    assert_eq!(
        run.state.reservation(&again).map(|r| r.status()),
        Some(ReservationStatus::Expired)
    );
    run.apply(T0 + 246_000, Command::Tick, None);
    assert!(run.state.reservation(&again).is_some());
    run.apply(T0 + 246_001, Command::Tick, None);
    assert_eq!(run.pruned_in_last(), vec![again]);
    assert!(check_state(&run.state).is_empty());
}

/// The default retention is the idempotency window (24 h).
#[test]
fn default_retention_is_the_idempotency_window() {
    let s = State::new(0);
    assert_eq!(s.retention_ms(), IDEMPOTENCY_RETENTION_MS);
    let mut run = Run::new(s);
    configure(&mut run, 10, 120);
    let a = hold(&mut run, T0 + 1, "a", None);
    run.apply(T0 + 2, Command::Cancel { reservation: a }, None);
    run.apply(T0 + 2 + IDEMPOTENCY_RETENTION_MS - 1, Command::Tick, None);
    assert!(run.state.reservation(&a).is_some());
    run.apply(T0 + 2 + IDEMPOTENCY_RETENTION_MS, Command::Tick, None);
    assert!(run.state.reservation(&a).is_none());
}

/// Snapshots carry the retention and the ended index (version 3); a version-2 snapshot
/// is still read, its ended holds counted as ended at its clock.
#[test]
fn snapshots_carry_retention_and_version_2_is_still_read() {
    let mut run = Run::new(State::with_retention(0, 7_000));
    configure(&mut run, 10, 5);
    let a = hold(&mut run, T0 + 1_000, "a", None);
    let b = hold(&mut run, T0 + 1_001, "b", None);
    run.apply(T0 + 2_000, Command::Cancel { reservation: a }, None);
    let bytes = snapshot::encode(&run.state).unwrap();
    assert_eq!(bytes[4], snapshot::SNAPSHOT_VERSION);
    let back = snapshot::decode(&bytes).unwrap();
    assert_eq!(back, run.state);
    assert_eq!(back.retention_ms(), 7_000);

    let old = snapshot::encode_v2(&run.state);
    assert_eq!(old[4], 2);
    let mut up = snapshot::decode(&old).expect("a version-2 snapshot is read");
    assert!(check_state(&up).is_empty());
    assert_eq!(up.reservation_count(), 2);
    assert_eq!(up.ended_reservations(), 1);
    assert_eq!(up.oldest_ended_at(), Some(up.clock()));
    // Version 2 had no retention: the default applies (the host's setting replaces it).
    assert_eq!(up.retention_ms(), IDEMPOTENCY_RETENTION_MS);
    up.set_retention_ms(7_000);
    let mut ev = Vec::new();
    let tick = CommandRecord {
        request_id: RequestId(1),
        reply_to: 0,
        idempotency_key: None,
        command: Command::Tick,
    };
    up.apply(up.next_offset(), up.clock() + 7_000, &tick, &mut ev);
    assert!(
        up.reservation(&a).is_none(),
        "pruned one retention after the upgrade"
    );
    assert!(up.reservation(&b).is_some(), "b expired only now: kept");
}

/// A state keeping an ended hold past its retention is never written as a snapshot.
#[test]
fn a_state_keeping_a_hold_past_its_retention_is_not_snapshotted() {
    let mut run = Run::new(State::with_retention(0, 5_000));
    configure(&mut run, 10, 1);
    let a = hold(&mut run, T0 + 1_000, "a", None);
    run.apply(T0 + 2_000, Command::Cancel { reservation: a }, None);
    run.apply(T0 + 4_000, Command::Tick, None);
    assert!(run.state.reservation(&a).is_some());
    // A retention shorter than the age of its ended hold: overdue until the next record.
    let mut forged = run.state.clone();
    forged.set_retention_ms(1_000);
    let tick = CommandRecord {
        request_id: RequestId(9),
        reply_to: 0,
        idempotency_key: None,
        command: Command::Tick,
    };
    // Before any record is applied with the new retention, the hold is overdue.
    assert!(matches!(
        snapshot::encode(&forged),
        Err(snapshot::SnapshotError::Invariants(_))
    ));
    // One record later it is pruned and the state is clean again.
    let mut ev = Vec::new();
    forged.apply(forged.next_offset(), T0 + 4_000, &tick, &mut ev);
    assert!(forged.reservation(&a).is_none());
    assert!(snapshot::encode(&forged).is_ok());
}

/// Compact state (issue 29): holds keyed by ULID with interned SKUs, orders kept apart
/// from the hot map. A hold, an order, a cancelled hold and an idempotency key survive
/// a snapshot round trip exactly; a version-3 snapshot of the same state (the layout
/// before) loads into the same state.
#[test]
fn compact_state_round_trips_through_snapshots_and_version_3_is_still_read() {
    let mut run = Run::new(State::with_retention(0, 60_000));
    configure(&mut run, 10, 120);
    let a = hold(&mut run, T0 + 1, "a", Some("key-a"));
    let b = hold(&mut run, T0 + 2, "b", None);
    let c = hold(
        &mut run,
        T0 + 3,
        "c",
        Some("a-key-longer-than-twenty-four-bytes-0001"),
    );
    let paid = run.apply(T0 + 4, checkout(a, "pay_a"), None);
    assert!(matches!(paid, Reply::CheckedOut { repeat: false, .. }));
    run.apply(T0 + 5, Command::Cancel { reservation: b }, None);
    assert_eq!(run.state.order_count(), 1);
    assert_eq!(run.state.reservation_count(), 3);
    assert_eq!(run.state.idempotency_keys(), 2);

    let bytes = snapshot::encode(&run.state).unwrap();
    assert_eq!(bytes[4], snapshot::SNAPSHOT_VERSION);
    let back = snapshot::decode(&bytes).unwrap();
    assert_eq!(back, run.state);
    for id in [a, b, c] {
        assert_eq!(
            back.reservation(&id).map(|r| r.view()),
            run.state.reservation(&id).map(|r| r.view())
        );
    }
    assert_eq!(
        back.reservation(&a).and_then(|r| r.order_view()),
        run.state.reservation(&a).and_then(|r| r.order_view())
    );

    let old = snapshot::encode_v3(&run.state);
    assert_eq!(old[4], 3);
    let up = snapshot::decode(&old).expect("a version-3 snapshot is read");
    assert_eq!(up, run.state);
}

fn checkout(reservation: ReservationId, payment: &str) -> Command {
    Command::Checkout(CheckoutRequest {
        reservation,
        payment_transaction_id: payment.into(),
        payment_method: PaymentMethod::ALL[0],
        shipping_address: "1 Main St".into(),
    })
}

/// Per-user limits count bought units exactly after the order left the hot map, past
/// the retention and through a snapshot: the buyer (limit 1) cannot hold again.
#[test]
fn per_user_limit_stays_exact_after_the_order_leaves_the_hot_state() {
    let mut run = Run::new(State::with_retention(0, 2_000));
    configure(&mut run, 10, 1);
    let a = hold(&mut run, T0 + 1, "a", None);
    assert!(matches!(
        run.apply(T0 + 2, checkout(a, "pay_a"), None),
        Reply::CheckedOut { .. }
    ));
    assert_eq!(run.state.order_count(), 1);
    assert_eq!(run.state.live_reservations(), 0);
    // Far past the TTL and the retention: the order's expiry entry fell due and was
    // skipped, nothing about the order was pruned.
    run.apply(T0 + 60_000, Command::Tick, None);
    let again = |run: &mut Run, t| {
        run.apply(
            t,
            Command::Reserve {
                user: UserId::parse("a").unwrap(),
                sku: sku(),
                quantity: 1,
            },
            None,
        )
    };
    assert!(matches!(
        again(&mut run, T0 + 60_001),
        Reply::Rejected(Rejection::PurchaseLimitExceeded {
            held: 1,
            limit: 1,
            ..
        })
    ));
    assert_eq!(
        run.state
            .product(&sku())
            .unwrap()
            .used_by(&UserId::parse("a").unwrap()),
        1
    );
    let mut back = Run::new(snapshot::decode(&snapshot::encode(&run.state).unwrap()).unwrap());
    back.offset = run.offset;
    assert!(matches!(
        again(&mut back, T0 + 60_002),
        Reply::Rejected(Rejection::PurchaseLimitExceeded {
            held: 1,
            limit: 1,
            ..
        })
    ));
    assert!(check_state(&back.state).is_empty());
}

/// A retried hold whose order already left the hot map answers as before: the same
/// key (or the same request id) gives the same reservation, now CONFIRMED, as a repeat;
/// the same key with another quantity is refused; a retried checkout gives the same
/// order.
#[test]
fn an_idempotent_retry_of_a_hold_that_became_an_order_answers_the_same() {
    let mut run = Run::new(State::with_retention(0, 600_000));
    configure(&mut run, 10, 120);
    let reserve = |quantity| Command::Reserve {
        user: UserId::parse("a").unwrap(),
        sku: sku(),
        quantity,
    };
    let first = run.apply(T0 + 1, reserve(1), Some("k-1"));
    let Reply::Reserved {
        reservation,
        repeat: false,
    } = first
    else {
        panic!("hold refused: {first:?}")
    };
    let hold_request = run.req;
    let Reply::CheckedOut { order, .. } =
        run.apply(T0 + 2, checkout(reservation.id, "pay_1"), None)
    else {
        panic!("checkout refused")
    };
    let confirmed = ReservationView {
        status: ReservationStatus::Confirmed,
        ..reservation.clone()
    };
    match run.apply(T0 + 3, reserve(1), Some("k-1")) {
        Reply::Reserved {
            reservation,
            repeat: true,
        } => assert_eq!(reservation, confirmed),
        other => panic!("retry answered {other:?}"),
    }
    assert_eq!(
        run.apply(T0 + 4, reserve(2), Some("k-1")),
        Reply::Rejected(Rejection::IdempotencyKeyReused)
    );
    // The same request delivered again (a producer retry), no key.
    let rec = CommandRecord {
        request_id: RequestId((1 << 40) + hold_request),
        reply_to: 0,
        idempotency_key: None,
        command: reserve(1),
    };
    let mut ev = Vec::new();
    match run.state.apply(run.offset, T0 + 5, &rec, &mut ev) {
        Reply::Reserved {
            reservation,
            repeat: true,
        } => assert_eq!(reservation, confirmed),
        other => panic!("redelivery answered {other:?}"),
    }
    run.offset += 1;
    match run.apply(T0 + 6, checkout(reservation.id, "pay_1"), None) {
        Reply::CheckedOut {
            order: again,
            repeat: true,
        } => assert_eq!(again, order),
        other => panic!("checkout retry answered {other:?}"),
    }
    assert_eq!(run.state.order_count(), 1);
    assert!(check_state(&run.state).is_empty());
}
