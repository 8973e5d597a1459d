//! Batch records (a gateway's commands of one partition in one `commands` record): the
//! host applies one as consecutive commands at the record's offset, with the same
//! idempotency, fencing and replay as single records.

use super::*;
use crate::kafka::testkit::*;
use flashsale_proto::{CommandRecord, Reply, ReplyRecord, ReservationStatus, NO_REPLY};

fn cfg() -> HostConfig {
    HostConfig {
        snapshot: SnapshotPolicy {
            every_commands: 1_000,
            every_ms: 3_600_000,
            retention_ms: None,
        },
        standby_window: 100,
        session_timeout_ms: 600,
        commit_every_ms: 100,
        min_tick_gap_ms: 200,
        adopt_new_topics: false,
    }
}

fn on(h: &mut Host, e: Event) -> Vec<Action> {
    let mut out = Vec::new();
    h.handle(e, &mut out);
    out
}

fn records(recs: Vec<LogRecord>, claims: Vec<u64>) -> Event {
    Event::Records {
        partition: 0,
        records: recs,
        claims,
        traces: Vec::new(),
    }
}

/// A host owning partition 0 from `committed` on (state `snapshot`), claimed at `epoch`.
fn owning(epoch: u64, committed: u64, snapshot: Option<State>) -> Host {
    let mut h = Host::new(cfg());
    on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed,
            low: 0,
            high: committed,
            snapshot,
        },
    );
    on(
        &mut h,
        Event::Claimed {
            partition: 0,
            epoch,
        },
    );
    h
}

/// Every output produced by `actions`, in order.
fn outputs(actions: &[Action]) -> (Vec<(u32, ReplyRecord)>, Vec<EventRecord>) {
    let mut replies = Vec::new();
    let mut events = Vec::new();
    for a in actions {
        if let Action::Produce { applied, .. } = a {
            replies.extend(applied.replies.iter().cloned());
            events.extend(applied.events.iter().cloned());
        }
    }
    (replies, events)
}

/// The id of the hold made by request `request` on partition 0.
fn hold_of(request: u128) -> flashsale_proto::ReservationId {
    flashsale_proto::ReservationId {
        partition: 0,
        ulid: request << 16,
    }
}

fn state(h: &Host) -> &State {
    h.owned()
        .find(|(p, _)| *p == 0)
        .map(|(_, o)| o.actor.state())
        .expect("partition 0 is owned")
}

/// Two sales (SKU-1: 3 units, SKU-2: 1 unit) at offsets 0 and 1.
fn sales() -> Vec<LogRecord> {
    vec![
        log_record(0, T0, &sale(1, NO_REPLY, 1, 3)),
        log_record(1, T0, &sale(2, NO_REPLY, 2, 1)),
    ]
}

/// The batch at offset 2: holds on both SKUs, an idempotent pair, a duplicate
/// delivery, a hold over the per-user limit and one out of stock.
fn the_batch() -> Vec<CommandRecord> {
    vec![
        reserve(10, 0, 1, 1, 1),
        reserve(11, 1, 2, 2, 1),
        with_key(reserve(12, 0, 3, 1, 1), "k-1"),
        // the client retried with the same key inside the same window
        with_key(reserve(13, 0, 3, 1, 1), "k-1"),
        // the same request delivered twice in one record
        reserve(10, 0, 1, 1, 1),
        // user 1 already holds 1 of SKU-1 (limit 2): 2 more is over it
        reserve(14, 0, 1, 1, 2),
        // SKU-2's one unit is held
        reserve(15, 1, 4, 2, 1),
    ]
}

#[test]
fn a_batch_record_is_applied_as_consecutive_commands_at_its_offset() {
    let mut h = owning(0, 0, None);
    let mut recs = sales();
    recs.push(batch_record(2, T0 + 5, &the_batch()));
    let a = on(&mut h, records(recs, vec![]));
    let (replies, events) = outputs(&a);
    let ids: Vec<u128> = replies.iter().map(|(_, r)| r.request_id.0 >> 16).collect();
    assert_eq!(
        ids,
        vec![10, 11, 12, 13, 10, 14, 15],
        "one reply per command with a reply_to, in the batch's order"
    );
    assert!(replies
        .iter()
        .all(|(_, r)| r.offset == 2 && r.partition == 0));
    assert_eq!(
        replies.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![0, 1, 0, 0, 0, 0, 1],
        "each reply goes to its own gateway"
    );
    let reply = |i: usize| &replies[i].1.reply;
    let held = |i: usize| match reply(i) {
        Reply::Reserved {
            reservation,
            repeat,
        } => (reservation.id, *repeat),
        r => panic!("command {i}: not a hold: {r:?}"),
    };
    let (r10, rep) = held(0);
    assert!(!rep);
    assert!(!held(1).1);
    let (k1, rep) = held(2);
    assert!(!rep);
    assert_eq!(held(3), (k1, true), "the key's retry gets the key's hold");
    assert_eq!(
        held(4),
        (r10, true),
        "a duplicate gets its first reply again"
    );
    assert!(matches!(reply(5), Reply::Rejected(_)), "per-user limit");
    assert!(matches!(reply(6), Reply::Rejected(_)), "out of stock");
    // one event record for the whole batch, at its offset
    let at_2: Vec<_> = events.iter().filter(|e| e.offset == 2).collect();
    assert_eq!(at_2.len(), 1, "the events of a batch are one record");
    let s = state(&h);
    assert_eq!(s.next_offset(), 3);
    assert_eq!(s.product(&sku(1)).map(|p| p.held()), Some(2));
    assert_eq!(s.product(&sku(2)).map(|p| p.held()), Some(1));
    assert!(flashsale_core::invariants::check_state(s).is_empty());
}

