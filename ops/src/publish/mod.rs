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

pub use kafka::{run_publisher, PublisherConfig, DEFAULT_COMMIT_MS};
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

/// A CloudEvents 1.0 event in structured JSON mode, as a consumer reads a record's
/// value (the publisher writes it with [`Envelope`], the same fields in this order).
///
/// Plain serde rather than the `cloudevents-sdk` crate: see docs/events.md, "The
/// envelope". Its attributes below follow the spec's names and rules (all required
/// ones, `time` RFC 3339, `data` JSON).
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
    /// The record's value: the CloudEvent as JSON, encoded once by [`map_batch`].
    pub value: Vec<u8>,
}

impl Outgoing {
    /// The record's value as JSON.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The record's value read back (tests, tools): what a consumer sees.
    pub fn event(&self) -> CloudEvent {
        serde_json::from_slice(&self.value).expect("map_batch writes CloudEvents")
    }
}

/// What the publisher serializes: the envelope over borrowed parts and a typed `data`,
/// written straight to bytes (no `serde_json::Value` in between: a third of the
/// mapping's CPU per event went to building and dropping those maps). Field order =
/// [`CloudEvent`]'s.
#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    time: Rfc3339,
    subject: &'a str,
    datacontenttype: &'static str,
    data: D,
}

/// A log time written as [`rfc3339`] does, without a `String`.
#[derive(Clone, Copy)]
struct Rfc3339(UnixMs);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match rfc3339_into(self.0, &mut buf) {
            Some(t) => s.serialize_str(t),
            None => s.serialize_str(&rfc3339(self.0)),
        }
    }
}

/// A `Display` value as a JSON string (ids), without a `String`.
struct Shown<'a, T: std::fmt::Display>(&'a T);

impl<T: std::fmt::Display> Serialize for Shown<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// `data` of `reservations` (schemas/events/reservations.json).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReservationData<'a> {
    reservation_id: Shown<'a, flashsale_proto::ReservationId>,
    user_id: &'a str,
    sku_id: &'a str,
    quantity: u32,
    status: &'static str,
    created_at: Rfc3339,
    expires_at: Rfc3339,
}

/// `data` of `orders` (schemas/events/orders.json).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderData<'a> {
    order_id: Shown<'a, flashsale_proto::OrderId>,
    reservation_id: Shown<'a, flashsale_proto::ReservationId>,
    user_id: &'a str,
    sku_id: &'a str,
    quantity: u32,
    /// Like the API's `totalPrice`: a JSON number with two decimals.
    total_price: f64,
    payment_transaction_id: &'a str,
    payment_method: &'static str,
    shipping_address: &'a str,
    status: &'static str,
    created_at: Rfc3339,
}

/// `data` of `inventory-updates` (schemas/events/inventory-updates.json).
#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct InventoryData<'a> {
    sku_id: &'a str,
    available_count: u64,
    total_inventory: u64,
    held: u64,
    sold: u64,
    sold_out: bool,
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
    let mut buf = [0u8; 24];
    if let Some(t) = rfc3339_into(ms, &mut buf) {
        return t.to_string();
    }
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// [`rfc3339`] into `buf` for years 0-9999 (`YYYY-MM-DDTHH:MM:SS.mmmZ`, 24 bytes), the
/// same text as chrono's `%Y-%m-%dT%H:%M:%S%.3fZ` without parsing a format per call;
/// `None` outside those years (then chrono writes it).
fn rfc3339_into(ms: UnixMs, buf: &mut [u8; 24]) -> Option<&str> {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    put(20, (ms % 1000) as u32, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        buf[at] = c;
    }
    std::str::from_utf8(buf).ok()
}

fn reservation_data(v: &ReservationView) -> ReservationData<'_> {
    ReservationData {
        reservation_id: Shown(&v.id),
        user_id: v.user.as_str(),
        sku_id: v.sku.as_str(),
        quantity: v.quantity,
        status: v.status.as_str(),
        created_at: Rfc3339(v.created_at),
        expires_at: Rfc3339(v.expires_at),
    }
}

fn order_data(o: &OrderView) -> OrderData<'_> {
    OrderData {
        order_id: Shown(&o.order_id),
        reservation_id: Shown(&o.reservation_id),
        user_id: o.user.as_str(),
        sku_id: o.sku.as_str(),
        quantity: o.quantity,
        total_price: o.total_price.0 as f64 / 100.0,
        payment_transaction_id: &o.payment_transaction_id,
        payment_method: o.payment_method.as_str(),
        shipping_address: &o.shipping_address,
        status: "PAID",
        created_at: Rfc3339(o.created_at),
    }
}

fn inventory_data(sku: &str, total: u64, held: u64, sold: u64) -> InventoryData<'_> {
    let available = total.saturating_sub(held).saturating_sub(sold);
    InventoryData {
        sku_id: sku,
        available_count: available,
        total_inventory: total,
        held,
        sold,
        sold_out: available == 0,
    }
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
    fn record<D: Serialize>(
        origin: &Origin,
        channel: Channel,
        (id, ty, time, subject): (&str, &str, UnixMs, &str),
        data: D,
    ) -> Outgoing {
        let envelope = Envelope {
            specversion: SPEC_VERSION,
            id,
            source: &origin.source,
            ty,
            time: Rfc3339(time),
            subject,
            datacontenttype: CONTENT_TYPE,
            data,
        };
        Outgoing {
            channel,
            key: subject.to_string(),
            value: serde_json::to_vec(&envelope).expect("a CloudEvent always serializes"),
        }
    }
    for rec in records {
        for (n, ev) in rec.events.iter().enumerate() {
            let id = || format!("{}/{}/{}/{n}", origin.log_id, rec.partition, rec.offset);
            match ev {
                Event::Reservation(v) => out.push(record(
                    origin,
                    Channel::Reservations,
                    (
                        &id(),
                        reservation_type(&rec.events, n, v),
                        rec.log_time,
                        v.sku.as_str(),
                    ),
                    reservation_data(v),
                )),
                Event::OrderCreated(o) => out.push(record(
                    origin,
                    Channel::Orders,
                    (
                        &id(),
                        "com.flashsale.order.created",
                        rec.log_time,
                        o.sku.as_str(),
                    ),
                    order_data(o),
                )),
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
        let mut push = |id: &str, ty: &str| {
            out.push(record(
                origin,
                Channel::InventoryUpdates,
                (id, ty, i.time, i.sku),
                data,
            ))
        };
        push(&i.id, "com.flashsale.inventory.updated");
        if let Some((suffix, ty)) = crossing {
            push(&format!("{}/{suffix}", i.id), ty);
        }
    }
    out
}

#[cfg(test)]
mod tests;
