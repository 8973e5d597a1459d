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
//!
//! Version 4 (compact state, issue 29): holds are fixed-size records keyed by ULID with
//! interned SKUs, orders in their own map, idempotency keys naming only their
//! reservation. Versions 3 and 2 are still read: decoded in their own layout
//! ([`StateV3`]) and converted ([`StateV3::upgrade`]); the state is the same.

use crate::core::{Hold, OrderRecord, Product, State};
use crate::invariants::{check_state, Violation};
use crate::keys::IdempotencyKeys;
use compact_str::CompactString;
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const MAGIC: &[u8; 4] = b"FSNP";
/// 2: products carry `max_hold_ms` and `paused` (issue 14); a version-1 snapshot is
/// refused (never misread as the new layout).
/// 3: the state keeps its ended-reservation index, retention and pruned count (issue
/// 15); version 2 is still read ([`decode`]).
/// 4: compact holds, interned SKUs, orders apart (issue 29); 3 and 2 still read.
pub const SNAPSHOT_VERSION: u8 = 4;
/// Earlier formats, still read.
pub const SNAPSHOT_VERSION_3: u8 = 3;
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
    if ![SNAPSHOT_VERSION, SNAPSHOT_VERSION_3, SNAPSHOT_VERSION_2].contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body = &bytes[9..];
    let computed = checksum(body);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let (mut state, used): (State, usize) = match version {
        SNAPSHOT_VERSION_2 => {
            let (v2, used): (StateV2, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| SnapshotError::Decode(e.to_string()))?;
            (v2.upgrade().upgrade()?, used)
        }
        SNAPSHOT_VERSION_3 => {
            let (v3, used): (StateV3, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| SnapshotError::Decode(e.to_string()))?;
            (v3.upgrade()?, used)
        }
        _ => bincode::serde::decode_from_slice(body, config())
            .map_err(|e| SnapshotError::Decode(e.to_string()))?,
    };
    state.reindex().map_err(SnapshotError::Decode)?;
    if let Some(bad) = state
        .reservations
        .values()
        .chain(state.orders.values())
        .find(|h| h.sku as usize >= state.skus.len())
    {
        return Err(SnapshotError::Decode(format!(
            "a reservation names SKU index {}, of {} interned",
            bad.sku,
            state.skus.len()
        )));
    }
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

/// A reservation as versions 2 and 3 wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReservationV3 {
    id: ReservationId,
    user: UserId,
    sku: SkuId,
    quantity: u32,
    status: ReservationStatus,
    created_at: UnixMs,
    expires_at: UnixMs,
    order: Option<Box<OrderRecord>>,
}

/// An idempotency entry as versions 2 and 3 wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyV3 {
    user: UserId,
    sku: SkuId,
    quantity: u32,
    reservation: ReservationId,
}

/// The state as version 3 wrote it (bincode is positional: same fields, same order).
#[derive(serde::Serialize, serde::Deserialize)]
struct StateV3 {
    partition: u16,
    clock: UnixMs,
    next_offset: u64,
    sales: BTreeMap<SaleId, SaleMeta>,
    products: FxHashMap<SkuId, Product>,
    #[serde(deserialize_with = "crate::presized::map")]
    reservations: FxHashMap<ReservationId, ReservationV3>,
    expiries: BTreeMap<u64, VecDeque<(UnixMs, ReservationId)>>,
    live: u64,
    #[serde(deserialize_with = "crate::presized::map")]
    idempotency: FxHashMap<String, IdempotencyV3>,
    idempotency_fifo: VecDeque<(UnixMs, String)>,
    ended: VecDeque<(UnixMs, ReservationId)>,
    deferred: BTreeSet<(UnixMs, ReservationId)>,
    retention_ms: u64,
    pruned_total: u64,
}

impl StateV3 {
    /// The same state in the compact layout. SKUs are interned in sorted order (the
    /// same snapshot always gives the same state).
    fn upgrade(self) -> Result<State, SnapshotError> {
        let mut s = State::new(self.partition);
        s.clock = self.clock;
        s.next_offset = self.next_offset;
        s.sales = self.sales;
        let mut skus: BTreeSet<SkuId> = self.products.keys().cloned().collect();
        skus.extend(self.reservations.values().map(|r| r.sku.clone()));
        for sku in &skus {
            s.intern_sku(sku);
        }
        let ix: FxHashMap<SkuId, u32> = skus.into_iter().zip(0..).collect();
        s.products = self.products;
        s.reservations.reserve(self.reservations.len());
        for (id, r) in self.reservations {
            let hold = Hold {
                user: r.user,
                created_at: r.created_at,
                expires_at: r.expires_at,
                order: r.order,
                sku: ix[&r.sku],
                quantity: r.quantity,
                status: r.status,
            };
            if hold.status == ReservationStatus::Confirmed {
                s.orders.insert(id.ulid, hold);
            } else {
                s.reservations.insert(id.ulid, hold);
            }
        }
        s.expiries = self
            .expiries
            .into_iter()
            .map(|(k, q)| (k, q.into_iter().map(|(t, id)| (t, id.ulid)).collect()))
            .collect();
        s.live = self.live;
        // Version 3 kept a key in a map and a FIFO, one to one.
        let keys = self.idempotency_fifo.into_iter().filter_map(|(t, k)| {
            let ulid = self.idempotency.get(&k)?.reservation.ulid;
            Some((t, CompactString::from(k), ulid))
        });
        s.idempotency =
            Box::new(IdempotencyKeys::from_entries(keys).ok_or_else(|| {
                SnapshotError::Decode("an idempotency key is listed twice".into())
            })?);
        s.ended = self.ended.into_iter().map(|(t, id)| (t, id.ulid)).collect();
        s.deferred = self
            .deferred
            .into_iter()
            .map(|(t, id)| (t, id.ulid))
            .collect();
        s.retention_ms = self.retention_ms;
        s.pruned_total = self.pruned_total;
        Ok(s)
    }

