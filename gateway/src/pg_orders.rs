//! [`PgOrders`]: the order reads of the HTTP API in Kafka mode, from the `orders`
//! table the projector writes: the history behind the read model (orders of logs this
//! deployment had before its topics were recreated). Only this deployment's rows:
//! every query names it (migration 0004).

use crate::error::ApiError;
use crate::orders::{OrderFuture, OrderSource};
use flashsale_proto::{Cents, OrderId, OrderView, PaymentMethod, ReservationId, SkuId, UserId};
use flashsale_runtime::pg::{time_to_ms, PgError, Pool};

/// Most orders `GET /api/v1/orders/user/{userId}` returns (the newest ones).
pub const MAX_ORDERS_PER_USER: i64 = 1000;

/// Reads orders from Postgres. While Postgres is away, reads answer 503 (the client
/// retries); they never wait long (the pool's wait is bounded).
#[derive(Clone)]
pub struct PgOrders {
    pool: Pool,
    /// The deployment whose rows are read: its events topic's name (`orders.deployment`).
    deployment: String,
}

impl std::fmt::Debug for PgOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOrders")
            .field("deployment", &self.deployment)
            .finish()
    }
}

impl PgOrders {
    /// Reads of the deployment whose events topic is `events_topic` (e.g. `shopa.events`).
    pub fn new(pool: Pool, events_topic: impl Into<String>) -> Self {
        PgOrders {
            pool,
            deployment: events_topic.into(),
        }
    }

    pub async fn order_by_id(&self, id: &OrderId) -> Result<Option<OrderView>, PgError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/order_by_id.sql"))
            .await?;
        let row = client
            .query_opt(&stmt, &[&id.to_string(), &self.deployment])
            .await?;
        row.map(|r| order_from_row(&r)).transpose()
    }

    /// Newest first, at most [`MAX_ORDERS_PER_USER`].
    pub async fn orders_of_user(&self, user: &UserId) -> Result<Vec<OrderView>, PgError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/orders_of_user.sql"))
            .await?;
        let rows = client
            .query(
                &stmt,
                &[&user.as_str(), &MAX_ORDERS_PER_USER, &self.deployment],
            )
            .await?;
        rows.iter().map(order_from_row).collect()
    }
}

fn order_from_row(r: &tokio_postgres::Row) -> Result<OrderView, PgError> {
    let bad = |what: &str, v: &str| PgError::Data(format!("orders row has a bad {what}: {v:?}"));
    let order_id: &str = r.get(0);
    let reservation_id: &str = r.get(1);
    let user: &str = r.get(2);
    let sku: &str = r.get(3);
    let method: &str = r.get(7);
    Ok(OrderView {
        order_id: order_id.parse().map_err(|_| bad("order_id", order_id))?,
        reservation_id: reservation_id
            .parse::<ReservationId>()
            .map_err(|_| bad("reservation_id", reservation_id))?,
        user: UserId::parse(user).map_err(|_| bad("user_id", user))?,
        sku: SkuId::parse(sku).map_err(|_| bad("sku", sku))?,
        quantity: u32::try_from(r.get::<_, i32>(4)).map_err(|_| bad("quantity", "negative"))?,
        total_price: Cents(
            u64::try_from(r.get::<_, i64>(5)).map_err(|_| bad("total_price_cents", "negative"))?,
        ),
        payment_transaction_id: r.get(6),
        payment_method: PaymentMethod::parse(method)
            .ok_or_else(|| bad("payment_method", method))?,
        shipping_address: r.get(8),
        created_at: time_to_ms(r.get(9))?,
    })
}

fn unavailable(e: PgError) -> ApiError {
    tracing::warn!(error = %e, "order read from Postgres failed");
    ApiError::unavailable("Orders cannot be read right now; retry shortly")
}

impl OrderSource for PgOrders {
    fn order<'a>(&'a self, id: &'a OrderId) -> OrderFuture<'a, Option<OrderView>> {
        Box::pin(async move { self.order_by_id(id).await.map_err(unavailable) })
    }
    fn orders_of<'a>(&'a self, user: &'a UserId) -> OrderFuture<'a, Vec<OrderView>> {
        Box::pin(async move { self.orders_of_user(user).await.map_err(unavailable) })
    }
}
