//! Public sale events (issue 33, docs/events.md): the engine's `events` log mapped to
//! three documented topics any Kafka client reads, each record a CloudEvents 1.0 event
//! in structured JSON mode, keyed by skuId.
//!
//! | topic | types |
//! |---|---|
//! | `<prefix>reservations` | `com.flashsale.reservation.{created,extended,confirmed,cancelled,expired}` |
//! | `<prefix>inventory-updates` | `com.flashsale.inventory.{updated,sold-out,back-in-stock}` |
//! | `<prefix>orders` | `com.flashsale.order.created` |
//!
//! This file is the pure half: [`map_batch`] turns the event records of one `events`
//! Kafka record (one applied batch of a partition) into the public records. It reads no
//! clock and keeps no state, so publishing the same log prefix again gives the same
//! records with the same ids (what makes a re-publication after a crash harmless to a
//! consumer that deduplicates, and what the exactly-once publisher relies on). The Kafka
//! loop around it is in `kafka.rs` ([`run_publisher`], `flashsale events publish`), the
//! embedded node's in `embedded.rs` (`serve --publish-kafka`), their shared
//! transactional writer in `txn.rs`; `flashsale events tail` in `tail.rs`.
//!
//! Invariants of the mapping (tested below against the real core):
//! - P1 every reservation state change is one `reservation.*` event, every order one
//!   `order.created`, in log order;
//! - P2 per SKU and applied batch at most one `inventory.updated` (the counts after the
//!   batch), plus `sold-out` / `back-in-stock` when the available count crossed zero;
//! - P3 `id` = `<events log id>/<partition>/<command offset>/<event index>[/<suffix>]`:
//!   unique, and the same whenever the same log is published again.

pub mod embedded;
mod kafka;
mod tail;
mod txn;

pub use kafka::{run_publisher, PublisherConfig};
pub use tail::{tail_command, TailArgs};

use flashsale_proto::{Event, EventRecord, OrderView, ReservationStatus, ReservationView, UnixMs};
use serde::{Deserialize, Serialize};

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// CloudEvents `datacontenttype` of every event.
pub const CONTENT_TYPE: &str = "application/json";

/// The three public topics, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Reservations,
    InventoryUpdates,
    Orders,
}

impl Channel {
    pub const ALL: [Channel; 3] = [
        Channel::Reservations,
        Channel::InventoryUpdates,
        Channel::Orders,
    ];

    /// The topic name without the deployment's prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Channel::Reservations => "reservations",
            Channel::InventoryUpdates => "inventory-updates",
            Channel::Orders => "orders",
        }
    }

    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }

    /// The channel of a topic name under `prefix`.
    pub fn of_topic(prefix: &str, topic: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.topic(prefix) == topic)
    }

    /// The schema of this channel's records (`schemas/events/<suffix>.json`).
    pub fn schema_file(self) -> &'static str {
        match self {
            Channel::Reservations => "reservations.json",
            Channel::InventoryUpdates => "inventory-updates.json",
            Channel::Orders => "orders.json",
        }
    }
}

/// A CloudEvents 1.0 event in structured JSON mode (the record's value is this object).
///
/// Plain serde rather than the `cloudevents-sdk` crate: the SDK's Kafka binding is built
/// for an older rdkafka than the workspace's 0.39 (two librdkafka builds in one binary),
/// and the structured JSON mode is a small, fixed object; its attributes below follow
/// the spec's names and rules (all required ones, `time` RFC 3339, `data` JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub time: String,
    pub subject: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

/// One record for a public topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub channel: Channel,
    /// The Kafka key: the skuId (so per-SKU order on a topic is the log's order).
    pub key: String,
    pub event: CloudEvent,
}

impl Outgoing {
    /// The record's value: the event as JSON.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.event).expect("a CloudEvent always serializes")
    }
}

/// Where the events come from: names the log in every `id` and `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The events topic's log id, `name/topic-id` (`flashsale_runtime::kafka_id`), or
    /// `<data dir>`-style name in embedded mode.
    pub log_id: String,
    /// The CloudEvents `source`, e.g. `/flashsale/flashsale.events`.
    pub source: String,
}

impl Origin {
    pub fn new(events_topic: &str, log_id: impl Into<String>) -> Self {
        Origin {
            log_id: log_id.into(),
            source: format!("/flashsale/{events_topic}"),
        }
    }
}

/// RFC 3339 UTC with milliseconds, as the HTTP API writes times.
pub fn rfc3339(ms: UnixMs) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn money(cents: u64) -> serde_json::Value {
    // Like the API's `totalPrice`: a JSON number with two decimals.
    serde_json::Number::from_f64(cents as f64 / 100.0)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn reservation_data(v: &ReservationView) -> serde_json::Value {
    serde_json::json!({
        "reservationId": v.id.to_string(),
        "userId": v.user.as_str(),
        "skuId": v.sku.as_str(),
        "quantity": v.quantity,
        "status": v.status.as_str(),
        "createdAt": rfc3339(v.created_at),
        "expiresAt": rfc3339(v.expires_at),
    })
}

fn order_data(o: &OrderView) -> serde_json::Value {
    serde_json::json!({
        "orderId": o.order_id.to_string(),
        "reservationId": o.reservation_id.to_string(),
        "userId": o.user.as_str(),
        "skuId": o.sku.as_str(),
        "quantity": o.quantity,
        "totalPrice": money(o.total_price.0),
        "paymentTransactionId": o.payment_transaction_id,
        "paymentMethod": o.payment_method.as_str(),
        "shippingAddress": o.shipping_address,
        "status": "PAID",
        "createdAt": rfc3339(o.created_at),
    })
}

fn inventory_data(sku: &str, total: u64, held: u64, sold: u64) -> serde_json::Value {
    let available = total.saturating_sub(held).saturating_sub(sold);
    serde_json::json!({
        "skuId": sku,
        "availableCount": available,
        "totalInventory": total,
        "held": held,
        "sold": sold,
        "soldOut": available == 0,
    })
}

/// The `reservation.*` type of a reservation event at `index` of `events`. A hold's
/// creation is the only `RESERVED` view the core follows with its product's counts
/// (`State::reserve`); an extension changes no count (`State::extend`).
fn reservation_type(events: &[Event], index: usize, v: &ReservationView) -> &'static str {
    match v.status {
        ReservationStatus::Reserved => match events.get(index + 1) {
            Some(Event::Inventory { sku, .. }) if *sku == v.sku => {
                "com.flashsale.reservation.created"
            }
            _ => "com.flashsale.reservation.extended",
        },
        ReservationStatus::Confirmed => "com.flashsale.reservation.confirmed",
        ReservationStatus::Cancelled => "com.flashsale.reservation.cancelled",
        ReservationStatus::Expired => "com.flashsale.reservation.expired",
    }
}

