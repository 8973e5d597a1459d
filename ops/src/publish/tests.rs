//! The pure mapping, fed by the real core: what `State::apply` emits for holds,
//! extensions, checkouts, cancels, expiries and an inventory adjustment becomes the
//! documented public events, each valid against its schema (schemas/events/).

use super::*;
use flashsale_core::State;
use flashsale_proto::{
    Cents, CheckoutRequest, Command, CommandRecord, PaymentMethod, ProductSpec, Reply, RequestId,
    ReservationId, SaleConfig, SaleId, SaleMeta, SkuId, UserId,
};

const T0: u64 = 1_800_000_000_000;

struct Log {
    state: State,
    offset: u64,
    records: Vec<EventRecord>,
}

impl Log {
    fn new(total: u64) -> Self {
        let sku = SkuId::parse("SKU-1").unwrap();
        let mut log = Log {
            state: State::new(0),
            offset: 0,
            records: Vec::new(),
        };
        let cfg = SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(1),
                name: "s".into(),
                starts_at: 0,
                ends_at: T0 * 2,
                reservation_ttl_s: 60,
                all_skus: vec![sku.clone()],
            },
            products: vec![ProductSpec {
                sku,
                name: "n".into(),
                description: "d".into(),
                category: "c".into(),
                base_price: Cents(2000),
                flash_sale_price: Cents(1250),
                total_inventory: total,
                per_user_limit: 5,
                image_url: "https://x/i.png".into(),
            }],
        };
        log.apply(T0, 0, Command::ConfigureSale(cfg));
        log
    }

    fn apply(&mut self, time: u64, request: u128, command: Command) -> Reply {
        let rec = CommandRecord {
            request_id: RequestId(request),
            reply_to: 0,
            idempotency_key: None,
            command,
        };
        let mut events = Vec::new();
        let reply = self.state.apply(self.offset, time, &rec, &mut events);
        self.records.push(EventRecord {
            partition: 0,
            offset: self.offset,
            log_time: time,
            events,
        });
        self.offset += 1;
        reply
    }

    fn reserve(&mut self, time: u64, request: u128, user: &str, q: u32) -> ReservationId {
        match self.apply(
            time,
            request,
            Command::Reserve {
                user: UserId::parse(user).unwrap(),
                sku: SkuId::parse("SKU-1").unwrap(),
                quantity: q,
            },
        ) {
            Reply::Reserved { reservation, .. } => reservation.id,
            r => panic!("not reserved: {r:?}"),
        }
    }
}

fn origin() -> Origin {
    Origin::new("t.events", "t.events/AAAAAAAAAAAAAAAAAAAAAA")
}

fn types(out: &[Outgoing]) -> Vec<String> {
    out.iter().map(|o| o.event().ty).collect()
}

fn validators() -> Vec<(Channel, jsonschema::Validator)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
    Channel::ALL
        .into_iter()
        .map(|c| {
            let text = std::fs::read_to_string(dir.join(c.schema_file())).unwrap();
            let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
            let v = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", c.schema_file()));
            (c, v)
        })
        .collect()
}

fn assert_valid(out: &[Outgoing]) {
    let validators = validators();
    for o in out {
        let (_, v) = validators.iter().find(|(c, _)| *c == o.channel).unwrap();
        let value: serde_json::Value = serde_json::from_slice(o.value()).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        assert_eq!(o.key, o.event().subject, "the key is the skuId");
    }
}

