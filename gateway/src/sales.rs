//! Creating, listing and deleting sales. A sale's products live on whichever
//! partitions their SKUs hash to, so the gateway sends one command per partition
//! (concurrently), and a sale is all or nothing both ways:
//! - create: one `ConfigureSale` per partition; if any partition refuses (a SKU of
//!   another sale), the partitions that accepted are told to drop it again;
//! - delete: one `DeleteSale` per partition (a command on each partition's log, like
//!   creation, so restart/replay and every gateway's read model agree); if any
//!   partition refuses (a reservation exists there), the partitions that removed their
//!   part get it back exactly (`ConfigureSaleWith` + `PauseProduct` from what the
//!   engine said it removed). An unanswered partition is not undone: its outcome is
//!   unknown, so the answer is 503 and repeating the DELETE finishes the job (a
//!   partition with nothing left answers "nothing here").

use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::json::sale_json;
use crate::readmodel::{ProductEntry, ReadModel, SaleEntry};
use flashsale_proto::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

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
            return Err(ApiError::conflict(p.sku.as_str(), read.sale_of(&p.sku)));
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
                tracing::warn!(sale = %meta.sale_id, partition, error = %e.payload.message, "could not undo a partly created sale");
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
    Ok(sale_json(
        &SaleEntry { meta },
        &entries,
        dispatcher.partitions(),
    ))
}

/// Every sale, newest first, each as `GET /api/v1/admin/sales/{saleId}` answers it.
pub fn list_sales(dispatcher: &Dispatcher, read: &ReadModel) -> Value {
    Value::Array(
        read.sales()
            .iter()
            .map(|(sale, products)| sale_json(sale, products, dispatcher.partitions()))
            .collect(),
    )
}

/// `DELETE /api/v1/admin/sales/{saleId}` (docs/api.md): the sale as it was, once every
/// partition removed its part; 409 "Conflict" (`saleId`, `reservations`) when a
/// reservation of it exists anywhere; 404 when no partition knows it.
pub async fn delete_sale(
    dispatcher: &Dispatcher,
    read: &ReadModel,
    sale_id: SaleId,
) -> Result<Value, ApiError> {
    let known = read.sale(&sale_id);
    // The read model names the sale's partitions; a sale it does not know (yet: in
    // Kafka mode it follows the events) is asked of every partition, so the engines,
    // not a lagging read model, decide whether it exists.
    let partitions: BTreeSet<u32> = match &known {
        Some((sale, _)) => sale
            .meta
            .all_skus
            .iter()
            .map(|sku| dispatcher.partition_of(sku))
            .collect(),
        None => (0..dispatcher.partitions()).collect(),
    };
    let calls = partitions.iter().map(|&partition| async move {
        let cmd = Command::DeleteSale { sale_id };
        (partition, dispatcher.call(partition, cmd, None).await)
    });
    let results = futures::future::join_all(calls).await;
    let mut removed: Vec<(u32, RemovedSale)> = Vec::new();
    let mut reservations: Option<u64> = None;
    let mut failure: Option<ApiError> = None;
    for (partition, r) in results {
        match r.map(|rec| rec.reply) {
            Ok(Reply::SaleDeleted {
                removed: Some(part),
                ..
            }) => removed.push((partition, part)),
            Ok(Reply::SaleDeleted { removed: None, .. }) => {}
            Ok(Reply::Rejected(Rejection::SaleHasReservations {
                reservations: n, ..
            })) => *reservations.get_or_insert(0) += n,
            Ok(Reply::Rejected(rej)) => {
                failure.get_or_insert(ApiError::from_rejection(&rej));
            }
            Ok(other) => {
                failure.get_or_insert(crate::api::unexpected(other));
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(n) = reservations {
        // Refused somewhere: give the partitions that removed their part their part
        // back, so the sale stays whole.
        for (partition, part) in removed {
            restore(dispatcher, sale_id, partition, part).await;
        }
        tracing::info!(sale = %sale_id, reservations = n, "sale deletion refused: it has reservations");
        return Err(ApiError::sale_has_reservations(sale_id, n));
    }
    if let Some(err) = failure {
        tracing::warn!(sale = %sale_id, removed_partitions = removed.len(), error = %err.payload.message, "sale deletion incomplete; repeating the DELETE finishes it");
        return Err(err);
    }
    // The sale as it was: from the read model, or else from what the engines removed.
    let body = match known {
        Some((sale, products)) => {
            read.drop_sale(sale_id, &sale.meta.all_skus);
            sale_json(&sale, &products, dispatcher.partitions())
        }
        None => {
            let Some(meta) = removed.first().map(|(_, r)| r.config.sale.clone()) else {
                return Err(ApiError::sale_not_found(&sale_id.to_string()));
            };
            read.drop_sale(sale_id, &meta.all_skus);
            let products: Vec<ProductEntry> = removed
                .into_iter()
                .flat_map(|(_, r)| {
                    let (starts_at, ends_at) = (r.config.sale.starts_at, r.config.sale.ends_at);
                    r.config.products.into_iter().map(move |spec| ProductEntry {
                        sale_id,
                        starts_at,
                        ends_at,
                        held: 0,
                        sold: 0,
                        paused: r.paused.contains(&spec.sku),
                        spec,
                    })
                })
                .collect();
            sale_json(&SaleEntry { meta }, &products, dispatcher.partitions())
        }
    };
    tracing::info!(sale = %sale_id, "sale deleted");
    Ok(body)
}

/// Configures again, exactly, a sale's part that one partition removed.
async fn restore(dispatcher: &Dispatcher, sale_id: SaleId, partition: u32, part: RemovedSale) {
    let mut cmds = vec![Command::ConfigureSaleWith {
        config: part.config,
        max_hold_s: part.max_hold_s,
    }];
    cmds.extend(
        part.paused
            .into_iter()
            .map(|sku| Command::PauseProduct { sku }),
    );
    for cmd in cmds {
        let outcome = dispatcher.call(partition, cmd, None).await;
        let ok = matches!(
            outcome.as_ref().map(|rec| &rec.reply),
            Ok(Reply::SaleConfigured { .. } | Reply::ProductControlled(_))
        );
        if !ok {
            let why = match outcome {
                Ok(rec) => format!("{:?}", rec.reply),
                Err(e) => e.payload.message,
            };
            tracing::error!(sale = %sale_id, partition, error = %why, "could not restore a sale's part after a refused deletion; GET /api/v1/admin/sales/{{saleId}} shows what is left: delete it again or create it anew");
            return;
        }
    }
}
