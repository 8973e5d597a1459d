//! [`Projector`]: engine events → `sales`, `products`, `reservations`, `orders`,
//! exactly once.
//!
//! Each call to [`Projector::apply_at`] is one transaction that
//! 1. locks the `projector_offsets` row of every command partition in the batch and
//!    reads the next offset not yet projected;
//! 2. skips every record below it (a re-delivery, or the same events written twice by
//!    two engines during a rebalance: the state after a log prefix is a pure function
//!    of it, so equal offsets carry equal events);
//! 3. writes the rest with idempotent upserts, a few set-based statements per batch
//!    (never a round trip per event), where an older state never overwrites a newer one;
//! 4. stores the new offsets, and the events topic's read positions, in the same
//!    transaction.
//!
//! So a batch is wholly applied and recorded, or not at all, and applying it again
//! changes nothing. The Kafka loop around it is in `follow.rs` ([`run_projector`]);
//! `flashsale projector` and `flashsale migrate` are in `cli.rs`.

pub mod cli;
mod follow;

pub use follow::run_projector;

use flashsale_proto::{
    Event, EventRecord, OrderView, ReservationId, ReservationView, SaleConfig, SaleId, SkuId,
};
use flashsale_runtime::pg::{ms_to_time, to_i32, to_i64, PgError, Pool};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The default name of the events topic.
pub const DEFAULT_EVENTS_TOPIC: &str = "flashsale.events";

/// What [`run_projector`](run_projector) needs besides the pool.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub kafka_bootstrap: String,
    /// The topic the engines write events to (default `flashsale.events`).
    pub events_topic: String,
    /// Most event records applied in one transaction.
    pub max_batch: usize,
    /// Where to count what was projected (`flashsale projector --metrics-listen`).
    pub metrics: Option<std::sync::Arc<flashsale_runtime::metrics::Metrics>>,
    /// The commands topic whose offsets the events carry (default: the events topic's
    /// name with `events` replaced by `commands`). Watched with the events topic: a
    /// recreated one is a new log.
    pub commands_topic: Option<String>,
    /// Follow recreated topics from their start by itself (`--adopt-new-topics`)
    /// rather than wait for the operator.
    pub adopt_new_topics: bool,
}

impl ProjectorConfig {
    pub fn new(kafka_bootstrap: impl Into<String>, events_topic: impl Into<String>) -> Self {
        ProjectorConfig {
            kafka_bootstrap: kafka_bootstrap.into(),
            events_topic: events_topic.into(),
            max_batch: 5000,
            metrics: None,
            commands_topic: None,
            adopt_new_topics: false,
        }
    }

    /// The commands topic watched beside the events topic.
    pub fn commands_topic(&self) -> String {
        self.commands_topic.clone().unwrap_or_else(|| {
            match self.events_topic.strip_suffix("events") {
                Some(prefix) => format!("{prefix}commands"),
                None => format!("{}.commands", self.events_topic),
            }
        })
    }
}

/// What one [`Projector::apply_at`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Records applied now.
    pub applied: usize,
    /// Records at offsets already projected (skipped).
    pub skipped: usize,
    /// Orders inserted now (a copy of an existing one is not counted).
    pub orders_inserted: u64,
}

/// Writes engine events to Postgres, exactly once. Cheap to clone.
#[derive(Clone)]
pub struct Projector {
    pool: Pool,
    topic: String,
    /// The log whose offsets and positions these are (`name/topic-id` of the events
    /// topic, see `flashsale_runtime::kafka_id`); `''` without Kafka.
    log_id: String,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("topic", &self.topic)
            .field("log_id", &self.log_id)
            .finish()
    }
}

impl Projector {
    /// A projector whose read positions are stored under `events_topic`.
    pub fn new(pool: Pool, events_topic: impl Into<String>) -> Self {
        Projector {
            pool,
            topic: events_topic.into(),
            log_id: String::new(),
        }
    }

