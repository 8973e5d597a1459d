//! Recovery benchmark (issue 4): one partition holding 1,000,000 live reservations.
//!
//! Measures, side by side for the file store (embedded mode) and the Postgres store
//! (Kafka mode, when Postgres is configured):
//! - the snapshot's size;
//! - encode + write time (what the background writer spends; the apply loop never waits);
//! - time from partition assignment to serving again: list + load the newest snapshot,
//!   decode and check it, then replay 100,000 command records after it (decoded from
//!   their wire bytes and applied through the same `PartitionActor` as the live path).
//!   Target: at most 2 s.
//!
//! Run: `cargo bench -p flashsale-gateway --bench recovery` (Postgres from
//! `FLASHSALE_POSTGRES` or `.services.env`; without it only the file store runs).
//! Env: `RECOVERY_HOLDS` (default 1000000), `RECOVERY_REPLAY` (100000), `RECOVERY_RUNS` (5),
//! `RECOVERY_ORDERS` (0): that many of the holds are checked out before the snapshot
//! (issue 29's soak state: `RECOVERY_HOLDS=1300000 RECOVERY_ORDERS=1000000` is 1M
//! orders + 300k live holds).
//! Replay reads the records from memory: the log's own read cost (embedded file or
//! Kafka fetch) is not in these figures.

use flashsale_core::LogRecord;
use flashsale_engine::actor::{PartitionActor, SnapshotPolicy};
use flashsale_engine::pg::PgSnapshotStore;
use flashsale_engine::store::{load_newest_valid, FileSnapshotStore, SnapshotStore};
use flashsale_engine::{snapshot, State};
use flashsale_proto::*;
use flashsale_runtime::pg;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITION: u16 = 0;
const T0: UnixMs = 1_736_935_200_000;
const SKUS: usize = 10;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sku(i: usize) -> SkuId {
    SkuId::parse(&format!("SKU-{i:02}")).expect("valid sku")
}

fn record(request: u128, command: Command) -> CommandRecord {
    CommandRecord {
        request_id: RequestId(request),
        reply_to: 0,
        idempotency_key: None,
        command,
    }
}

/// A sale of SKUS products with room for every hold; the TTL (1 h) keeps them all live.
fn configure(holds: usize) -> CommandRecord {
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
            total_inventory: (holds * 2 / SKUS) as u64 + 1000,
            per_user_limit: 1,
            image_url: String::new(),
        })
        .collect();
    record(
        1,
        Command::ConfigureSale(SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(42),
                name: "Recovery bench".into(),
                starts_at: T0,
                ends_at: T0 + 24 * 3_600_000,
                reservation_ttl_s: 3600,
                all_skus: skus,
            },
            products,
        }),
    )
}

/// Log records: the configure, then `n` reserves by distinct users, over the SKUs.
fn reserves(from_offset: u64, first_user: usize, n: usize, ms_per_1000: u64) -> Vec<LogRecord> {
    (0..n)
        .map(|i| {
            let u = first_user + i;
            let offset = from_offset + i as u64;
            let cmd = Command::Reserve {
                user: UserId::parse(&format!("user-{u:08}")).expect("valid user"),
                sku: sku(u % SKUS),
                quantity: 1,
            };
            LogRecord {
                offset,
                log_time: T0 + (offset / 1000) * ms_per_1000,
                payload: encode(&record(1_000_000 + u128::from(offset), cmd)),
            }
        })
        .collect()
}

/// The 100,000 records after the snapshot: 80 % new holds, 10 % checkouts and 10 %
/// cancels of holds from before the snapshot.
fn replay_records(state: &State, replay: usize) -> Vec<LogRecord> {
    let start = state.next_offset();
    let live: Vec<ReservationId> = state
        .reservations()
        .take(replay / 5 + 1)
        .map(|r| r.id())
        .collect();
    let mut out = reserves(start, 10_000_000, replay, 1);
    let mut next_live = live.iter();
    for (i, rec) in out.iter_mut().enumerate() {
        let cmd = match i % 10 {
            3 => next_live.next().map(|id| {
                Command::Checkout(CheckoutRequest {
                    reservation: *id,
                    payment_transaction_id: format!("pay-{i}"),
                    payment_method: PaymentMethod::CreditCard,
                    shipping_address: "1 Main St".into(),
                })
            }),
            7 => next_live
                .next()
                .map(|id| Command::Cancel { reservation: *id }),
            _ => None,
        };
        if let Some(cmd) = cmd {
            rec.payload = encode(&record(5_000_000 + i as u128, cmd));
        }
    }
    out
}

