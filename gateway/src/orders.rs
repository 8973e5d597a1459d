//! Where order reads come from: the in-memory read model in embedded mode, Postgres
//! (written by the projector) in Kafka mode.

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