#[test]
fn a_key_from_an_earlier_record_is_answered_inside_a_batch_and_a_redelivered_batch_is_skipped() {
    let mut h = owning(0, 0, None);
    let mut recs = sales();
    recs.push(log_record(
        2,
        T0 + 1,
        &with_key(reserve(20, 0, 5, 1, 1), "k-9"),
    ));
    let batch = [
        with_key(reserve(21, 0, 5, 1, 1), "k-9"),
        reserve(22, 0, 6, 1, 1),
    ];
    recs.push(batch_record(3, T0 + 2, &batch));
    let a = on(&mut h, records(recs.clone(), vec![]));
    let (replies, _) = outputs(&a);
    let first = match &replies[0].1.reply {
        Reply::Reserved { reservation, .. } => reservation.id,
        r => panic!("{r:?}"),
    };
    match &replies[1].1.reply {
        Reply::Reserved {
            reservation,
            repeat,
        } => {
            assert_eq!(reservation.id, first);
            assert!(*repeat);
        }
        r => panic!("the retry in the batch: {r:?}"),
    }
    let before = state(&h).clone();
    // The same records fetched again (a re-delivery): nothing is applied twice.
    let a = on(&mut h, records(recs[2..].to_vec(), vec![]));
    assert!(outputs(&a).0.is_empty());
    assert_eq!(state(&h), &before);
    assert_eq!(state(&h).product(&sku(1)).map(|p| p.held()), Some(2));
}

#[test]
fn a_batch_cut_by_a_crash_is_applied_again_exactly_from_the_snapshot() {
    let mut recs = sales();
    recs.push(batch_record(2, T0 + 5, &the_batch()));
    recs.push(batch_record(
        3,
        T0 + 6,
        &[cancel(30, 0, hold_of(10)), reserve(31, 0, 7, 2, 1)],
    ));
    // The first run: everything applied (and produced, never acknowledged: the
    // engine was killed before committing the batch).
    let mut first = owning(0, 0, None);
    let a = on(&mut first, records(recs.clone(), vec![]));
    let (replies, events) = outputs(&a);
    // The snapshot it had written: the state after the sales (offset 2).
    let mut snap = owning(0, 0, None);
    on(&mut snap, records(recs[..2].to_vec(), vec![]));
    let snapshot = state(&snap).clone();
    assert_eq!(snapshot.next_offset(), 2);
    // The successor starts from the snapshot at the committed offset 2.
    let mut second = owning(0, 2, Some(snapshot));
    let a = on(&mut second, records(recs[2..].to_vec(), vec![]));
    let (replies2, events2) = outputs(&a);
    let at_2 = |r: &[(u32, ReplyRecord)]| {
        r.iter()
            .filter(|(_, r)| r.offset >= 2)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(at_2(&replies2), at_2(&replies), "the same replies again");
    let ev_2 = |e: &[EventRecord]| {
        e.iter()
            .filter(|e| e.offset >= 2)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(ev_2(&events2), ev_2(&events), "the same events again");
    assert_eq!(state(&second), state(&first), "the same state");
    assert_eq!(
        state(&second)
            .reservations()
            .filter(|r| r.status() == ReservationStatus::Reserved)
            .count(),
        2,
        "request 10's hold was cancelled; SKU-2's unit was held already"
    );
}

#[test]
fn a_fenced_owner_produces_nothing_of_a_batch() {
    // Owner at epoch 2; a successor's claim lands at offset 3, then a batch.
    let mut h = owning(2, 0, None);
    let mut recs = sales();
    recs.push(log_record(2, T0, &CommandRecord::tick()));
    let a = on(&mut h, records(recs, vec![2]));
    assert!(!outputs(&a).1.is_empty(), "the owner serves");
    let a = on(
        &mut h,
        records(
            vec![
                log_record(3, T0 + 1, &CommandRecord::tick()),
                batch_record(4, T0 + 2, &the_batch()),
            ],
            vec![3],
        ),
    );
    let (replies, events) = outputs(&a);
    assert!(
        replies.is_empty() && events.is_empty(),
        "fenced: no outputs"
    );
    assert!(!h.owns(0));
    let copy = h.standby(0).expect("kept as a standby copy");
    assert_eq!(
        copy.actor.state().next_offset(),
        5,
        "the copy still applies the batch"
    );
}

#[test]
fn an_empty_or_damaged_batch_is_a_tick() {
    let mut h = owning(0, 0, None);
    let mut recs = sales();
    recs.push(batch_record(2, T0 + 1, &[]));
    let mut cut = batch_record(3, T0 + 2, &the_batch());
    cut.payload.truncate(cut.payload.len() - 3);
    recs.push(cut);
    recs.push(batch_record(4, T0 + 3, &[reserve(40, 0, 8, 1, 1)]));
    let a = on(&mut h, records(recs, vec![]));
    let (replies, _) = outputs(&a);
    assert_eq!(
        replies.len(),
        1,
        "only the last record's command is answered"
    );
    assert_eq!(replies[0].1.offset, 4);
    assert_eq!(state(&h).next_offset(), 5);
    assert_eq!(state(&h).product(&sku(1)).map(|p| p.held()), Some(1));
}