    /// Offsets and read positions of this log only: a projector of another deployment
    /// sharing the database, or of a topic since recreated, starts from its own (see
    /// migration 0002).
    pub fn with_log_id(mut self, log_id: impl Into<String>) -> Self {
        self.log_id = log_id.into();
        self
    }

    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// [`Projector::apply_at`] without read positions (embedded callers and tests).
    pub async fn apply(&self, batch: &[EventRecord]) -> Result<ApplyReport, PgError> {
        self.apply_at(batch, &[]).await
    }

    /// Applies `batch` (in order) and stores `positions` — (events topic partition,
    /// next Kafka offset to read) — in one transaction. See the module docs.
    pub async fn apply_at(
        &self,
        batch: &[EventRecord],
        positions: &[(i32, i64)],
    ) -> Result<ApplyReport, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut report = ApplyReport::default();

        // 1. lock and read the offsets, partitions in order (no deadlock between two
        //    projectors).
        let partitions: std::collections::BTreeSet<u32> =
            batch.iter().map(|r| r.partition).collect();
        let mut next: BTreeMap<u32, (u64, u64)> = BTreeMap::new(); // partition -> (stored, new)
        if !partitions.is_empty() {
            let ensure = tx
                .prepare_cached(include_str!("sql/projector_offset_lock.sql"))
                .await?;
            let get = tx
                .prepare_cached(include_str!("sql/projector_offset_get.sql"))
                .await?;
            for &p in &partitions {
                let pi = to_i32(p, "partition")?;
                tx.execute(&ensure, &[&pi, &self.log_id]).await?;
                let stored = tx
                    .query_one(&get, &[&pi, &self.log_id])
                    .await?
                    .get::<_, i64>(0);
                let stored = u64::try_from(stored)
                    .map_err(|_| PgError::Data(format!("negative offset {stored}")))?;
                next.insert(p, (stored, stored));
            }
        }

        // 2. collect what is new, applying sale changes in log order as they come (rare;
        //    counters below are guarded by offset, so their order against these is safe).
        let mut reservations: HashMap<ReservationId, (u64, &ReservationView)> = HashMap::new();
        let mut inventory: HashMap<&SkuId, (u64, u64, u64, u64)> = HashMap::new();
        let mut orders: Vec<(u32, u64, &OrderView)> = Vec::new();
        let mut order_keys: HashSet<ReservationId> = HashSet::new();
        for rec in batch {
            let slot = &mut next
                .get_mut(&rec.partition)
                .expect("every partition of the batch was read")
                .1;
            if rec.offset < *slot {
                report.skipped += 1;
                continue;
            }
            *slot = rec.offset + 1;
            report.applied += 1;
            for ev in &rec.events {
                match ev {
                    Event::SaleConfigured(cfg) => {
                        configure_sale(&tx, &self.log_id, rec.partition, rec.offset, cfg).await?
                    }
                    Event::SaleDropped { sale_id, skus } => {
                        drop_sale(&tx, &self.log_id, sale_id, skus).await?
                    }
                    Event::Inventory {
                        sku,
                        total,
                        held,
                        sold,
                    } => {
                        let e = inventory
                            .entry(sku)
                            .or_insert((rec.offset, *total, *held, *sold));
                        if rec.offset >= e.0 {
                            *e = (rec.offset, *total, *held, *sold);
                        }
                    }
                    Event::Reservation(view) => {
                        let e = reservations.entry(view.id).or_insert((rec.offset, view));
                        if rec.offset >= e.0 {
                            *e = (rec.offset, view);
                        }
                    }
                    Event::OrderCreated(order) => {
                        if order_keys.insert(order.reservation_id) {
                            orders.push((rec.partition, rec.offset, order));
                        }
                    }
                    // Switches of the live sale, not records: the tables keep reservations,
                    // orders and inventory (a top-up arrives as an `Inventory` event).
                    // The engine forgetting ended holds (bounded state) is not a
                    // change of record: the projected table keeps the history.
                    Event::ProductPaused { .. }
                    | Event::SaleEnded { .. }
                    | Event::ReservationsPruned { .. } => {}
                }
            }
        }

