//! Decisions per second of the pure core on one core: reserve on one hot SKU
//! (accepted, and rejected once sold out), reserve spread over 100 SKUs, checkout, and
//! expiry by tick. Run: `cargo bench -p flashsale-engine --bench core`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashsale_core::State;
use flashsale_proto::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

const T0: u64 = 1_735_725_600_000;

fn sale(skus: &[SkuId], inventory: u64) -> CommandRecord {
    let products = skus
        .iter()
        .map(|s| ProductSpec {
            sku: s.clone(),
            name: "bench".into(),
            description: String::new(),
            category: String::new(),
            base_price: Cents(1000),
            flash_sale_price: Cents(900),
            total_inventory: inventory,
            per_user_limit: 1,
            image_url: String::new(),
        })
        .collect();
    CommandRecord {
        request_id: RequestId(1),
        reply_to: 0,
        idempotency_key: None,
        command: Command::ConfigureSale(SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(1),
                name: "bench".into(),
                starts_at: T0,
                ends_at: T0 + 86_400_000,
                reservation_ttl_s: 120,
                all_skus: skus.to_vec(),
            },
            products,
        }),
    }
}

fn reserves(skus: &[SkuId], n: u64, first_user: u64) -> Vec<CommandRecord> {
    (0..n)
        .map(|i| CommandRecord {
            request_id: RequestId(u128::from(first_user + i) + 1_000),
            reply_to: 0,
            idempotency_key: None,
            command: Command::Reserve {
                user: UserId::parse(&format!("user{}", first_user + i)).unwrap(),
                sku: skus[(i as usize) % skus.len()].clone(),
                quantity: 1,
            },
        })
        .collect()
}

/// Applies `cmds` to `state` (starting at `offset`) and returns the time taken.
fn run(state: &mut State, offset: &mut u64, time: u64, cmds: &[CommandRecord]) -> Duration {
    let mut events = Vec::with_capacity(8);
    let t = Instant::now();
    for c in cmds {
        events.clear();
        black_box(state.apply(*offset, time, c, &mut events));
        *offset += 1;
    }
    t.elapsed()
}

fn setup(skus: &[SkuId], inventory: u64) -> (State, u64) {
    let mut s = State::new(0);
    let mut ev = Vec::new();
    s.apply(0, T0, &sale(skus, inventory), &mut ev);
    (s, 1)
}

fn bench(c: &mut Criterion) {
    let hot = vec![SkuId::parse("HOT-SKU").unwrap()];
    let many: Vec<SkuId> = (0..100)
        .map(|i| SkuId::parse(&format!("SKU-{i}")).unwrap())
        .collect();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));

    // Accepted holds, in partitions of at most 100,000 holds (100 SKUs x 1,000 units:
    // a large flash sale); a fresh partition per chunk, set-up not timed.
    for (name, skus) in [
        ("reserve_accepted/hot_sku", &hot),
        ("reserve_accepted/100_skus", &many),
    ] {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(100_000);
                    let (mut s, mut off) = setup(skus, u64::MAX / 4);
                    let cmds = reserves(skus, n, 0);
                    total += run(&mut s, &mut off, T0 + 1, &cmds);
                    left -= n;
                }
                total
            })
        });
    }
    // A sold-out hot SKU: what a flash crowd mostly gets.
    g.bench_function(
        BenchmarkId::from_parameter("reserve_out_of_stock/hot_sku"),
        |b| {
            b.iter_custom(|iters| {
                let (mut s, mut off) = setup(&hot, 1000);
                run(&mut s, &mut off, T0 + 1, &reserves(&hot, 1000, 0));
                let cmds = reserves(&hot, iters, 1_000_000);
                run(&mut s, &mut off, T0 + 2, &cmds)
            })
        },
    );
    g.bench_function(BenchmarkId::from_parameter("checkout"), |b| {
        b.iter_custom(|iters| {
            let (mut s, mut off) = setup(&many, u64::MAX / 4);
            let holds = reserves(&many, iters, 0);
            run(&mut s, &mut off, T0 + 1, &holds);
            let cmds: Vec<CommandRecord> = holds
                .iter()
                .enumerate()
                .map(|(i, h)| CommandRecord {
                    request_id: RequestId(10_000_000_000 + i as u128),
                    reply_to: 0,
                    idempotency_key: None,
                    command: Command::Checkout(CheckoutRequest {
                        reservation: ReservationId {
                            partition: 0,
                            ulid: h.request_id.0,
                        },
                        payment_transaction_id: format!("pay-{i}"),
                        payment_method: PaymentMethod::Upi,
                        shipping_address: "1 Bench St".into(),
                    }),
                })
                .collect();
            run(&mut s, &mut off, T0 + 2, &cmds)
        })
    });
    // Expiry: one tick past the TTL releases `iters` holds.
    g.bench_function(BenchmarkId::from_parameter("expire_by_tick"), |b| {
        b.iter_custom(|iters| {
            let (mut s, mut off) = setup(&many, u64::MAX / 4);
            run(&mut s, &mut off, T0 + 1, &reserves(&many, iters, 0));
            let tick = CommandRecord {
                request_id: RequestId(0),
                reply_to: NO_REPLY,
                idempotency_key: None,
                command: Command::Tick,
            };
            run(&mut s, &mut off, T0 + 200_000, std::slice::from_ref(&tick))
        })
    });
    g.finish();

    // A flash crowd: 100 SKUs of 1,000 units and 1,000,000 distinct buyers, one
    // attempt each; the first 100,000 get a hold, the rest are told Out of Stock.
    // Elements = decisions; one iteration is the whole crowd.
    let mut g = c.benchmark_group("core");
    let crowd = reserves(&many, 1_000_000, 0);
    g.throughput(Throughput::Elements(crowd.len() as u64));
    g.sample_size(10);
    g.bench_function(
        BenchmarkId::from_parameter("flash_crowd/100_skus_1m_buyers"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (mut s, mut off) = setup(&many, 1000);
                    total += run(&mut s, &mut off, T0 + 1, &crowd);
                }
                total
            })
        },
    );
    // The hot SKU of a flash sale: 1,000 units, 100,000 buyers (1 % accepted).
    let hot_crowd = reserves(&hot, 100_000, 0);
    g.throughput(Throughput::Elements(hot_crowd.len() as u64));
    g.bench_function(
        BenchmarkId::from_parameter("flash_crowd/hot_sku_1k_units_100k_buyers"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (mut s, mut off) = setup(&hot, 1000);
                    total += run(&mut s, &mut off, T0 + 1, &hot_crowd);
                }
                total
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
