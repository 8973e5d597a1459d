//! `baseline-postgres`: the seed's design, for side-by-side numbers.
//!
//! Stock lives in one PostgreSQL row per SKU. A reservation is one transaction on a
//! pooled connection (50 by default, as the seed's Hikari pool): count the units against
//! the user's limit through the `(user_id, sku)` unique key (`hold.sql`), record the
//! reservation (`record.sql`), then the conditional decrement
//! `UPDATE … SET available = available - q WHERE sku = $1 AND available >= q`
//! (`take.sql`), last, so the hot row stays locked for a single round trip before COMMIT.
//! As in the seed, reads are cache-first: product data is cached in process and the
//! availability figure is at most `--read-cache-ms` old (docs/api.md allows 100 ms), and a SKU
//! the cache already shows as sold out is refused without a transaction (the seed's
//! "check stock availability (cache)" step; `--no-stock-precheck` turns that off).
//!
//! Not implemented: checkout, cancel, expiry (the harness's sales outlast its runs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use flashsale_bench::baseline::{
    router, serve, Decision, Granted, Product, Sale, Store, StoreError,
};
use flashsale_bench::contract::ReserveRequest;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

const SCHEMA_SQL: &str = include_str!("postgres/schema.sql");
const DROP_SQL: &str = include_str!("postgres/drop.sql");
const HOLD_SQL: &str = include_str!("postgres/hold.sql");
const HELD_SQL: &str = include_str!("postgres/held.sql");
const RECORD_SQL: &str = include_str!("postgres/record.sql");
const TAKE_SQL: &str = include_str!("postgres/take.sql");
const PRODUCT_SQL: &str = include_str!("postgres/product.sql");
const SALE_SQL: &str = include_str!("postgres/sale.sql");
const SALE_PRODUCTS_SQL: &str = include_str!("postgres/sale_products.sql");
const INSERT_SALE_SQL: &str = include_str!("postgres/insert_sale.sql");
const INSERT_PRODUCT_SQL: &str = include_str!("postgres/insert_product.sql");

/// PostgreSQL baseline server (the seed's design) with flashsale's HTTP contract.
///
/// Example: baseline-postgres --listen 127.0.0.1:18082
///   --postgres postgres://postgres@127.0.0.1:15432/flashsale --admin-token secret
#[derive(Debug, Parser)]
#[command(name = "baseline-postgres", version)]
struct Config {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "FLASHSALE_BASELINE_LISTEN",
        default_value = "127.0.0.1:18082"
    )]
    listen: SocketAddr,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "FLASHSALE_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:15432/flashsale"
    )]
    postgres: String,
    /// Bearer token of the admin API.
    #[arg(
        long,
        env = "FLASHSALE_BASELINE_ADMIN_TOKEN",
        default_value = "bench-admin-token",
        hide_env_values = true
    )]
    admin_token: String,
    /// Connections in the pool.
    #[arg(long, env = "FLASHSALE_BASELINE_POOL_SIZE", default_value_t = 50)]
    pool_size: usize,
    /// Longest age of a cached availability figure, ms; 0 reads the row every time.
    #[arg(long, env = "FLASHSALE_BASELINE_READ_CACHE_MS", default_value_t = 100)]
    read_cache_ms: u64,
    /// Refuse reservations without a transaction when the cache shows the SKU sold out.
    #[arg(long, env = "FLASHSALE_BASELINE_NO_STOCK_PRECHECK")]
    no_stock_precheck: bool,
    /// Keep the `bench_baseline` schema's data from an earlier start (default: drop it).
    #[arg(long, env = "FLASHSALE_BASELINE_KEEP_DATA")]
    keep_data: bool,
    /// Runtime worker threads; 0 = one per core.
    #[arg(long, env = "FLASHSALE_BASELINE_THREADS", default_value_t = 0)]
    threads: usize,
}

#[derive(Debug, Clone)]
struct Cached {
    product: Product,
    at: Instant,
}