    /// `state` in the version-3 layout (tests of the upgrade path).
    fn downgrade(state: &State) -> StateV3 {
        let rid = |ulid: u128| ReservationId {
            partition: state.partition,
            ulid,
        };
        let reservations = state
            .reservations()
            .map(|r| {
                (
                    r.id(),
                    ReservationV3 {
                        id: r.id(),
                        user: r.user().clone(),
                        sku: r.sku().clone(),
                        quantity: r.quantity(),
                        status: r.status(),
                        created_at: r.created_at(),
                        expires_at: r.expires_at(),
                        order: r.order().map(|o| Box::new(o.clone())),
                    },
                )
            })
            .collect();
        let idempotency = state
            .idempotency
            .iter()
            .map(|(k, ulid)| {
                let r = state.reservation(&rid(ulid)).expect("a key names a hold");
                (
                    k.to_string(),
                    IdempotencyV3 {
                        user: r.user().clone(),
                        sku: r.sku().clone(),
                        quantity: r.quantity(),
                        reservation: r.id(),
                    },
                )
            })
            .collect();
        StateV3 {
            partition: state.partition,
            clock: state.clock,
            next_offset: state.next_offset,
            sales: state.sales.clone(),
            products: state.products.clone(),
            reservations,
            expiries: state
                .expiries
                .iter()
                .map(|(k, q)| (*k, q.iter().map(|&(t, u)| (t, rid(u))).collect()))
                .collect(),
            live: state.live,
            idempotency,
            idempotency_fifo: state
                .idempotency
                .entries()
                .map(|(t, k, _)| (*t, k.to_string()))
                .collect(),
            ended: state.ended.iter().map(|&(t, u)| (t, rid(u))).collect(),
            deferred: state.deferred.iter().map(|&(t, u)| (t, rid(u))).collect(),
            retention_ms: state.retention_ms,
            pruned_total: state.pruned_total,
        }
    }
}

/// The state as version 2 wrote it: version 3's fields up to `idempotency_fifo`.
#[derive(serde::Deserialize)]
struct StateV2 {
    partition: u16,
    clock: UnixMs,
    next_offset: u64,
    sales: BTreeMap<SaleId, SaleMeta>,
    products: FxHashMap<SkuId, Product>,
    #[serde(deserialize_with = "crate::presized::map")]
    reservations: FxHashMap<ReservationId, ReservationV3>,
    expiries: BTreeMap<u64, VecDeque<(UnixMs, ReservationId)>>,
    live: u64,
    #[serde(deserialize_with = "crate::presized::map")]
    idempotency: FxHashMap<String, IdempotencyV3>,
    idempotency_fifo: VecDeque<(UnixMs, String)>,
}

impl StateV2 {
    /// Version 2 did not record when a hold ended: every expired or cancelled one counts
    /// as ended at the snapshot's clock (in id order), and is pruned one retention later.
    fn upgrade(self) -> StateV3 {
        let mut ended: Vec<ReservationId> = self
            .reservations
            .values()
            .filter(|r| {
                matches!(
                    r.status,
                    ReservationStatus::Expired | ReservationStatus::Cancelled
                )
            })
            .map(|r| r.id)
            .collect();
        ended.sort_unstable();
        StateV3 {
            partition: self.partition,
            clock: self.clock,
            next_offset: self.next_offset,
            sales: self.sales,
            products: self.products,
            reservations: self.reservations,
            expiries: self.expiries,
            live: self.live,
            idempotency: self.idempotency,
            idempotency_fifo: self.idempotency_fifo,
            ended: ended.into_iter().map(|id| (self.clock, id)).collect(),
            deferred: BTreeSet::new(),
            retention_ms: crate::core::IDEMPOTENCY_RETENTION_MS,
            pruned_total: 0,
        }
    }
}

fn framed(version: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes `state` in the version-3 layout (tests of the upgrade path only).
#[doc(hidden)]
pub fn encode_v3(state: &State) -> Vec<u8> {
    let v3 = StateV3::downgrade(state);
    framed(
        SNAPSHOT_VERSION_3,
        bincode::serde::encode_to_vec(&v3, config()).expect("a state encodes"),
    )
}

/// Encodes `state` in the version-2 layout (tests of the upgrade path only).
#[doc(hidden)]
pub fn encode_v2(state: &State) -> Vec<u8> {
    let v3 = StateV3::downgrade(state);
    let body = bincode::serde::encode_to_vec(
        (
            v3.partition,
            v3.clock,
            v3.next_offset,
            &v3.sales,
            &v3.products,
            &v3.reservations,
            &v3.expiries,
            v3.live,
            &v3.idempotency,
            &v3.idempotency_fifo,
        ),
        config(),
    )
    .expect("a state encodes");
    framed(SNAPSHOT_VERSION_2, body)
}
