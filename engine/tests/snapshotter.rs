//! The background snapshotter writes snapshots of the same state the actor has, from
//! its own copy: a snapshot it writes decodes to the actor's state at that offset, and
//! the last one (at `finish`) to the actor's final state. No timing involved.

use flashsale_core::actor::{PartitionActor, SnapshotPolicy};
use flashsale_core::{check_state, snapshot, LogRecord, State};
use flashsale_engine::snapshotter::Snapshotter;
use flashsale_engine::store::{load_newest_valid, FileSnapshotStore, SnapshotStore};
use flashsale_proto::*;
use flashsale_runtime::metrics::Metrics;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn sku(s: &str) -> SkuId {
    SkuId::parse(s).unwrap()
}

fn sale() -> Command {
    let skus = vec![sku("HOT"), sku("COLD")];
    Command::ConfigureSale(SaleConfig {
        sale: SaleMeta {
            sale_id: SaleId(7),
            name: "sale".into(),
            starts_at: T0 - 1000,
            ends_at: T0 + 3_600_000,
            reservation_ttl_s: 2,
            all_skus: skus.clone(),
        },
        products: skus
            .into_iter()
            .map(|sku| ProductSpec {
                sku,
                name: "p".into(),
                description: String::new(),
                category: "Electronics".into(),
                base_price: Cents(1000),
                flash_sale_price: Cents(900),
                total_inventory: 300,
                per_user_limit: 1,
                image_url: String::new(),
            })
            .collect(),
    })
}

fn record(offset: u64, command: Command) -> LogRecord {
    let rec = CommandRecord {
        request_id: RequestId(u128::from(offset) + 1),
        reply_to: 0,
        idempotency_key: None,
        command,
    };
    LogRecord {
        offset,
        // 10 ms of log time per record: holds (2 s) expire during the run.
        log_time: T0 + offset * 10,
        payload: encode(&rec),
    }
}

/// Record `i` of the run: reservations on both SKUs (more buyers than units, so some
/// are refused), every tenth a tick (expiries bring stock back), one undecodable.
fn command(i: u64) -> Option<Command> {
    if i == 0 {
        return Some(sale());
    }
    if i == 777 {
        return None;
    }
    if i.is_multiple_of(10) {
        return Some(Command::Tick);
    }
    Some(Command::Reserve {
        sku: sku(if i.is_multiple_of(3) { "COLD" } else { "HOT" }),
        user: UserId::parse(&format!("user-{}", i % 900)).unwrap(),
        quantity: 1,
    })
}

#[test]
fn snapshots_of_the_copy_are_the_actors_state() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SnapshotStore> = Arc::new(FileSnapshotStore::new(dir.path()));
    let policy = SnapshotPolicy {
        every_commands: 200,
        every_ms: 3_600_000,
        retention_ms: Some(1_000),
    };
    let mut actor = PartitionActor::new(State::new(0), policy);
    let snapshotter =
        Snapshotter::start(actor.clone(), store.clone(), 100, Arc::new(Metrics::new()));
    // The actor's state at every batch end, to compare snapshots with.
    let mut at_offset = std::collections::BTreeMap::new();
    let total = 3_000u64;
    let mut offset = 0;
    while offset < total {
        let n = 1 + offset % 37; // uneven batches
        let batch: Vec<LogRecord> = (offset..(offset + n).min(total))
            .map(|i| match command(i) {
                Some(c) => record(i, c),
                None => LogRecord {
                    offset: i,
                    log_time: T0 + i * 10,
                    payload: vec![0xff, 0x00, 0x13],
                },
            })
            .collect();
        offset += batch.len() as u64;
        let applied = actor.apply_batch(&batch);
        assert!(!applied.replies.is_empty() || !applied.events.is_empty());
        at_offset.insert(
            actor.state().next_offset(),
            snapshot::encode(actor.state()).unwrap(),
        );
        snapshotter.follow_blocking(batch);
    }
    snapshotter.finish();
    assert!(check_state(actor.state()).is_empty());

    let written = store.list(0).unwrap();
    assert!(!written.is_empty(), "snapshots were written");
    for info in &written {
        let bytes = store.load(info).unwrap();
        let state = snapshot::decode(&bytes).unwrap();
        assert!(
            check_state(&state).is_empty(),
            "invariants hold in {info:?}"
        );
        let expected = at_offset
            .get(&info.offset)
            .unwrap_or_else(|| panic!("snapshot {info:?} is at a batch end"));
        // Same records applied in the same order: the same maps, byte for byte.
        assert!(
            &bytes == expected,
            "snapshot at offset {} is the actor's state there",
            info.offset
        );
    }
    let (newest, rejected) = load_newest_valid(store.as_ref(), 0).unwrap();
    assert!(rejected.is_empty());
    let (info, state) = newest.expect("a snapshot");
    assert_eq!(info.offset, total, "the last snapshot covers every record");
    assert_eq!(state.next_offset(), actor.state().next_offset());
    assert!(
        store.load(&info).unwrap() == snapshot::encode(actor.state()).unwrap(),
        "the last snapshot is the actor's final state"
    );
}
