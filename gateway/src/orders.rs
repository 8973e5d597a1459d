//! Where order reads come from: the in-memory read model in embedded mode; in Kafka
//! mode the gateway's read model, caught up with the log as far as the read needs,
//! then Postgres for the orders of earlier logs (`crate::kafka_reads`).

use crate::error::ApiError;
use crate::readmodel::ReadModel;
use flashsale_proto::{OrderId, OrderView, UserId};
use std::future::Future;
use std::pin::Pin;

pub type OrderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

pub trait OrderSource: Send + Sync + 'static {
    fn order<'a>(&'a self, id: &'a OrderId) -> OrderFuture<'a, Option<OrderView>>;
    /// Newest first.
    fn orders_of<'a>(&'a self, user: &'a UserId) -> OrderFuture<'a, Vec<OrderView>>;
    /// True when the orders come from this node's read model: then a miss while a
    /// partition is not loaded (recovering, catching up, failed) is unknown, not absent,
    /// and the API answers 503 rather than 404 or `[]`.
    fn served_from_read_model(&self) -> bool {
        false
    }
    /// Waits (bounded) until this node's read model holds every write of `partition`
    /// acknowledged, by any gateway, before the call (Kafka mode; 503 if it does not
    /// get there in time). Embedded: nothing to wait for.
    fn catch_up<'a>(&'a self, partition: u32) -> OrderFuture<'a, ()> {
        let _ = partition;
        Box::pin(std::future::ready(Ok(())))
    }
}

impl OrderSource for ReadModel {
    fn order<'a>(&'a self, id: &'a OrderId) -> OrderFuture<'a, Option<OrderView>> {
        Box::pin(std::future::ready(Ok(ReadModel::order(self, id))))
    }
    fn orders_of<'a>(&'a self, user: &'a UserId) -> OrderFuture<'a, Vec<OrderView>> {
        Box::pin(std::future::ready(Ok(ReadModel::orders_of(self, user))))
    }
    fn served_from_read_model(&self) -> bool {
        true
    }
}
