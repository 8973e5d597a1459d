//! `baseline-redis`: stock in Redis, decided by one Lua script per reservation.
//!
//! The design people reach for when the database row is the bottleneck: each SKU is a
//! Redis hash, and `reserve.lua` (run with EVALSHA; Redis runs a script alone, so it is
//! atomic) checks the sale window and the user's limit, decrements the stock and records
//! the reservation in one round trip. The connection is a `redis` `ConnectionManager`: one
//! multiplexed, pipelined connection that reconnects by itself. Reads are one `HMGET`.
//! Keys of a SKU share its hash tag (`fsb:{SKU}:…`), so the script would also run on a
//! cluster.
//!
//! Not implemented: checkout, cancel, expiry (the harness's sales outlast its runs).

use std::collections::HashMap;
use std::net::SocketAddr;

use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use flashsale_bench::baseline::{
    router, serve, Decision, Granted, Product, Sale, Store, StoreError,
};
use flashsale_bench::contract::ReserveRequest;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde_json::json;

/// Redis baseline server (one Lua script per reservation) with flashsale's HTTP contract.
///
/// Example: baseline-redis --listen 127.0.0.1:18083 --redis redis://127.0.0.1:16379/
///   --admin-token secret
#[derive(Debug, Parser)]
#[command(name = "baseline-redis", version)]
struct Config {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "FLASHSALE_BASELINE_LISTEN",
        default_value = "127.0.0.1:18083"
    )]
    listen: SocketAddr,
    /// Redis URL (ops/redis/start.sh prints it).
    #[arg(
        long,
        env = "FLASHSALE_REDIS",
        default_value = "redis://127.0.0.1:16379/"
    )]
    redis: String,
    /// Bearer token of the admin API.
    #[arg(
        long,
        env = "FLASHSALE_BASELINE_ADMIN_TOKEN",
        default_value = "bench-admin-token",
        hide_env_values = true
    )]
    admin_token: String,
    /// Runtime worker threads; 0 = one per core.
    #[arg(long, env = "FLASHSALE_BASELINE_THREADS", default_value_t = 0)]
    threads: usize,
}

const FIELDS: [&str; 13] = [
    "sale",
    "name",
    "description",
    "category",
    "base",
    "flash",
    "total",
    "available",
    "sold",
    "limit",
    "image",
    "starts_ms",
    "ends_ms",
];

fn product_key(sku: &str) -> String {
    format!("fsb:{{{sku}}}:p")
}

fn holdings_key(sku: &str) -> String {
    format!("fsb:{{{sku}}}:u")
}

fn reservation_key(sku: &str, id: &str) -> String {
    format!("fsb:{{{sku}}}:r:{id}")
}