struct PgStore {
    pool: Pool,
    cache: Mutex<HashMap<String, Cached>>,
    read_cache: Duration,
    precheck: bool,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn product_of(r: &Row) -> Product {
    Product {
        sku_id: r.get(0),
        sale_id: r.get(1),
        name: r.get(2),
        description: r.get(3),
        category: r.get(4),
        base_price_cents: r.get(5),
        flash_price_cents: r.get(6),
        total: r.get(7),
        available: r.get(8),
        sold: r.get(9),
        per_user_limit: r.get::<_, i32>(10) as u32,
        image_url: r.get(11),
        starts_at: r.get(12),
        ends_at: r.get(13),
    }
}

impl PgStore {
    fn cached(&self, sku: &str) -> Option<Cached> {
        self.cache.lock().expect("cache lock").get(sku).cloned()
    }

    fn remember(&self, product: Product) {
        self.cache.lock().expect("cache lock").insert(
            product.sku_id.clone(),
            Cached {
                product,
                at: Instant::now(),
            },
        );
    }

    /// Notes an availability figure seen inside a transaction (stock only falls here).
    fn note_available(&self, sku: &str, available: i64) {
        if let Some(c) = self.cache.lock().expect("cache lock").get_mut(sku) {
            c.product.available = c.product.available.min(available);
        }
    }

    async fn load(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        let client = self.pool.get().await.map_err(backend)?;
        let stmt = client.prepare_cached(PRODUCT_SQL).await.map_err(backend)?;
        let row = client.query_opt(&stmt, &[&sku]).await.map_err(backend)?;
        let p = row.as_ref().map(product_of);
        if let Some(p) = &p {
            self.remember(p.clone());
        }
        Ok(p)
    }

    /// Product data for a decision: name, limit and window never change after creation,
    /// so any cached copy will do.
    async fn static_product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        match self.cached(sku) {
            Some(c) => Ok(Some(c.product)),
            None => self.load(sku).await,
        }
    }
}