/// The available count before the `Inventory` event at `index`, when the record says
/// it: the reservation change just before it names the units that moved. `None` for a
/// count set by an operator (an inventory adjustment or a sale's configuration).
fn available_before(events: &[Event], index: usize, available_after: u64) -> Option<u64> {
    let Some(Event::Inventory { sku, .. }) = events.get(index) else {
        return None;
    };
    let prev = index.checked_sub(1).and_then(|i| events.get(i));
    match prev {
        Some(Event::Reservation(v)) if v.sku == *sku => {
            let q = u64::from(v.quantity);
            Some(match v.status {
                ReservationStatus::Reserved => available_after + q,
                ReservationStatus::Expired | ReservationStatus::Cancelled => {
                    available_after.saturating_sub(q)
                }
                ReservationStatus::Confirmed => available_after,
            })
        }
        Some(Event::OrderCreated(o)) if o.sku == *sku => Some(available_after),
        _ => None,
    }
}

/// The public records of the event records of one applied batch (one `events` Kafka
/// record, after dropping records already published), in log order; the batch's
/// inventory updates follow its reservation and order events. Pure: see the module docs.
pub fn map_batch(origin: &Origin, records: &[EventRecord]) -> Vec<Outgoing> {
    struct Inv<'a> {
        sku: &'a str,
        id: String,
        time: UnixMs,
        counts: (u64, u64, u64),
        before: Option<u64>,
    }
    let mut out = Vec::new();
    let mut inventory: Vec<Inv<'_>> = Vec::new();
    let event = |id: String, ty: &str, time: UnixMs, subject: &str, data| CloudEvent {
        specversion: SPEC_VERSION.to_string(),
        id,
        source: origin.source.clone(),
        ty: ty.to_string(),
        time: rfc3339(time),
        subject: subject.to_string(),
        datacontenttype: CONTENT_TYPE.to_string(),
        data,
    };
    for rec in records {
        for (n, ev) in rec.events.iter().enumerate() {
            let id = || format!("{}/{}/{}/{n}", origin.log_id, rec.partition, rec.offset);
            match ev {
                Event::Reservation(v) => out.push(Outgoing {
                    channel: Channel::Reservations,
                    key: v.sku.as_str().to_string(),
                    event: event(
                        id(),
                        reservation_type(&rec.events, n, v),
                        rec.log_time,
                        v.sku.as_str(),
                        reservation_data(v),
                    ),
                }),
                Event::OrderCreated(o) => out.push(Outgoing {
                    channel: Channel::Orders,
                    key: o.sku.as_str().to_string(),
                    event: event(
                        id(),
                        "com.flashsale.order.created",
                        rec.log_time,
                        o.sku.as_str(),
                        order_data(o),
                    ),
                }),
                Event::Inventory {
                    sku,
                    total,
                    held,
                    sold,
                } => {
                    let after = total.saturating_sub(*held).saturating_sub(*sold);
                    match inventory.iter_mut().find(|i| i.sku == sku.as_str()) {
                        Some(i) => {
                            i.id = id();
                            i.time = rec.log_time;
                            i.counts = (*total, *held, *sold);
                        }
                        None => inventory.push(Inv {
                            sku: sku.as_str(),
                            id: id(),
                            time: rec.log_time,
                            counts: (*total, *held, *sold),
                            before: available_before(&rec.events, n, after),
                        }),
                    }
                }
                Event::SaleConfigured(_)
                | Event::SaleDropped { .. }
                | Event::ProductPaused { .. }
                | Event::SaleEnded { .. }
                | Event::ReservationsPruned { .. } => {}
            }
        }
    }
    for i in inventory {
        let (total, held, sold) = i.counts;
        let after = total.saturating_sub(held).saturating_sub(sold);
        let data = inventory_data(i.sku, total, held, sold);
        let crossing = match i.before {
            Some(b) if b > 0 && after == 0 => {
                Some(("sold-out", "com.flashsale.inventory.sold-out"))
            }
            Some(0) if after > 0 => {
                Some(("back-in-stock", "com.flashsale.inventory.back-in-stock"))
            }
            _ => None,
        };
        let mut push = |id: String, ty: &str| {
            out.push(Outgoing {
                channel: Channel::InventoryUpdates,
                key: i.sku.to_string(),
                event: event(id, ty, i.time, i.sku, data.clone()),
            })
        };
        push(i.id.clone(), "com.flashsale.inventory.updated");
        if let Some((suffix, ty)) = crossing {
            push(format!("{}/{suffix}", i.id), ty);
        }
    }
    out
}

#[cfg(test)]
mod tests;