/// CPU time of this thread (from /proc, 10 ms resolution): on a machine shared with
/// other work, wall time overstates what recovery costs; this does not.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// Recovery as the engine does it on assignment; returns the actor ready to serve.
fn recover(store: &dyn SnapshotStore, log: &[LogRecord]) -> (PartitionActor, Duration, Duration) {
    let t = Instant::now();
    let (found, rejected) =
        load_newest_valid(store, u32::from(PARTITION)).expect("store reachable");
    assert!(
        rejected.is_empty(),
        "no snapshot refused: {:?}",
        rejected.iter().map(|r| &r.error).collect::<Vec<_>>()
    );
    let (_, state) = found.expect("a snapshot");
    let loaded = t.elapsed();
    let mut actor = PartitionActor::new(
        state,
        SnapshotPolicy {
            every_commands: u64::MAX,
            every_ms: u64::MAX,
            retention_ms: None,
        },
    );
    let from = actor.state().next_offset();
    let skip = log
        .iter()
        .position(|r| r.offset >= from)
        .unwrap_or(log.len());
    for chunk in log[skip..].chunks(1024) {
        actor.apply_batch(chunk);
    }
    (actor, loaded, t.elapsed())
}

struct Stats(Vec<Duration>);
impl Stats {
    fn show(&mut self) -> String {
        self.0.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "min {:>8.1} ms  median {:>8.1} ms  max {:>8.1} ms",
            ms(self.0[0]),
            ms(self.0[self.0.len() / 2]),
            ms(*self.0.last().expect("runs"))
        )
    }
}