#[test]
fn every_reservation_change_maps_to_its_type_and_validates() {
    let mut log = Log::new(3);
    let a = log.reserve(T0 + 1, 10, "u1", 1);
    let b = log.reserve(T0 + 2, 11, "u2", 2); // sold out now
    let extended = log.apply(
        T0 + 3,
        12,
        Command::Extend {
            reservation: a,
            seconds: Some(120),
        },
    );
    assert!(matches!(extended, Reply::Extended { .. }), "{extended:?}");
    let checkout = log.apply(
        T0 + 4,
        13,
        Command::Checkout(CheckoutRequest {
            reservation: a,
            payment_transaction_id: "pay_1".into(),
            payment_method: PaymentMethod::Upi,
            shipping_address: "1 Main St".into(),
        }),
    );
    assert!(matches!(checkout, Reply::CheckedOut { .. }), "{checkout:?}");
    assert!(matches!(
        log.apply(T0 + 5, 14, Command::Cancel { reservation: b }),
        Reply::Cancelled { .. }
    ));
    log.reserve(T0 + 6, 15, "u3", 1);
    // that hold expires: a tick after its TTL (60 s)
    log.apply(T0 + 6 + 61_000, 16, Command::Tick);

    let origin = origin();
    let per_record: Vec<Vec<Outgoing>> = log
        .records
        .iter()
        .map(|r| map_batch(&origin, std::slice::from_ref(r)))
        .collect();
    let t: Vec<Vec<String>> = per_record.iter().map(|o| types(o)).collect();
    assert_eq!(
        t[0],
        ["com.flashsale.inventory.updated"],
        "a configured product's stock, no crossing guessed"
    );
    assert_eq!(per_record[0][0].event().data["availableCount"], 3);
    assert_eq!(
        t[1],
        [
            "com.flashsale.reservation.created",
            "com.flashsale.inventory.updated"
        ]
    );
    assert_eq!(
        t[2],
        [
            "com.flashsale.reservation.created",
            "com.flashsale.inventory.updated",
            "com.flashsale.inventory.sold-out"
        ]
    );
    assert_eq!(t[3], ["com.flashsale.reservation.extended"]);
    assert_eq!(
        t[4],
        [
            "com.flashsale.reservation.confirmed",
            "com.flashsale.order.created",
            "com.flashsale.inventory.updated"
        ]
    );
    assert_eq!(
        t[5],
        [
            "com.flashsale.reservation.cancelled",
            "com.flashsale.inventory.updated",
            "com.flashsale.inventory.back-in-stock"
        ],
        "the cancel freed 2 units of a sold-out SKU"
    );
    assert_eq!(
        t[6],
        [
            "com.flashsale.reservation.created",
            "com.flashsale.inventory.updated"
        ]
    );
    assert_eq!(
        t[7],
        [
            "com.flashsale.reservation.expired",
            "com.flashsale.inventory.updated"
        ]
    );

    let all: Vec<Outgoing> = per_record.into_iter().flatten().collect();
    assert_valid(&all);
    let order = all.iter().find(|o| o.channel == Channel::Orders).unwrap();
    assert_eq!(order.event().data["totalPrice"], serde_json::json!(12.5));
    assert_eq!(order.event().data["reservationId"], a.to_string());
    assert_eq!(order.event().subject, "SKU-1");
    // ids: log id, partition, command offset, index; unique
    assert_eq!(all[0].event().id, "t.events/AAAAAAAAAAAAAAAAAAAAAA/0/0/1");
    assert_eq!(all[1].event().id, "t.events/AAAAAAAAAAAAAAAAAAAAAA/0/1/0");
    let mut ids: Vec<String> = all.iter().map(|o| o.event().id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "ids are unique");
    assert_eq!(all[1].event().time, "2027-01-15T08:00:00.001Z");
}

#[test]
fn one_inventory_update_per_sku_per_batch_and_the_same_ids_again() {
    let mut log = Log::new(10);
    for i in 0..5u128 {
        log.reserve(T0 + 1 + i as u64, 100 + i, &format!("u{i}"), 2);
    }
    let origin = origin();
    let batch = &log.records[1..];
    let out = map_batch(&origin, batch);
    let inv: Vec<&Outgoing> = out
        .iter()
        .filter(|o| o.channel == Channel::InventoryUpdates)
        .collect();
    assert_eq!(
        types(&out)
            .iter()
            .filter(|t| t.ends_with("created"))
            .count(),
        5
    );
    assert_eq!(
        inv.iter().map(|o| o.event().ty).collect::<Vec<_>>(),
        [
            "com.flashsale.inventory.updated",
            "com.flashsale.inventory.sold-out"
        ],
        "one update for the batch, with the crossing to zero"
    );
    assert_eq!(inv[0].event().data["availableCount"], 0);
    assert_eq!(inv[0].event().data["held"], 10);
    assert_eq!(inv[0].event().data["soldOut"], true);
    // the id of the batch's last change of the SKU
    assert_eq!(inv[0].event().id, "t.events/AAAAAAAAAAAAAAAAAAAAAA/0/5/1");
    assert_eq!(
        inv[1].event().id,
        "t.events/AAAAAAAAAAAAAAAAAAAAAA/0/5/1/sold-out"
    );
    // pure: the same log gives the same records
    assert_eq!(map_batch(&origin, batch), out);
    assert_valid(&out);
}

