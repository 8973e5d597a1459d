//! Command records for the Kafka host's unit tests and simulation.

use flashsale_core::LogRecord;
use flashsale_proto::*;

/// 2025-01-01T10:00:00Z: the log time the tests start at.
pub const T0: u64 = 1_735_725_600_000;

pub fn sku(i: u32) -> SkuId {
    SkuId::parse(&format!("SKU-{i}")).expect("a valid SKU")
}

pub fn user(i: u32) -> UserId {
    UserId::parse(&format!("user{i}")).expect("a valid user id")
}

fn record(request: u128, reply_to: u32, command: Command) -> CommandRecord {
    CommandRecord {
        request_id: RequestId(request << 16),
        reply_to,
        idempotency_key: None,
        command,
    }
}

/// A sale of one product `sku(i)` with `inventory` units, active from T0 for ten hours.
pub fn sale(request: u128, reply_to: u32, i: u32, inventory: u64) -> CommandRecord {
    record(
        request,
        reply_to,
        Command::ConfigureSale(SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(1000 + u128::from(i)),
                name: format!("sale {i}"),
                starts_at: T0 - 1_000,
                ends_at: T0 + 36_000_000,
                reservation_ttl_s: 30,
                all_skus: vec![sku(i)],
            },
            products: vec![ProductSpec {
                sku: sku(i),
                name: format!("product {i}"),
                description: String::new(),
                category: "Electronics".into(),
                base_price: Cents(2_000),
                flash_sale_price: Cents(1_000),
                total_inventory: inventory,
                per_user_limit: 2,
                image_url: String::new(),
            }],
        }),
    )
}

pub fn reserve(request: u128, reply_to: u32, u: u32, i: u32, quantity: u32) -> CommandRecord {
    record(
        request,
        reply_to,
        Command::Reserve {
            user: user(u),
            sku: sku(i),
            quantity,
        },
    )
}

pub fn checkout(request: u128, reply_to: u32, reservation: ReservationId) -> CommandRecord {
    record(
        request,
        reply_to,
        Command::Checkout(CheckoutRequest {
            reservation,
            payment_transaction_id: format!("tx-{request}"),
            payment_method: PaymentMethod::Upi,
            shipping_address: "1 Main St".into(),
        }),
    )
}

pub fn cancel(request: u128, reply_to: u32, reservation: ReservationId) -> CommandRecord {
    record(request, reply_to, Command::Cancel { reservation })
}

pub fn log_record(offset: u64, log_time: u64, cmd: &CommandRecord) -> LogRecord {
    LogRecord {
        offset,
        log_time,
        payload: encode(cmd),
    }
}

/// `cmd` with the client's `Idempotency-Key`.
pub fn with_key(mut cmd: CommandRecord, key: &str) -> CommandRecord {
    cmd.idempotency_key = Some(key.to_string());
    cmd
}

/// One batch record (what a gateway sends for the commands of one partition that
/// arrive together): `[BATCH_FORMAT_VERSION] ++ bincode(Vec<CommandRecord>)`.
pub fn batch_record(offset: u64, log_time: u64, cmds: &[CommandRecord]) -> LogRecord {
    let mut enc = BatchEncoder::new();
    for c in cmds {
        enc.push(c);
    }
    LogRecord {
        offset,
        log_time,
        payload: enc.take(),
    }
}