fn postgres_url() -> Option<String> {
    if let Some(u) = std::env::var("FLASHSALE_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return Some(u);
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services.env");
    std::fs::read_to_string(file).ok().and_then(|text| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == "FLASHSALE_POSTGRES")
            .map(|(_, v)| v.trim().to_string())
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let holds = env_num("RECOVERY_HOLDS", if quick { 10_000 } else { 1_000_000 });
    let replay = env_num("RECOVERY_REPLAY", if quick { 1_000 } else { 100_000 });
    let runs = env_num("RECOVERY_RUNS", if quick { 1 } else { 5 }).max(1);
    let orders = env_num("RECOVERY_ORDERS", 0).min(holds);

    println!("recovery bench: 1 partition, {holds} reservations ({orders} of them orders) over {SKUS} SKUs, replay {replay} commands, {runs} runs");
    let t = Instant::now();
    let mut actor = PartitionActor::new(State::new(PARTITION), SnapshotPolicy::default());
    let setup = LogRecord {
        offset: 0,
        log_time: T0,
        payload: encode(&configure(holds)),
    };
    actor.apply_batch(std::slice::from_ref(&setup));
    // 1000 holds per ms of log time: 1M holds span 1 s, far inside the 1 h TTL.
    let made = reserves(1, 0, holds, 1);
    for chunk in made.chunks(4096) {
        actor.apply_batch(chunk);
    }
    // Check out the first `orders` holds (in the same millisecond of log time).
    let checkouts: Vec<LogRecord> = made[..orders]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let offset = holds as u64 + 1 + i as u64;
            let cmd = Command::Checkout(CheckoutRequest {
                reservation: ReservationId {
                    partition: PARTITION,
                    ulid: 1_000_000 + u128::from(r.offset),
                },
                payment_transaction_id: format!("pay_{i:020}"),
                payment_method: PaymentMethod::CreditCard,
                shipping_address: "221B Baker Street, London NW1 6XE".into(),
            });
            LogRecord {
                offset,
                log_time: made.last().map_or(T0, |l| l.log_time),
                payload: encode(&record(50_000_000 + i as u128, cmd)),
            }
        })
        .collect();
    drop(made);
    for chunk in checkouts.chunks(4096) {
        actor.apply_batch(chunk);
    }
    drop(checkouts);
    let state = actor.snapshot_now();
    assert_eq!(
        state.live_reservations(),
        (holds - orders) as u64,
        "every hold not checked out is live"
    );
    println!("built the state in {:.1} s", t.elapsed().as_secs_f64());
    let log = replay_records(&state, replay);

    // Encode (what the writer does first, from its copy of the state).
    let mut enc = Stats(Vec::new());
    let mut bytes = Vec::new();
    for _ in 0..runs.min(3) {
        let t = Instant::now();
        bytes = snapshot::encode(&state).expect("encodes");
        enc.0.push(t.elapsed());
    }
    println!(
        "snapshot size          {:>10.1} MiB ({} bytes, {:.1} bytes per hold)",
        bytes.len() as f64 / 1048576.0,
        bytes.len(),
        bytes.len() as f64 / holds as f64
    );
    println!("encode                 {}", enc.show());
    // Where decode time goes: the body's CRC, bincode, and the invariant check.
    let (mut crc, mut check, mut dec) = (Stats(Vec::new()), Stats(Vec::new()), Stats(Vec::new()));
    for _ in 0..runs.min(3) {
        let t = Instant::now();
        std::hint::black_box(snapshot::checksum(&bytes[9..]));
        crc.0.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(flashsale_engine::check_state(&state));
        check.0.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(snapshot::decode(&bytes).expect("decodes"));
        dec.0.push(t.elapsed());
    }
    println!("  of which crc32       {}", crc.show());
    println!("  invariant check      {}", check.show());
    println!("decode (crc+bincode+check) {}", dec.show());

    let dir = tempfile::tempdir().expect("temp dir");
    let file_store = FileSnapshotStore::new(dir.path().join("snapshots"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = postgres_url().map(|url| {
        let schema = format!("bench_recovery_{}", std::process::id());
        let admin = runtime
            .block_on(async { pg::connect(&url, 1) })
            .expect("valid URL");
        runtime.block_on(async {
            let c = admin
                .get()
                .await
                .expect("Postgres reachable (make services-up)");
            c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .expect("schema");
        });
        let sep = if url.contains('?') { '&' } else { '?' };
        let pool = runtime
            .block_on(async {
                pg::connect(&format!("{url}{sep}options=-c%20search_path%3D{schema}"), 2)
            })
            .expect("valid URL");
        runtime.block_on(pg::migrate(&pool)).expect("migrate");
        (
            PgSnapshotStore::with_runtime(pool, runtime.handle().clone()),
            admin,
            schema,
        )
    });
    if pg.is_none() {
        println!(
            "(Postgres not configured: FLASHSALE_POSTGRES or make services-up; file store only)"
        );
    }

    let mut stores: Vec<(&str, Arc<dyn SnapshotStore>)> = vec![("file", Arc::new(file_store))];
    if let Some((s, _, _)) = &pg {
        stores.push(("postgres", Arc::new(s.clone())));
    }
    for (name, store) in &stores {
        let mut write = Stats(Vec::new());
        let mut enc_write = Stats(Vec::new());
        for i in 0..runs.min(3) {
            let t = Instant::now();
            let b = snapshot::encode(&state).expect("encodes");
            let te = Instant::now();
            store
                .save(
                    u32::from(PARTITION),
                    state.next_offset(),
                    state.clock() + i as u64,
                    &b,
                )
                .expect("save");
            write.0.push(te.elapsed());
            enc_write.0.push(t.elapsed());
            store.prune(u32::from(PARTITION), 1).expect("prune");
        }
        println!("[{name:<8}] write        {}", write.show());
        println!("[{name:<8}] encode+write {}", enc_write.show());
        let mut read = Stats(Vec::new());
        let info = store.list(u32::from(PARTITION)).expect("list")[0].clone();
        for _ in 0..runs.min(3) {
            let t = Instant::now();
            std::hint::black_box(store.load(&info).expect("load"));
            read.0.push(t.elapsed());
        }
        println!("[{name:<8}] read bytes   {}", read.show());
        let mut load = Stats(Vec::new());
        let mut total = Stats(Vec::new());
        let mut cpu = Stats(Vec::new());
        for _ in 0..runs {
            let c = thread_cpu();
            let (actor, loaded, serving) = recover(store.as_ref(), &log);
            cpu.0.push(thread_cpu().saturating_sub(c));
            assert_eq!(
                actor.state().next_offset(),
                log.last().map_or(state.next_offset(), |r| r.offset + 1)
            );
            load.0.push(loaded);
            total.0.push(serving);
        }
        println!("[{name:<8}] load+decode  {}", load.show());
        println!(
            "[{name:<8}] assignment → serving (load + replay {replay}) {}",
            total.show()
        );
        println!(
            "[{name:<8}]   of which CPU time in this process     {}",
            cpu.show()
        );
    }
    if let Some((_, admin, schema)) = pg {
        runtime.block_on(async {
            if let Ok(c) = admin.get().await {
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
            }
        });
    }
}
