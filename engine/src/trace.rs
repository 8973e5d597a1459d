//! The engine's side of a trace: an `engine.apply` span around each record that
//! carries a trace context, a child of the gateway's `command` span (see
//! `flashsale_runtime::telemetry`). Records without one cost nothing extra.

use flashsale_core::actor::{Applied, PartitionActor};
use flashsale_core::LogRecord;
use flashsale_runtime::telemetry::{TraceParent, TRACE_TARGET};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The engine's span of applying one traced record, a child of the gateway's
/// `command` span.
fn engine_span(tp: &TraceParent, partition: u32, offset: u64) -> Span {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "engine.apply",
        otel.kind = "consumer",
        flashsale.partition = partition,
        flashsale.offset = offset,
        flashsale.outcome = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let _ = span.set_parent(tp.context());
    }
    span
}

/// Applies `recs` like [`PartitionActor::apply_batch`], with an `engine.apply` span
/// around each record that carries a trace context. `traces` holds (index into
/// `recs`, context), in index order; empty means plain `apply_batch`.
pub fn apply_traced(
    actor: &mut PartitionActor,
    recs: &[LogRecord],
    traces: &[(usize, TraceParent)],
) -> Applied {
    if traces.is_empty() {
        return actor.apply_batch(recs);
    }
    let partition = actor.partition();
    let mut out = Applied::default();
    let mut next = traces.iter().peekable();
    for (i, rec) in recs.iter().enumerate() {
        let traced = match next.peek() {
            Some((at, tp)) if *at == i => {
                next.next();
                Some(tp)
            }
            _ => None,
        };
        match traced {
            None => actor.apply_record(rec, &mut out),
            Some(tp) => {
                let span = engine_span(tp, partition, rec.offset);
                let _entered = span.enter();
                let replies = out.replies.len();
                actor.apply_record(rec, &mut out);
                if let Some((_, r)) = out.replies.get(replies) {
                    span.record("flashsale.outcome", reply_kind(&r.reply));
                }
            }
        }
    }
    out
}

/// A short, low-cardinality name of a reply (a span attribute).
pub fn reply_kind(reply: &flashsale_proto::Reply) -> &'static str {
    use flashsale_proto::{Rejection, Reply};
    match reply {
        Reply::Reserved { .. } => "reserved",
        Reply::Cancelled { .. } => "cancelled",
        Reply::CheckedOut { .. } => "checked_out",
        Reply::SaleConfigured { .. } => "sale_configured",
        Reply::SaleDropped { .. } => "sale_dropped",
        Reply::Ticked => "ticked",
        Reply::Extended { .. } => "extended",
        Reply::ProductControlled(_) => "product_controlled",
        Reply::SaleEnded { .. } => "sale_ended",
        Reply::SaleDeleted { .. } => "sale_deleted",
        Reply::Rejected(r) => match r {
            Rejection::ProductNotFound { .. } => "product_not_found",
            Rejection::ReservationNotFound { .. } => "reservation_not_found",
            Rejection::SaleNotActive { .. } => "sale_not_active",
            Rejection::PurchaseLimitExceeded { .. } => "limit_exceeded",
            Rejection::OutOfStock { .. } => "out_of_stock",
            Rejection::ReservationExpired { .. } => "reservation_expired",
            Rejection::ReservationNotActive { .. } => "reservation_not_active",
            Rejection::IdempotencyKeyReused => "idempotency_key_reused",
            Rejection::Conflict { .. } => "conflict",
            Rejection::SaleInUse { .. } => "sale_in_use",
            Rejection::Invalid { .. } => "invalid",
            Rejection::ExtensionLimitReached { .. } => "extension_limit_reached",
            Rejection::InventoryConflict { .. } => "inventory_conflict",
            Rejection::ProductPaused { .. } => "product_paused",
            Rejection::SkuTaken { .. } => "conflict",
            Rejection::SaleHasReservations { .. } => "sale_has_reservations",
        },
    }
}