fn sale_key(id: &str) -> String {
    format!("fsb:sale:{id}")
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

struct RedisStore {
    conn: ConnectionManager,
    reserve: Script,
    create: Script,
}

impl RedisStore {
    fn product_of(sku: &str, v: &[Option<String>]) -> Result<Option<Product>, StoreError> {
        let Some(Some(sale_id)) = v.first() else {
            return Ok(None);
        };
        let s = |i: usize| v.get(i).cloned().flatten().unwrap_or_default();
        let n = |i: usize| -> Result<i64, StoreError> {
            s(i).parse::<i64>()
                .map_err(|e| backend(format!("{sku} field {}: {e}", FIELDS[i])))
        };
        Ok(Some(Product {
            sku_id: sku.to_string(),
            sale_id: sale_id.clone(),
            name: s(1),
            description: s(2),
            category: s(3),
            base_price_cents: n(4)?,
            flash_price_cents: n(5)?,
            total: n(6)?,
            available: n(7)?,
            sold: n(8)?,
            per_user_limit: n(9)? as u32,
            image_url: s(10),
            starts_at: from_ms(n(11)?),
            ends_at: from_ms(n(12)?),
        }))
    }
}

impl Store for RedisStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let mut inv = self.create.prepare_invoke();
        for p in &sale.products {
            inv.key(product_key(&p.sku_id));
        }
        inv.key(sale_key(&sale.sale_id));
        // Every value travels as a string: Lua's number formatting would mangle large ids.
        for p in &sale.products {
            inv.arg(
                json!({
                    "sale": sale.sale_id, "name": p.name, "description": p.description,
                    "category": p.category, "base": p.base_price_cents.to_string(),
                    "flash": p.flash_price_cents.to_string(), "total": p.total.to_string(),
                    "available": p.total.to_string(), "sold": "0", "reserved": "0",
                    "limit": p.per_user_limit.to_string(), "image": p.image_url,
                    "starts_ms": ms(p.starts_at).to_string(), "ends_ms": ms(p.ends_at).to_string(),
                })
                .to_string(),
            );
        }
        let skus: Vec<&str> = sale.products.iter().map(|p| p.sku_id.as_str()).collect();
        inv.arg(
            json!({
                "name": sale.name, "starts_ms": ms(sale.starts_at).to_string(),
                "ends_ms": ms(sale.ends_at).to_string(), "ttl": sale.ttl_secs.to_string(),
                "skus": skus.join(","),
            })
            .to_string(),
        );
        let mut conn = self.conn.clone();
        let r: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
        match r {
            0 => Ok(()),
            i => Err(StoreError::Conflict(
                skus.get(i as usize - 1)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )),
        }
    }

    async fn reserve(
        &self,
        req: &ReserveRequest,
        reservation_id: String,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let expires_at = now + chrono::Duration::seconds(3600);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = self
            .reserve
            .key(product_key(&req.sku_id))
            .key(holdings_key(&req.sku_id))
            .key(reservation_key(&req.sku_id, &reservation_id))
            .arg(&req.user_id)
            .arg(req.quantity)
            .arg(ms(now))
            .arg(ms(expires_at))
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0);
        Ok(match at(0) {
            0 => Decision::UnknownProduct,
            1 => Decision::NotActive {
                starts_at: from_ms(at(1)),
                ends_at: from_ms(at(2)),
            },
            2 => Decision::LimitExceeded {
                limit: at(1) as u32,
                held: at(2),
            },
            3 => Decision::OutOfStock { available: at(1) },
            4 => Decision::Reserved(Granted {
                reservation_id,
                user_id: req.user_id.clone(),
                sku_id: req.sku_id.clone(),
                quantity: req.quantity,
                created_at: now,
                expires_at,
            }),
            c => return Err(backend(format!("reserve.lua returned code {c}"))),
        })
    }

    async fn product(&self, sku_id: &str) -> Result<Option<Product>, StoreError> {
        let mut conn = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(product_key(sku_id))
            .arg(&FIELDS[..])
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Self::product_of(sku_id, &v)
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<Sale>, StoreError> {
        let mut conn = self.conn.clone();
        let s: HashMap<String, String> = conn.hgetall(sale_key(sale_id)).await.map_err(backend)?;
        if s.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| s.get(k).cloned().unwrap_or_default();
        let num = |k: &str| get(k).parse::<i64>().unwrap_or(0);
        let skus: Vec<String> = get("skus")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        let mut pipe = redis::pipe();
        for sku in &skus {
            pipe.cmd("HMGET").arg(product_key(sku)).arg(&FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await.map_err(backend)?;
        let mut products = Vec::with_capacity(skus.len());
        for (sku, row) in skus.iter().zip(rows) {
            if let Some(p) = Self::product_of(sku, &row)? {
                products.push(p);
            }
        }
        Ok(Some(Sale {
            sale_id: sale_id.to_string(),
            name: get("name"),
            starts_at: from_ms(num("starts_ms")),
            ends_at: from_ms(num("ends_ms")),
            ttl_secs: num("ttl") as u32,
            products,
        }))
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = redis::Client::open(cfg.redis.as_str())?;
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ConnectionManager::new(client),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer from {} within 10 s", cfg.redis))??;
    let store = RedisStore {
        conn,
        reserve: Script::new(include_str!("redis/reserve.lua")),
        create: Script::new(include_str!("redis/create_sale.lua")),
    };
    serve(
        cfg.listen,
        router(store, &cfg.admin_token),
        "baseline-redis",
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