        // 3. set-based writes.
        if !inventory.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (sku, (offset, total, held, sold)) in &inventory {
                cols.0.push(sku.as_str());
                cols.1.push(to_i64(*total, "total inventory")?);
                cols.2.push(to_i64(*held, "held")?);
                cols.3.push(to_i64(*sold, "sold")?);
                cols.4.push(to_i64(*offset, "offset")?);
            }
            let stmt = tx
                .prepare_cached(include_str!("sql/inventory_update.sql"))
                .await?;
            tx.execute(
                &stmt,
                &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &self.log_id],
            )
            .await?;
        }
        if !reservations.is_empty() {
            let n = reservations.len();
            let (
                mut id,
                mut part,
                mut user,
                mut sku,
                mut qty,
                mut status,
                mut created,
                mut expires,
                mut off,
            ) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (offset, v) in reservations.values() {
                id.push(v.id.to_string());
                part.push(i32::from(v.id.partition));
                user.push(v.user.as_str());
                sku.push(v.sku.as_str());
                qty.push(to_i32(v.quantity, "quantity")?);
                status.push(v.status.as_str());
                created.push(ms_to_time(v.created_at)?);
                expires.push(ms_to_time(v.expires_at)?);
                off.push(to_i64(*offset, "offset")?);
            }
            let stmt = tx
                .prepare_cached(include_str!("sql/reservations_upsert.sql"))
                .await?;
            tx.execute(
                &stmt,
                &[
                    &id,
                    &part,
                    &user,
                    &sku,
                    &qty,
                    &status,
                    &created,
                    &expires,
                    &off,
                    &self.log_id,
                ],
            )
            .await?;
        }
        if !orders.is_empty() {
            let n = orders.len();
            let mut c = OrderColumns::with_capacity(n);
            for (partition, offset, o) in &orders {
                c.push(*partition, *offset, o)?;
            }
            let stmt = tx
                .prepare_cached(include_str!("sql/orders_insert.sql"))
                .await?;
            report.orders_inserted = tx
                .execute(
                    &stmt,
                    &[
                        &c.order_id,
                        &c.reservation_id,
                        &c.partition,
                        &c.log_offset,
                        &c.user,
                        &c.sku,
                        &c.quantity,
                        &c.total_price,
                        &c.payment_transaction_id,
                        &c.payment_method,
                        &c.shipping_address,
                        &c.created_at,
                        &self.log_id,
                    ],
                )
                .await?;
        }

        // 4. offsets and positions, same transaction.
        let set = tx
            .prepare_cached(include_str!("sql/projector_offset_set.sql"))
            .await?;
        for (p, (stored, new)) in &next {
            if new > stored {
                tx.execute(
                    &set,
                    &[
                        &to_i32(*p, "partition")?,
                        &to_i64(*new, "offset")?,
                        &self.log_id,
                    ],
                )
                .await?;
            }
        }
        if !positions.is_empty() {
            let stmt = tx
                .prepare_cached(include_str!("sql/projector_position_set.sql"))
                .await?;
            for (p, o) in positions {
                tx.execute(&stmt, &[&self.topic, p, o, &self.log_id])
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Where to resume reading the events topic: partition → next Kafka offset.
    pub async fn positions(&self) -> Result<HashMap<i32, i64>, PgError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/projector_positions_get.sql"))
            .await?;
        let rows = client.query(&stmt, &[&self.topic, &self.log_id]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
            .collect())
    }

    /// Per command partition, the next command offset not yet projected.
    pub async fn offsets(&self) -> Result<BTreeMap<u32, u64>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT partition, next_offset FROM projector_offsets WHERE log_id = $1",
                &[&self.log_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
            .collect())
    }
}

