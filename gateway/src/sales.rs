//! Creating a sale: its products live on whichever partitions their SKUs hash to, so
//! the gateway sends one `ConfigureSale` per partition (concurrently). If any
//! partition refuses (a SKU of another sale), the partitions that accepted are told to
//! drop it again, so a sale is all or nothing.

use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::json::sale_json;
use crate::readmodel::{ProductEntry, ReadModel, SaleEntry};
use flashsale_proto::*;
use serde_json::Value;
use std::collections::BTreeMap;

pub async fn create_sale(
    dispatcher: &Dispatcher,
    read: &ReadModel,
    meta: SaleMeta,
    products: Vec<ProductSpec>,
) -> Result<Value, ApiError> {
    create_sale_with(dispatcher, read, meta, products, None).await
}

/// [`create_sale`] with the sale's `maxHoldSeconds` (`None`: the default, 2 × TTL).
pub async fn create_sale_with(
    dispatcher: &Dispatcher,
    read: &ReadModel,
    meta: SaleMeta,
    products: Vec<ProductSpec>,
    max_hold_s: Option<u32>,
) -> Result<Value, ApiError> {
    // Fast path for the common conflict; the engines decide for real.
    for p in &products {
        if read.sale_of(&p.sku).is_some_and(|s| s != meta.sale_id) {
            return Err(ApiError::conflict(p.sku.as_str()));
        }
    }
    let mut by_partition: BTreeMap<u32, Vec<ProductSpec>> = BTreeMap::new();
    for p in &products {
        by_partition
            .entry(dispatcher.partition_of(&p.sku))
            .or_default()
            .push(p.clone());
    }
    let calls = by_partition.iter().map(|(&partition, ps)| {
        let config = SaleConfig {
            sale: meta.clone(),
            products: ps.clone(),
        };
        let cmd = match max_hold_s {
            None => Command::ConfigureSale(config),
            Some(max_hold_s) => Command::ConfigureSaleWith { config, max_hold_s },
        };
        async move { (partition, dispatcher.call(partition, cmd, None).await) }
    });
    let results = futures::future::join_all(calls).await;
    let mut failure: Option<ApiError> = None;
    let mut accepted = Vec::new();
    for (partition, r) in results {
        match r {
            Ok(ReplyRecord {
                reply: Reply::SaleConfigured { .. },
                ..
            }) => accepted.push(partition),
            Ok(ReplyRecord {
                reply: Reply::Rejected(rej),
                ..
            }) => {
                failure.get_or_insert(ApiError::from_rejection(&rej));
            }
            Ok(other) => {
                failure.get_or_insert(ApiError::unavailable(format!(
                    "unexpected engine reply {:?}",
                    other.reply
                )));
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(err) = failure {
        // Undo on every partition (an unanswered one may still have applied it).
        for &partition in by_partition.keys() {
            let cmd = Command::DropSale {
                sale_id: meta.sale_id,
            };
            if let Err(e) = dispatcher.call(partition, cmd, None).await {
                tracing::warn!(sale = %meta.sale_id, partition, error = ?e.payload.message, "could not undo a partly created sale");
            }
        }
        tracing::info!(sale = %meta.sale_id, accepted = accepted.len(), "sale refused");
        return Err(err);
    }
    let entries: Vec<ProductEntry> = products
        .into_iter()
        .map(|spec| ProductEntry {
            sale_id: meta.sale_id,
            starts_at: meta.starts_at,
            ends_at: meta.ends_at,
            held: 0,
            sold: 0,
            paused: false,
            spec,
        })
        .collect();
    Ok(sale_json(&SaleEntry { meta }, &entries))
}
