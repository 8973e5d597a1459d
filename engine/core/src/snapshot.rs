//! Snapshot encoding: a checksummed, versioned image of one partition's [`State`].
//!
//! Layout: `b"FSNP"`, format version (1 byte), CRC-32 of the body (4 bytes LE), body =
//! `flashsale_proto::encode(&State)`. [`encode`] refuses to write a state that fails
//! the invariants; [`decode`] refuses one that fails the checksum, the decoding or the
//! invariants. A bad snapshot is never loaded.
//!
//! Version 3 (bounded state, issue 15) adds the ended-reservation index, the retention
//! and the pruned count at the end of the state. A version-2 snapshot is still read: its
//! expired and cancelled reservations count as ended at the snapshot's clock, so they
//! are pruned one retention after it (the same snapshot always gives the same state).

use crate::core::{Product, Reservation, State};
use crate::invariants::{check_state, Violation};
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};

pub const MAGIC: &[u8; 4] = b"FSNP";
/// 2: products carry `max_hold_ms` and `paused` (issue 14); a version-1 snapshot is
/// refused (never misread as the new layout).
/// 3: the state keeps its ended-reservation index, retention and pruned count (issue
/// 15); version 2 is still read ([`decode`]).
pub const SNAPSHOT_VERSION: u8 = 3;
/// The previous format, still read.
pub const SNAPSHOT_VERSION_2: u8 = 2;
/// Snapshots may be far larger than one message (a million holds).
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a flashsale snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {0} is not supported")]
    Version(u8),
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    #[error("snapshot state breaks {} invariant(s), first: {}", .0.len(), .0[0])]
    Invariants(Vec<Violation>),
}

/// CRC-32 (IEEE) of a snapshot body; shown by `flashsale snapshot list`.
pub fn checksum(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>()
}

/// Encodes a state after checking every invariant on it.
pub fn encode(state: &State) -> Result<Vec<u8>, SnapshotError> {
    let v = check_state(state);
    if !v.is_empty() {
        return Err(SnapshotError::Invariants(v));
    }
    let body = bincode::serde::encode_to_vec(state, config())
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 9);
    out.extend_from_slice(MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks a snapshot. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<State, SnapshotError> {
    if bytes.len() < 9 || &bytes[..4] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = bytes[4];
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_2 {
        return Err(SnapshotError::Version(version));
    }
    let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body = &bytes[9..];
    let computed = checksum(body);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let (state, used): (State, usize) = if version == SNAPSHOT_VERSION_2 {
        let (v2, used): (StateV2, usize) = bincode::serde::decode_from_slice(body, config())
            .map_err(|e| SnapshotError::Decode(e.to_string()))?;
        (v2.upgrade(), used)
    } else {
        bincode::serde::decode_from_slice(body, config())
            .map_err(|e| SnapshotError::Decode(e.to_string()))?
    };
    if used != body.len() {
        return Err(SnapshotError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    let v = check_state(&state);
    if !v.is_empty() {
        return Err(SnapshotError::Invariants(v));
    }
    Ok(state)
}

/// The state as version 2 wrote it: [`State`]'s fields up to `idempotency_fifo`, in the
/// same order and types (bincode is positional).
#[derive(serde::Deserialize)]
struct StateV2 {
    partition: u16,
    clock: UnixMs,
    next_offset: u64,
    sales: BTreeMap<SaleId, SaleMeta>,
    products: FxHashMap<SkuId, Product>,
    #[serde(deserialize_with = "crate::presized::map")]
    reservations: FxHashMap<ReservationId, Reservation>,
    expiries: BTreeMap<u64, VecDeque<(UnixMs, ReservationId)>>,
    live: u64,
    #[serde(deserialize_with = "crate::presized::map")]
    idempotency: FxHashMap<String, crate::core::IdempotencyEntry>,
    idempotency_fifo: VecDeque<(UnixMs, String)>,
}

impl StateV2 {
    /// Version 2 did not record when a hold ended: every expired or cancelled one counts
    /// as ended at the snapshot's clock (in id order), and is pruned one retention later.
    fn upgrade(self) -> State {
        let mut ended: Vec<ReservationId> = self
            .reservations
            .values()
            .filter(|r| {
                matches!(
                    r.status(),
                    ReservationStatus::Expired | ReservationStatus::Cancelled
                )
            })
            .map(|r| r.id())
            .collect();
        ended.sort_unstable();
        let mut s = State::new(self.partition);
        s.clock = self.clock;
        s.next_offset = self.next_offset;
        s.sales = self.sales;
        s.products = self.products;
        s.reservations = self.reservations;
        s.expiries = self.expiries;
        s.live = self.live;
        s.idempotency = self.idempotency;
        s.idempotency_fifo = self.idempotency_fifo;
        s.ended = ended.into_iter().map(|id| (self.clock, id)).collect();
        s
    }
}

/// Encodes `state` in the version-2 layout (tests of the upgrade path only).
#[doc(hidden)]
pub fn encode_v2(state: &State) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct V2<'a> {
        partition: u16,
        clock: UnixMs,
        next_offset: u64,
        sales: &'a BTreeMap<SaleId, SaleMeta>,
        products: &'a FxHashMap<SkuId, Product>,
        reservations: &'a FxHashMap<ReservationId, Reservation>,
        expiries: &'a BTreeMap<u64, VecDeque<(UnixMs, ReservationId)>>,
        live: u64,
        idempotency: &'a FxHashMap<String, crate::core::IdempotencyEntry>,
        idempotency_fifo: &'a VecDeque<(UnixMs, String)>,
    }
    let body = bincode::serde::encode_to_vec(
        V2 {
            partition: state.partition,
            clock: state.clock,
            next_offset: state.next_offset,
            sales: &state.sales,
            products: &state.products,
            reservations: &state.reservations,
            expiries: &state.expiries,
            live: state.live,
            idempotency: &state.idempotency,
            idempotency_fifo: &state.idempotency_fifo,
        },
        config(),
    )
    .expect("a state encodes");
    let mut out = Vec::with_capacity(body.len() + 9);
    out.extend_from_slice(MAGIC);
    out.push(SNAPSHOT_VERSION_2);
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}