async fn configure_sale(
    tx: &deadpool_postgres::Transaction<'_>,
    log_id: &str,
    partition: u32,
    offset: u64,
    cfg: &SaleConfig,
) -> Result<(), PgError> {
    let s = &cfg.sale;
    let sale_id = s.sale_id.to_string();
    let all: Vec<&str> = s.all_skus.iter().map(|k| k.as_str()).collect();
    let stmt = tx
        .prepare_cached(include_str!("sql/sale_upsert.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &sale_id,
            &s.name,
            &ms_to_time(s.starts_at)?,
            &ms_to_time(s.ends_at)?,
            &to_i32(s.reservation_ttl_s, "reservation ttl")?,
            &all,
            &log_id,
        ],
    )
    .await?;
    let stmt = tx
        .prepare_cached(include_str!("sql/product_configure.sql"))
        .await?;
    let (p, o) = (to_i32(partition, "partition")?, to_i64(offset, "offset")?);
    for prod in &cfg.products {
        tx.execute(
            &stmt,
            &[
                &prod.sku.as_str(),
                &sale_id,
                &p,
                &prod.name,
                &prod.description,
                &prod.category,
                &to_i64(prod.base_price.0, "base price")?,
                &to_i64(prod.flash_sale_price.0, "flash sale price")?,
                &to_i64(prod.total_inventory, "total inventory")?,
                &to_i32(prod.per_user_limit, "per-user limit")?,
                &prod.image_url,
                &o,
                &log_id,
            ],
        )
        .await?;
    }
    Ok(())
}

async fn drop_sale(
    tx: &deadpool_postgres::Transaction<'_>,
    log_id: &str,
    sale_id: &SaleId,
    skus: &[SkuId],
) -> Result<(), PgError> {
    let id = sale_id.to_string();
    let skus: Vec<&str> = skus.iter().map(|k| k.as_str()).collect();
    let stmt = tx.prepare_cached(include_str!("sql/sale_drop.sql")).await?;
    tx.execute(&stmt, &[&id, &skus, &log_id]).await?;
    let stmt = tx
        .prepare_cached(include_str!("sql/sale_delete_if_empty.sql"))
        .await?;
    tx.execute(&stmt, &[&id, &log_id]).await?;
    Ok(())
}

/// The columns of `orders_insert.sql`, one array each.
struct OrderColumns<'a> {
    order_id: Vec<String>,
    reservation_id: Vec<String>,
    partition: Vec<i32>,
    log_offset: Vec<i64>,
    user: Vec<&'a str>,
    sku: Vec<&'a str>,
    quantity: Vec<i32>,
    total_price: Vec<i64>,
    payment_transaction_id: Vec<&'a str>,
    payment_method: Vec<&'static str>,
    shipping_address: Vec<&'a str>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl<'a> OrderColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        OrderColumns {
            order_id: Vec::with_capacity(n),
            reservation_id: Vec::with_capacity(n),
            partition: Vec::with_capacity(n),
            log_offset: Vec::with_capacity(n),
            user: Vec::with_capacity(n),
            sku: Vec::with_capacity(n),
            quantity: Vec::with_capacity(n),
            total_price: Vec::with_capacity(n),
            payment_transaction_id: Vec::with_capacity(n),
            payment_method: Vec::with_capacity(n),
            shipping_address: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
        }
    }
    fn push(&mut self, partition: u32, offset: u64, o: &'a OrderView) -> Result<(), PgError> {
        self.order_id.push(o.order_id.to_string());
        self.reservation_id.push(o.reservation_id.to_string());
        self.partition.push(to_i32(partition, "partition")?);
        self.log_offset.push(to_i64(offset, "offset")?);
        self.user.push(o.user.as_str());
        self.sku.push(o.sku.as_str());
        self.quantity.push(to_i32(o.quantity, "quantity")?);
        self.total_price
            .push(to_i64(o.total_price.0, "total price")?);
        self.payment_transaction_id.push(&o.payment_transaction_id);
        self.payment_method.push(o.payment_method.as_str());
        self.shipping_address.push(&o.shipping_address);
        self.created_at.push(ms_to_time(o.created_at)?);
        Ok(())
    }
}
