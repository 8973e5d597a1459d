//! The Postgres layer against the real Postgres (`make services-up`): migrations, the
//! snapshot store, the exactly-once projector and the order reads. Each test works in
//! a fresh schema of its own.
//!
//! Postgres comes from `FLASHSALE_POSTGRES`, else from `<repo>/.services.env`; without
//! it the tests skip with a message, unless `FLASHSALE_REQUIRE_SERVICES=1` (then they
//! fail).

use flashsale_engine::pg::PgSnapshotStore;
use flashsale_engine::snapshot;
use flashsale_engine::store::{load_newest_valid, SnapshotStore};
use flashsale_engine::State;
use flashsale_gateway::orders::OrderSource;
use flashsale_gateway::pg_orders::PgOrders;
use flashsale_ops::projector::Projector;
use flashsale_proto::*;
use flashsale_runtime::pg::{self, Pool};
use std::sync::Arc;

// ----------------------------------------------------------------------------------------
// set-up
// ----------------------------------------------------------------------------------------

pub fn postgres_url() -> Option<String> {
    if let Some(u) = std::env::var("FLASHSALE_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Some(u);
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services.env");
    let from_file = std::fs::read_to_string(file).ok().and_then(|text| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == "FLASHSALE_POSTGRES")
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    if from_file.is_none() {
        if std::env::var("FLASHSALE_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("FLASHSALE_REQUIRE_SERVICES=1 but no Postgres is configured: run `make services-up` or set FLASHSALE_POSTGRES");
        }
        eprintln!(
            "Postgres not configured (run `make services-up` or set FLASHSALE_POSTGRES); skipping"
        );
    }
    from_file
}

/// A fresh schema of its own.
struct Db {
    pool: Pool,
    url: String,
    schema: String,
    admin: Pool,
}

impl Db {
    /// A fresh, migrated schema; `None` when Postgres is not configured (the test skips).
    async fn fresh() -> Option<Db> {
        let db = Self::fresh_unmigrated().await?;
        pg::migrate(&db.pool).await.expect("migrations apply");
        Some(db)
    }

    async fn fresh_unmigrated() -> Option<Db> {
        let base = postgres_url()?;
        let admin = pg::connect(&base, 1).expect("valid URL");
        let schema = format!("t_{}", unique());
        admin
            .get()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to Postgres at {base}: {e} (make services-up)")
            })
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let pool = pg::connect(&url, 4).expect("valid URL");
        Some(Db {
            pool,
            url,
            schema,
            admin,
        })
    }

    async fn count(&self, sql: &str) -> i64 {
        self.pool
            .get()
            .await
            .expect("connection")
            .query_one(sql, &[])
            .await
            .expect(sql)
            .get(0)
    }

    async fn exec(&self, sql: &str) {
        self.pool
            .get()
            .await
            .expect("connection")
            .batch_execute(sql)
            .await
            .expect(sql);
    }

    async fn drop(self) {
        let c = self.admin.get().await.expect("connection");
        let _ = c
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .await;
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{t:x}p{}n{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ----------------------------------------------------------------------------------------
// engine states and events to store
// ----------------------------------------------------------------------------------------

const T0: UnixMs = 1_736_935_200_000;

fn sku(s: &str) -> SkuId {
    SkuId::parse(s).unwrap()
}
fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn sale_config(partition_skus: &[&str]) -> SaleConfig {
    let products = partition_skus
        .iter()
        .map(|s| ProductSpec {
            sku: sku(s),
            name: format!("Product {s}"),
            description: String::new(),
            category: "Electronics".into(),
            base_price: Cents(129_999),
            flash_sale_price: Cents(99_999),
            total_inventory: 1000,
            per_user_limit: 2,
            image_url: String::new(),
        })
        .collect();
    SaleConfig {
        sale: SaleMeta {
            sale_id: SaleId(7),
            name: "Test".into(),
            starts_at: T0,
            ends_at: T0 + 3_600_000,
            reservation_ttl_s: 120,
            all_skus: partition_skus.iter().map(|s| sku(s)).collect(),
        },
        products,
    }
}

/// Drives a real engine state: configure a sale, then `reserves` holds.
struct Engine {
    state: State,
    offset: u64,
}

impl Engine {
    fn new(partition: u16) -> Self {
        let mut e = Engine {
            state: State::new(partition),
            offset: 0,
        };
        e.apply(Command::ConfigureSale(sale_config(&["SKU-A", "SKU-B"])));
        e
    }
    fn apply(&mut self, command: Command) -> (Reply, Vec<Event>) {
        let rec = CommandRecord {
            request_id: RequestId(1000 + u128::from(self.offset)),
            reply_to: 0,
            idempotency_key: None,
            command,
        };
        let mut events = Vec::new();
        let reply = self
            .state
            .apply(self.offset, T0 + self.offset, &rec, &mut events);
        self.offset += 1;
        (reply, events)
    }
    fn reserve_many(&mut self, n: usize) {
        for i in 0..n {
            let u = user(&format!("u{}", self.offset * 1000 + i as u64));
            self.apply(Command::Reserve {
                user: u,
                sku: sku("SKU-A"),
                quantity: 1,
            });
        }
    }
}

fn store(db: &Db) -> Arc<PgSnapshotStore> {
    Arc::new(PgSnapshotStore::new(db.pool.clone()))
}

/// Runs a blocking store call where the store expects it (off the async workers).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking call panicked")
}

// ----------------------------------------------------------------------------------------
// migrations
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_rerunning_is_a_no_op() {
    let Some(db) = Db::fresh_unmigrated().await else {
        return;
    };
    let first = pg::migrate(&db.pool).await.expect("first run");
    assert_eq!(
        first.len(),
        pg::MIGRATIONS.len(),
        "every migration applies on an empty schema"
    );
    let second = pg::migrate(&db.pool).await.expect("second run");
    assert!(
        second.is_empty(),
        "a second run applies nothing, got {second:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM schema_migrations").await,
        pg::MIGRATIONS.len() as i64
    );
    for table in [
        "engine_snapshots",
        "sales",
        "products",
        "reservations",
        "orders",
        "projector_offsets",
        "projector_positions",
        "readmodel_snapshots",
    ] {
        assert_eq!(
            db.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} exists and is empty"
        );
    }
    // Several processes migrating at once (engine, gateway, projector all start): one
    // applies, the others wait and find nothing to do.
    let Some(db2) = Db::fresh_unmigrated().await else {
        return;
    };
    let runs: Vec<_> = (0..4).map(|_| pg::connect(&db2.url, 1).unwrap()).collect();
    let results = futures::future::join_all(runs.iter().map(pg::migrate)).await;
    let applied: usize = results
        .into_iter()
        .map(|r| r.expect("concurrent migrate").len())
        .sum();
    assert_eq!(
        applied,
        pg::MIGRATIONS.len(),
        "each migration applied exactly once"
    );
    db.drop().await;
    db2.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_migration_is_refused() {
    let Some(db) = Db::fresh().await else { return };
    db.exec("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        .await;
    let err = pg::migrate(&db.pool)
        .await
        .expect_err("an edited migration is refused");
    assert!(
        matches!(err, pg::PgError::MigrationChanged { version: 1, .. }),
        "{err}"
    );
    db.drop().await;
}

// ----------------------------------------------------------------------------------------
// snapshot store
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_round_trip_newest_first_and_prune_keeps_the_newest() {
    let Some(db) = Db::fresh().await else { return };
    let st = store(&db);
    let mut engine = Engine::new(3);
    let mut saved = Vec::new();
    for _ in 0..5 {
        engine.reserve_many(10);
        let state = engine.state.clone();
        let bytes = snapshot::encode(&state).expect("encodes");
        let s = st.clone();
        let info = blocking(move || s.save(3, state.next_offset(), state.clock(), &bytes))
            .await
            .expect("save");
        saved.push((info, engine.state.clone()));
    }
    let s = st.clone();
    let listed = blocking(move || s.list(3)).await.expect("list");
    let offsets: Vec<u64> = listed.iter().map(|i| i.offset).collect();
    let mut expected: Vec<u64> = saved.iter().map(|(i, _)| i.offset).collect();
    expected.reverse();
    assert_eq!(offsets, expected, "newest first");
    assert_eq!(listed[0], saved[4].0, "list shows what save returned");
    assert!(blocking({
        let s = st.clone();
        move || s.list(4)
    })
    .await
    .expect("list")
    .is_empty());

    for (info, state) in &saved {
        let s = st.clone();
        let i = info.clone();
        let bytes = blocking(move || s.load(&i)).await.expect("load");
        assert_eq!(bytes.len() as u64, info.size_bytes);
        let back = snapshot::decode(&bytes).expect("decodes");
        assert_eq!(back.next_offset(), info.offset);
        assert_eq!(back.next_offset(), state.next_offset());
        assert_eq!(back.clock(), state.clock());
        assert_eq!(back.live_reservations(), state.live_reservations());
        let views = |s: &State| {
            let mut v: Vec<ReservationView> = s.reservations().map(|r| r.view()).collect();
            v.sort_by_key(|r| r.id);
            v
        };
        assert_eq!(views(&back), views(state), "the reservations round-trip");
    }

    let s = st.clone();
    blocking(move || s.prune(3, 3)).await.expect("prune");
    let s = st.clone();
    let left: Vec<u64> = blocking(move || s.list(3))
        .await
        .expect("list")
        .iter()
        .map(|i| i.offset)
        .collect();
    assert_eq!(left, expected[..3].to_vec(), "the 3 newest are kept");

    // Saving the same offset again (a second engine during a rebalance) keeps one row.
    let (info, state) = saved.last().unwrap().clone();
    let bytes = snapshot::encode(&state).unwrap();
    let s = st.clone();
    blocking(move || s.save(3, info.offset, info.taken_at, &bytes))
        .await
        .expect("save again");
    assert_eq!(db.count("SELECT count(*) FROM engine_snapshots").await, 3);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_newest_snapshot_is_refused_and_the_one_before_is_used() {
    let Some(db) = Db::fresh().await else { return };
    let st = store(&db);
    let mut engine = Engine::new(1);
    let mut offsets = Vec::new();
    for _ in 0..4 {
        engine.reserve_many(5);
        let state = engine.state.clone();
        let bytes = snapshot::encode(&state).unwrap();
        let s = st.clone();
        offsets.push(
            blocking(move || s.save(1, state.next_offset(), state.clock(), &bytes))
                .await
                .unwrap()
                .offset,
        );
    }
    // Newest: one byte of the body flipped (the body CRC catches it).
    db.exec(&format!(
        "UPDATE engine_snapshots SET state = set_byte(state, 40, get_byte(state, 40) # 255) WHERE partition = 1 AND log_offset = {}",
        offsets[3]
    ))
    .await;
    // Next: the checksum column disagrees with the header.
    db.exec(&format!("UPDATE engine_snapshots SET checksum = (checksum + 1) % 4294967296 WHERE partition = 1 AND log_offset = {}", offsets[2]))
        .await;
    let s = st.clone();
    let (found, rejected) = blocking(move || load_newest_valid(s.as_ref(), 1))
        .await
        .expect("store reachable");
    let (info, state) = found.expect("an older snapshot is usable");
    assert_eq!(
        info.offset, offsets[1],
        "falls back past both bad snapshots"
    );
    assert_eq!(state.next_offset(), offsets[1]);
    let refused: Vec<u64> = rejected.iter().map(|r| r.info.offset).collect();
    assert_eq!(
        refused,
        vec![offsets[3], offsets[2]],
        "both are reported, newest first"
    );
    assert!(
        rejected[0].error.contains("checksum"),
        "{}",
        rejected[0].error
    );
    assert!(
        rejected[1].error.contains("checksum"),
        "{}",
        rejected[1].error
    );

    // Bytes that are not a snapshot at all are refused when written.
    let s = st.clone();
    assert!(blocking(move || s.save(1, 999, T0, b"not a snapshot"))
        .await
        .is_err());
    // A snapshot stored under the wrong partition/offset is never loaded as that one.
    let state = engine.state.clone();
    let bytes = snapshot::encode(&state).unwrap();
    let s = st.clone();
    blocking(move || s.save(1, 1_000_000, T0, &bytes))
        .await
        .unwrap();
    let s = st.clone();
    let (found, rejected) = blocking(move || load_newest_valid(s.as_ref(), 1))
        .await
        .unwrap();
    assert_eq!(found.unwrap().0.offset, offsets[1]);
    assert_eq!(rejected[0].info.offset, 1_000_000);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_the_invariants_is_never_loaded() {
    let Some(db) = Db::fresh().await else { return };
    let st = store(&db);
    let mut engine = Engine::new(2);
    engine.reserve_many(3);
    let good = engine.state.clone();
    let bytes = snapshot::encode(&good).unwrap();
    let s = st.clone();
    let good_offset = blocking(move || s.save(2, good.next_offset(), good.clock(), &bytes))
        .await
        .unwrap()
        .offset;
    // A newer snapshot whose body decodes and whose checksums agree, but whose state
    // says more units are held than exist: re-encode the body with a changed product total.
    engine.reserve_many(3);
    let mut bad = snapshot::encode(&engine.state).unwrap();
    let body = &mut bad[9..];
    // Every totalInventory (1000) is the bincode varint 0xfb 0xe8 0x03: make them 1.
    let mut found = 0;
    for i in 0..body.len().saturating_sub(2) {
        if body[i..i + 3] == [0xfb, 0xe8, 0x03] {
            body[i..i + 3].copy_from_slice(&[0xfb, 0x01, 0x00]);
            found += 1;
        }
    }
    assert!(found > 0, "total inventory in the body");
    let crc = snapshot::checksum(&bad[9..]);
    bad[5..9].copy_from_slice(&crc.to_le_bytes());
    assert!(
        matches!(
            snapshot::decode(&bad),
            Err(snapshot::SnapshotError::Invariants(_))
        ),
        "the state breaks an invariant"
    );
    let (o, t) = (engine.state.next_offset(), engine.state.clock());
    let s = st.clone();
    blocking(move || s.save(2, o, t, &bad)).await.unwrap();
    let s = st.clone();
    let (found, rejected) = blocking(move || load_newest_valid(s.as_ref(), 2))
        .await
        .unwrap();
    assert_eq!(found.expect("the good one").0.offset, good_offset);
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].error.contains("invariant"),
        "{}",
        rejected[0].error
    );
    db.drop().await;
}

// ----------------------------------------------------------------------------------------
// projector
// ----------------------------------------------------------------------------------------

/// The log of deployment `events-test` (events topic name / topic id).
const LOG_A: &str = "events-test/AAAAAAAAAAAAAAAAAAAAAA";

/// A partition's events as the engine emits them: configure, reserve, check out.
fn engine_events(
    partition: u16,
    holds: usize,
    checkouts: usize,
) -> (Vec<EventRecord>, Vec<OrderView>) {
    let mut e = Engine::new(partition);
    let mut records = Vec::new();
    let mut orders = Vec::new();
    // The configure record's events are at offset 0.
    let mut e0 = Engine {
        state: State::new(partition),
        offset: 0,
    };
    let (_, ev) = e0.apply(Command::ConfigureSale(sale_config(&["SKU-A", "SKU-B"])));
    records.push(EventRecord {
        partition: u32::from(partition),
        offset: 0,
        log_time: T0,
        events: ev,
    });
    let mut ids = Vec::new();
    // perUserLimit is 2: two holds per user.
    let users = holds.div_ceil(2).max(1);
    for i in 0..holds {
        let off = e.offset;
        let (reply, ev) = e.apply(Command::Reserve {
            user: user(&format!("user{}", i % users)),
            sku: sku("SKU-A"),
            quantity: 1,
        });
        if let Reply::Reserved { reservation, .. } = reply {
            ids.push(reservation.id);
        }
        records.push(EventRecord {
            partition: u32::from(partition),
            offset: off,
            log_time: T0 + off,
            events: ev,
        });
    }
    for id in ids.iter().take(checkouts) {
        let off = e.offset;
        let (reply, ev) = e.apply(Command::Checkout(CheckoutRequest {
            reservation: *id,
            payment_transaction_id: format!("pay-{off}"),
            payment_method: PaymentMethod::Upi,
            shipping_address: "1 Main St".into(),
        }));
        match reply {
            Reply::CheckedOut { order, .. } => orders.push(order),
            other => panic!("checkout refused: {other:?}"),
        }
        records.push(EventRecord {
            partition: u32::from(partition),
            offset: off,
            log_time: T0 + off,
            events: ev,
        });
    }
    (records, orders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_same_batch_twice_writes_each_row_once() {
    let Some(db) = Db::fresh().await else { return };
    let projector = Projector::new(db.pool.clone(), "events-test").with_log_id(LOG_A);
    let (records, orders) = engine_events(0, 6, 4);
    let first = projector
        .apply_at(&records, &[(0, 42)])
        .await
        .expect("apply");
    assert_eq!(first.applied, records.len());
    assert_eq!(first.orders_inserted, 4);
    let again = projector
        .apply_at(&records, &[(0, 42)])
        .await
        .expect("apply again");
    assert_eq!(
        (again.applied, again.skipped, again.orders_inserted),
        (0, records.len(), 0)
    );

    assert_eq!(db.count("SELECT count(*) FROM orders").await, 4);
    assert_eq!(
        db.count("SELECT count(DISTINCT reservation_id) FROM orders")
            .await,
        4
    );
    assert_eq!(db.count("SELECT count(*) FROM reservations").await, 6);
    assert_eq!(
        db.count("SELECT count(*) FROM reservations WHERE status = 'CONFIRMED'")
            .await,
        4
    );
    assert_eq!(
        db.count("SELECT count(*) FROM reservations WHERE status = 'RESERVED'")
            .await,
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM products").await, 2);
    assert_eq!(
        db.count("SELECT held FROM products WHERE sku = 'SKU-A'")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT sold FROM products WHERE sku = 'SKU-A'")
            .await,
        4
    );
    assert_eq!(db.count("SELECT count(*) FROM sales").await, 1);
    let last = records.last().unwrap().offset;
    assert_eq!(
        projector.offsets().await.unwrap().get(&0),
        Some(&(last + 1))
    );
    assert_eq!(projector.positions().await.unwrap().get(&0), Some(&42));

    // Record by record, in two overlapping halves: same result.
    let Some(db2) = Db::fresh().await else { return };
    let p2 = Projector::new(db2.pool.clone(), "events-test");
    let mid = records.len() / 2;
    p2.apply(&records[..mid + 2]).await.unwrap();
    let r = p2.apply(&records[mid..]).await.unwrap();
    assert_eq!(r.skipped, 2);
    for sql in [
        "SELECT count(*) FROM orders",
        "SELECT count(*) FROM reservations WHERE status = 'CONFIRMED'",
        "SELECT sold FROM products WHERE sku = 'SKU-A'",
    ] {
        assert_eq!(db2.count(sql).await, db.count(sql).await, "{sql}");
    }

    // The orders read back as the engine made them, newest first per user.
    let reads = PgOrders::new(db.pool.clone(), "events-test");
    for o in &orders {
        assert_eq!(reads.order(&o.order_id).await.unwrap().as_ref(), Some(o));
    }
    let mut expected: Vec<OrderView> = orders
        .iter()
        .filter(|o| o.user.as_str() == "user0")
        .cloned()
        .collect();
    expected.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.order_id.cmp(&a.order_id))
    });
    assert_eq!(expected.len(), 2, "user0 has two orders");
    assert_eq!(reads.orders_of(&user("user0")).await.unwrap(), expected);
    assert!(reads.orders_of(&user("nobody")).await.unwrap().is_empty());
    let unknown = OrderId {
        partition: 0,
        ulid: 1,
    };
    assert_eq!(reads.order(&unknown).await.unwrap(), None);
    db.drop().await;
    db2.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_offset_changes_nothing() {
    let Some(db) = Db::fresh().await else { return };
    let projector = Projector::new(db.pool.clone(), "events-test");
    let (records, _) = engine_events(5, 3, 2);
    projector.apply(&records).await.unwrap();
    let before = snapshot_rows(&db).await;
    // The same offsets again, now with other content (a buggy or replayed producer):
    // nothing is written, not even partly.
    let mut tampered = records.clone();
    for rec in &mut tampered {
        for ev in &mut rec.events {
            match ev {
                Event::Reservation(v) => v.status = ReservationStatus::Cancelled,
                Event::OrderCreated(o) => o.shipping_address = "elsewhere".into(),
                Event::Inventory { held, .. } => *held = 0,
                _ => {}
            }
        }
    }
    let r = projector.apply(&tampered[1..]).await.unwrap();
    assert_eq!((r.applied, r.skipped), (0, tampered.len() - 1));
    assert_eq!(snapshot_rows(&db).await, before);

    // A newer record wins over the stored state; an older one in the same batch after
    // it does not undo it.
    let e = &records[1];
    let Event::Reservation(view) = e
        .events
        .iter()
        .find(|ev| matches!(ev, Event::Reservation(_)))
        .unwrap()
        .clone()
    else {
        unreachable!()
    };
    let next = records.last().unwrap().offset + 1;
    let mut cancelled = view.clone();
    cancelled.status = ReservationStatus::Cancelled;
    let batch = vec![
        EventRecord {
            partition: 5,
            offset: next,
            log_time: T0 + next,
            events: vec![Event::Reservation(cancelled)],
        },
        EventRecord {
            partition: 5,
            offset: e.offset,
            log_time: e.log_time,
            events: vec![Event::Reservation(view.clone())],
        },
    ];
    let r = projector.apply(&batch).await.unwrap();
    assert_eq!((r.applied, r.skipped), (1, 1));
    let status: String = db
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT status FROM reservations WHERE reservation_id = $1",
            &[&view.id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "CANCELLED");
    db.drop().await;
}

async fn snapshot_rows(db: &Db) -> Vec<String> {
    let c = db.pool.get().await.unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT string_agg(reservation_id || status || log_offset, ',' ORDER BY reservation_id) FROM reservations",
        "SELECT string_agg(order_id || shipping_address, ',' ORDER BY order_id) FROM orders",
        "SELECT string_agg(sku || held || '/' || sold, ',' ORDER BY sku) FROM products",
        "SELECT string_agg(partition || ':' || next_offset, ',' ORDER BY partition) FROM projector_offsets",
    ] {
        out.push(c.query_one(sql, &[]).await.unwrap().get::<_, Option<String>>(0).unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_applying_the_same_events_at_once_write_them_once() {
    let Some(db) = Db::fresh().await else { return };
    let (mut records, _) = engine_events(1, 40, 30);
    let (more, _) = engine_events(2, 40, 30);
    records.extend(more);
    let a = Projector::new(pg::connect(&db.url, 2).unwrap(), "events-test");
    let b = Projector::new(pg::connect(&db.url, 2).unwrap(), "events-test");
    let (ra, rb) = tokio::join!(a.apply(&records), b.apply(&records));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.applied + rb.applied,
        records.len(),
        "every record applied by exactly one of them"
    );
    assert_eq!(ra.orders_inserted + rb.orders_inserted, 60);
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 60);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_drop_and_reconfigure_are_projected_in_log_order() {
    let Some(db) = Db::fresh().await else { return };
    let projector = Projector::new(db.pool.clone(), "events-test");
    let cfg = sale_config(&["SKU-X"]);
    let mut cfg2 = sale_config(&["SKU-X"]);
    cfg2.sale.sale_id = SaleId(8);
    cfg2.products[0].total_inventory = 5;
    let inv = |total, held| Event::Inventory {
        sku: sku("SKU-X"),
        total,
        held,
        sold: 0,
    };
    let batch = vec![
        EventRecord {
            partition: 0,
            offset: 0,
            log_time: T0,
            events: vec![Event::SaleConfigured(cfg.clone()), inv(1000, 0)],
        },
        EventRecord {
            partition: 0,
            offset: 1,
            log_time: T0,
            events: vec![inv(1000, 1)],
        },
        EventRecord {
            partition: 0,
            offset: 2,
            log_time: T0,
            events: vec![Event::SaleDropped {
                sale_id: SaleId(7),
                skus: vec![sku("SKU-X")],
            }],
        },
        EventRecord {
            partition: 0,
            offset: 3,
            log_time: T0,
            events: vec![Event::SaleConfigured(cfg2), inv(5, 0)],
        },
        EventRecord {
            partition: 0,
            offset: 4,
            log_time: T0,
            events: vec![inv(5, 2)],
        },
    ];
    projector.apply(&batch).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM sales").await,
        1,
        "the dropped sale is gone"
    );
    assert_eq!(
        db.count("SELECT total_inventory FROM products WHERE sku = 'SKU-X'")
            .await,
        5
    );
    assert_eq!(
        db.count("SELECT held FROM products WHERE sku = 'SKU-X'")
            .await,
        2
    );
    db.drop().await;
}

/// Issue 28: two deployments (topic prefixes) on one database, with the same SKUs, the
/// same user ids and even the same order ids: every row is kept per log, and each
/// deployment's order reads answer its own rows only, including those of its earlier
/// (recreated) logs; rows of no known log are nobody's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_one_database_keep_their_rows_apart() {
    let Some(db) = Db::fresh().await else { return };
    let a = Projector::new(db.pool.clone(), "shopa.events").with_log_id("shopa.events/A1");
    let b = Projector::new(db.pool.clone(), "shopb.events").with_log_id("shopb.events/B1");
    let (a_records, a_orders) = engine_events(0, 6, 4);
    // B: the same commands, fewer of them, and its own shipping address, so the same
    // order ids carry different rows.
    let (mut b_records, _) = engine_events(0, 4, 2);
    let mut b_orders = Vec::new();
    for rec in &mut b_records {
        for ev in &mut rec.events {
            if let Event::OrderCreated(o) = ev {
                o.shipping_address = "B's street".into();
                b_orders.push(o.clone());
            }
        }
    }
    a.apply_at(&a_records, &[(0, 10)]).await.unwrap();
    b.apply_at(&b_records, &[(0, 7)]).await.unwrap();
    // The same SKU twice: one row per deployment, each with its own counters.
    assert_eq!(
        db.count("SELECT count(*) FROM products WHERE sku = 'SKU-A'")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT sold FROM products WHERE sku = 'SKU-A' AND log_id = 'shopa.events/A1'")
            .await,
        4
    );
    assert_eq!(
        db.count("SELECT sold FROM products WHERE sku = 'SKU-A' AND log_id = 'shopb.events/B1'")
            .await,
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM sales").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM reservations").await, 10);
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 6);
    assert_eq!(a.positions().await.unwrap().get(&0), Some(&10));
    assert_eq!(b.positions().await.unwrap().get(&0), Some(&7));

    let (ra, rb) = (
        PgOrders::new(db.pool.clone(), "shopa.events"),
        PgOrders::new(db.pool.clone(), "shopb.events"),
    );
    for o in &a_orders {
        assert_eq!(ra.order(&o.order_id).await.unwrap().as_ref(), Some(o));
    }
    for o in &b_orders {
        assert_eq!(rb.order(&o.order_id).await.unwrap().as_ref(), Some(o));
        assert_eq!(o.shipping_address, "B's street");
    }
    for u in ["user0", "user1"] {
        let of_a = ra.orders_of(&user(u)).await.unwrap();
        let of_b = rb.orders_of(&user(u)).await.unwrap();
        assert!(!of_a.is_empty() && !of_b.is_empty(), "{u} bought in both");
        assert!(
            of_a.iter().all(|o| o.shipping_address == "1 Main St"),
            "{of_a:?}"
        );
        assert!(
            of_b.iter().all(|o| o.shipping_address == "B's street"),
            "{of_b:?}"
        );
    }
    // user2 bought in A only.
    assert!(!ra.orders_of(&user("user2")).await.unwrap().is_empty());
    assert!(rb.orders_of(&user("user2")).await.unwrap().is_empty());

    // A's topics recreated: a new log of the same deployment. Its orders join A's
    // reads (history); B still sees none of them.
    let a2 = Projector::new(db.pool.clone(), "shopa.events").with_log_id("shopa.events/A2");
    let (a2_records, a2_orders) = engine_events(1, 2, 2);
    let r = a2.apply_at(&a2_records, &[(1, 3)]).await.unwrap();
    assert_eq!(r.skipped, 0, "a new log starts from its own offsets");
    for o in &a2_orders {
        assert_eq!(ra.order(&o.order_id).await.unwrap().as_ref(), Some(o));
        assert_eq!(rb.order(&o.order_id).await.unwrap(), None);
    }
    assert_eq!(
        ra.orders_of(&user("user0")).await.unwrap().len(),
        a_orders
            .iter()
            .chain(&a2_orders)
            .filter(|o| o.user.as_str() == "user0")
            .count()
    );
    // Rows of no known log (projected before log ids existed) are nobody's.
    let unknown = Projector::new(db.pool.clone(), "shopa.events");
    let (c_records, c_orders) = engine_events(2, 2, 1);
    unknown.apply(&c_records).await.unwrap();
    for r in [&ra, &rb] {
        assert_eq!(r.order(&c_orders[0].order_id).await.unwrap(), None);
    }
    db.drop().await;
}
