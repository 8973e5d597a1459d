//! `DeleteSale` in the pure core: a sale no reservation touched is removed and its
//! SKUs are free for another sale; once any reservation of it exists (even a cancelled
//! one) it is refused with the count; what the reply says was removed restores the
//! partition exactly; a SKU taken by another sale names that sale.

use flashsale_core::{check_state, snapshot, State};
use flashsale_proto::*;

const T0: u64 = 1_700_000_000_000;

struct Part {
    state: State,
    offset: u64,
    request: u128,
}

impl Part {
    fn new() -> Self {
        Part {
            state: State::new(0),
            offset: 0,
            request: 1,
        }
    }

    fn apply(&mut self, command: Command) -> (Reply, Vec<Event>) {
        let rec = CommandRecord {
            request_id: RequestId(self.request),
            reply_to: 0,
            idempotency_key: None,
            command,
        };
        self.request += 1;
        let mut events = Vec::new();
        let reply = self
            .state
            .apply(self.offset, T0 + self.offset, &rec, &mut events);
        self.offset += 1;
        assert!(check_state(&self.state).is_empty(), "invariants hold");
        (reply, events)
    }
}

fn sku(s: &str) -> SkuId {
    SkuId::parse(s).unwrap()
}

fn sale(id: u128, skus: &[&str], starts_at: u64) -> SaleConfig {
    let all: Vec<SkuId> = skus.iter().map(|s| sku(s)).collect();
    SaleConfig {
        sale: SaleMeta {
            sale_id: SaleId(id),
            name: format!("sale {id}"),
            starts_at,
            ends_at: starts_at + 3_600_000,
            reservation_ttl_s: 120,
            all_skus: all.clone(),
        },
        products: all
            .into_iter()
            .map(|sku| ProductSpec {
                sku,
                name: "p".into(),
                description: String::new(),
                category: "Electronics".into(),
                base_price: Cents(1000),
                flash_sale_price: Cents(900),
                total_inventory: 10,
                per_user_limit: 2,
                image_url: String::new(),
            })
            .collect(),
    }
}

#[test]
fn an_untouched_sale_is_removed_and_its_skus_are_free() {
    let mut p = Part::new();
    // dates in the past: accepted, and exactly the mistake deletion is for
    let cfg = sale(7, &["A", "B"], T0 - 10 * 3_600_000);
    let (r, _) = p.apply(Command::ConfigureSale(cfg.clone()));
    assert_eq!(r, Reply::SaleConfigured { sale_id: SaleId(7) });

    let (r, events) = p.apply(Command::DeleteSale { sale_id: SaleId(7) });
    let Reply::SaleDeleted {
        sale_id,
        removed: Some(removed),
    } = r.clone()
    else {
        panic!("expected SaleDeleted with what was removed, got {r:?}");
    };
    assert_eq!(sale_id, SaleId(7));
    assert_eq!(removed.config, cfg);
    assert_eq!(removed.max_hold_s, 240, "the default max hold, 2 x TTL");
    assert!(removed.paused.is_empty());
    assert_eq!(
        events,
        vec![Event::SaleDropped {
            sale_id: SaleId(7),
            skus: vec![sku("A"), sku("B")]
        }]
    );
    assert!(p.state.product(&sku("A")).is_none());
    assert_eq!(p.state.sales().count(), 0);

    // a repeat changes nothing and says nothing was here
    let (r, events) = p.apply(Command::DeleteSale { sale_id: SaleId(7) });
    assert_eq!(
        r,
        Reply::SaleDeleted {
            sale_id: SaleId(7),
            removed: None
        }
    );
    assert!(events.is_empty());

    // the SKUs are free for another sale
    let (r, _) = p.apply(Command::ConfigureSale(sale(8, &["A"], T0)));
    assert_eq!(r, Reply::SaleConfigured { sale_id: SaleId(8) });

    // and the state still round-trips through a snapshot
    let bytes = snapshot::encode(&p.state).unwrap();
    assert_eq!(snapshot::decode(&bytes).unwrap(), p.state);
}

#[test]
fn any_reservation_even_a_cancelled_one_refuses_the_deletion_with_the_count() {
    let mut p = Part::new();
    p.apply(Command::ConfigureSale(sale(7, &["A", "B"], T0 - 1000)));
    let mut ids = Vec::new();
    for user in ["u1", "u2"] {
        let (r, _) = p.apply(Command::Reserve {
            user: UserId::parse(user).unwrap(),
            sku: sku("B"),
            quantity: 1,
        });
        let Reply::Reserved { reservation, .. } = r.clone() else {
            panic!("reserve: {r:?}");
        };
        ids.push(reservation.id);
    }
    for id in ids {
        let (r, _) = p.apply(Command::Cancel { reservation: id });
        assert!(matches!(r, Reply::Cancelled { .. }), "{r:?}");
    }
    // nothing held or sold any more, but reservations exist
    assert_eq!(p.state.product(&sku("B")).unwrap().held(), 0);
    let (r, events) = p.apply(Command::DeleteSale { sale_id: SaleId(7) });
    assert_eq!(
        r,
        Reply::Rejected(Rejection::SaleHasReservations {
            sale_id: SaleId(7),
            reservations: 2
        })
    );
    assert!(events.is_empty());
    assert!(p.state.product(&sku("A")).is_some(), "nothing removed");
    assert_eq!(p.state.sales().count(), 1);
}

#[test]
fn the_removed_part_restores_the_partition_exactly() {
    let mut p = Part::new();
    p.apply(Command::ConfigureSaleWith {
        config: sale(7, &["A", "B"], T0 + 3_600_000),
        max_hold_s: 300,
    });
    p.apply(Command::PauseProduct { sku: sku("B") });
    p.apply(Command::AdjustInventory {
        sku: sku("A"),
        delta: 5,
    });
    let before: Vec<_> = ["A", "B"]
        .iter()
        .map(|s| p.state.product(&sku(s)).unwrap().clone())
        .collect();
    let (r, _) = p.apply(Command::DeleteSale { sale_id: SaleId(7) });
    let Reply::SaleDeleted {
        removed: Some(removed),
        ..
    } = r.clone()
    else {
        panic!("{r:?}");
    };
    assert_eq!(removed.paused, vec![sku("B")]);
    assert_eq!(removed.config.products[0].total_inventory, 15);
    p.apply(Command::ConfigureSaleWith {
        config: removed.config,
        max_hold_s: removed.max_hold_s,
    });
    for s in removed.paused {
        p.apply(Command::PauseProduct { sku: s });
    }
    let after: Vec<_> = ["A", "B"]
        .iter()
        .map(|s| p.state.product(&sku(s)).unwrap().clone())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_taken_sku_names_the_sale_that_owns_it() {
    let mut p = Part::new();
    p.apply(Command::ConfigureSale(sale(7, &["A"], T0)));
    let (r, _) = p.apply(Command::ConfigureSale(sale(9, &["C", "A"], T0)));
    assert_eq!(
        r,
        Reply::Rejected(Rejection::SkuTaken {
            sku: sku("A"),
            sale_id: SaleId(7)
        })
    );
    assert!(p.state.product(&sku("C")).is_none(), "all or nothing");
}