#[test]
fn an_operator_adjustment_updates_the_count_without_a_guessed_crossing() {
    let mut log = Log::new(1);
    log.reserve(T0 + 1, 7, "u1", 1);
    let r = log.apply(
        T0 + 2,
        8,
        Command::AdjustInventory {
            sku: SkuId::parse("SKU-1").unwrap(),
            delta: 4,
        },
    );
    assert!(matches!(r, Reply::ProductControlled(_)), "{r:?}");
    let out = map_batch(&origin(), &log.records[2..]);
    assert_eq!(types(&out), ["com.flashsale.inventory.updated"]);
    assert_eq!(out[0].event().data["availableCount"], 4);
    assert_eq!(out[0].event().data["totalInventory"], 5);
    assert_valid(&out);
}

#[test]
fn topics_and_channels() {
    assert_eq!(
        Channel::Reservations.topic("flashsale."),
        "flashsale.reservations"
    );
    assert_eq!(
        Channel::of_topic("p.", "p.inventory-updates"),
        Some(Channel::InventoryUpdates)
    );
    assert_eq!(Channel::of_topic("p.", "p.events"), None);
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
}

/// The records are written straight from typed parts (no `serde_json::Value`): the same
/// JSON as the envelope read back and written again, fields in the documented order,
/// and the times as chrono's `%Y-%m-%dT%H:%M:%S%.3fZ`.
#[test]
fn typed_encoding_writes_the_documented_fields_in_order() {
    let mut log = Log::new(3);
    let a = log.reserve(T0 + 1, 10, "u1", 1);
    let checkout = log.apply(
        T0 + 2,
        11,
        Command::Checkout(CheckoutRequest {
            reservation: a,
            payment_transaction_id: "pay_1".into(),
            payment_method: PaymentMethod::Upi,
            shipping_address: "1 \"Main\" St\n".into(),
        }),
    );
    assert!(matches!(checkout, Reply::CheckedOut { .. }), "{checkout:?}");
    let out = map_batch(&origin(), &log.records);
    assert!(out.len() >= 3, "{out:?}");
    for o in &out {
        let ev = o.event();
        assert_eq!(serde_json::to_vec(&ev).unwrap(), o.value, "{ev:?}");
        let keys: Vec<&str> = ev
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let want: &[&str] = match o.channel {
            Channel::Reservations => &[
                "reservationId",
                "userId",
                "skuId",
                "quantity",
                "status",
                "createdAt",
                "expiresAt",
            ],
            Channel::Orders => &[
                "orderId",
                "reservationId",
                "userId",
                "skuId",
                "quantity",
                "totalPrice",
                "paymentTransactionId",
                "paymentMethod",
                "shippingAddress",
                "status",
                "createdAt",
            ],
            Channel::InventoryUpdates => &[
                "skuId",
                "availableCount",
                "totalInventory",
                "held",
                "sold",
                "soldOut",
            ],
        };
        assert_eq!(keys, want, "{ev:?}");
    }
    let order = out.iter().find(|o| o.channel == Channel::Orders).unwrap();
    assert_eq!(
        order.event().data["shippingAddress"],
        "1 \"Main\" St\n",
        "escaped and read back"
    );
    for ms in [
        0u64,
        1,
        999,
        1_000,
        T0,
        T0 + 123,
        253_402_300_799_999,
        253_402_300_800_000,
    ] {
        let chrono = chrono::DateTime::from_timestamp_millis(ms as i64)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        assert_eq!(rfc3339(ms), chrono, "{ms}");
    }
}