impl Store for PgStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let ins_sale = tx.prepare_cached(INSERT_SALE_SQL).await.map_err(backend)?;
        let ins_product = tx
            .prepare_cached(INSERT_PRODUCT_SQL)
            .await
            .map_err(backend)?;
        tx.execute(
            &ins_sale,
            &[
                &sale.sale_id,
                &sale.name,
                &sale.starts_at,
                &sale.ends_at,
                &(sale.ttl_secs as i32),
            ],
        )
        .await
        .map_err(backend)?;
        for (i, p) in sale.products.iter().enumerate() {
            let n = tx
                .execute(
                    &ins_product,
                    &[
                        &p.sku_id,
                        &sale.sale_id,
                        &(i as i32),
                        &p.name,
                        &p.description,
                        &p.category,
                        &p.base_price_cents,
                        &p.flash_price_cents,
                        &p.total,
                        &(p.per_user_limit as i32),
                        &p.image_url,
                        &p.starts_at,
                        &p.ends_at,
                    ],
                )
                .await
                .map_err(backend)?;
            if n == 0 {
                // ON CONFLICT DO NOTHING: the SKU is another sale's. Dropping `tx` rolls back.
                return Err(StoreError::Conflict(p.sku_id.clone()));
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn reserve(
        &self,
        req: &ReserveRequest,
        reservation_id: String,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let Some(p) = self.static_product(&req.sku_id).await? else {
            return Ok(Decision::UnknownProduct);
        };
        if !p.is_active(now) {
            return Ok(Decision::NotActive {
                starts_at: p.starts_at,
                ends_at: p.ends_at,
            });
        }
        let q = i64::from(req.quantity);
        if self.precheck {
            if let Some(c) = self.cached(&req.sku_id) {
                // Stock only falls in this baseline (no cancel, no expiry), so a cached
                // figure can be stale only on the high side: refusing on it is safe.
                if c.product.available < q {
                    return Ok(Decision::OutOfStock {
                        available: c.product.available,
                    });
                }
            }
        }
        let limit = i64::from(p.per_user_limit);
        let expires_at = now + chrono::Duration::seconds(3600);
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let hold = tx.prepare_cached(HOLD_SQL).await.map_err(backend)?;
        if tx
            .query_opt(&hold, &[&req.user_id, &req.sku_id, &q, &limit])
            .await
            .map_err(backend)?
            .is_none()
        {
            let held_stmt = tx.prepare_cached(HELD_SQL).await.map_err(backend)?;
            let held = tx
                .query_opt(&held_stmt, &[&req.user_id, &req.sku_id])
                .await
                .map_err(backend)?
                .map_or(0, |r| r.get::<_, i64>(0));
            tx.rollback().await.map_err(backend)?;
            return Ok(Decision::LimitExceeded {
                limit: p.per_user_limit,
                held,
            });
        }
        let record = tx.prepare_cached(RECORD_SQL).await.map_err(backend)?;
        tx.execute(
            &record,
            &[
                &reservation_id,
                &req.user_id,
                &req.sku_id,
                &(req.quantity as i32),
                &now,
                &expires_at,
            ],
        )
        .await
        .map_err(backend)?;
        let take = tx.prepare_cached(TAKE_SQL).await.map_err(backend)?;
        match tx.query_opt(&take, &[&req.sku_id, &q]).await {
            Ok(Some(row)) => {
                let available: i64 = row.get(0);
                tx.commit().await.map_err(backend)?;
                self.note_available(&req.sku_id, available);
                Ok(Decision::Reserved(Granted {
                    reservation_id,
                    user_id: req.user_id.clone(),
                    sku_id: req.sku_id.clone(),
                    quantity: req.quantity,
                    created_at: now,
                    expires_at,
                }))
            }
            Ok(None) => {
                tx.rollback().await.map_err(backend)?;
                drop(client);
                let available = self.load(&req.sku_id).await?.map_or(0, |p| p.available);
                Ok(Decision::OutOfStock { available })
            }
            Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                // Cannot happen with the WHERE clause; the CHECK is the last line of defence.
                Err(backend(e))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn product(&self, sku_id: &str) -> Result<Option<Product>, StoreError> {
        match self.cached(sku_id) {
            Some(c) if c.at.elapsed() <= self.read_cache => Ok(Some(c.product)),
            _ => self.load(sku_id).await,
        }
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<Sale>, StoreError> {
        let client = self.pool.get().await.map_err(backend)?;
        let sale_stmt = client.prepare_cached(SALE_SQL).await.map_err(backend)?;
        let Some(s) = client
            .query_opt(&sale_stmt, &[&sale_id])
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let products_stmt = client
            .prepare_cached(SALE_PRODUCTS_SQL)
            .await
            .map_err(backend)?;
        let products = client
            .query(&products_stmt, &[&sale_id])
            .await
            .map_err(backend)?
            .iter()
            .map(product_of)
            .collect();
        Ok(Some(Sale {
            sale_id: s.get(0),
            name: s.get(1),
            starts_at: s.get(2),
            ends_at: s.get(3),
            ttl_secs: s.get::<_, i32>(4) as u32,
            products,
        }))
    }
}

async fn connect(cfg: &Config) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = cfg.postgres.parse()?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(cfg.pool_size.max(1))
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?;
    let client = pool.get().await?;
    if !cfg.keep_data {
        client.batch_execute(DROP_SQL).await?;
    }
    client.batch_execute(SCHEMA_SQL).await?;
    Ok(pool)
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let pool = connect(&cfg).await?;
    let store = PgStore {
        pool,
        cache: Mutex::new(HashMap::new()),
        read_cache: Duration::from_millis(cfg.read_cache_ms),
        precheck: !cfg.no_stock_precheck,
    };
    serve(
        cfg.listen,
        router(store, &cfg.admin_token),
        "baseline-postgres",
    )
    .await
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.threads > 0 {
        rt.worker_threads(cfg.threads);
    }
    rt.enable_all().build()?.block_on(run(cfg))
}
