//! Read-model snapshots: how a Kafka-mode gateway starts in about a second however long
//! the `events` topic is. Instead of rebuilding its read model from offset 0 of every
//! events partition, a gateway loads the newest valid snapshot, seeks each events
//! partition to the offset the snapshot covers, and replays only the tail.
//!
//! - What a snapshot holds: one [`Image`] of the whole read model with, per events
//!   partition, the events offset it covers and the next command offset ([`Mark`]),
//!   encoded as `b"FSRM"`, format version, CRC-32 of the body, bincode body.
//! - Whose: one log, named by the events topic's identity (name + Kafka topic id, as
//!   the engine's snapshots are keyed): a topic deleted and created again, or another
//!   deployment's topics on the same database or directory, never feed this model.
//! - Where: Postgres (`readmodel_snapshots`, migration 0003) when the gateway has
//!   `--postgres`, else files in `<data-dir>/readmodel/<topic>@<topic id>/`. Newest
//!   [`KEEP`] kept; a snapshot is only stored if it covers more than every stored one.
//! - When: every `every_events` events applied or `every` of wall time with events in
//!   between, and once at the end of the start-up replay if it was long ([`Policy`]).
//!   The follower only reads its positions (a few integers) and hands them to a
//!   background thread ([`Writer`]), which copies the maps, encodes and stores; a
//!   writer still busy makes the follower skip that snapshot, never wait.
//! - At start ([`load_newest`]): newest first; a snapshot that fails its checksum,
//!   decoding, partition count or the topic's current offsets is skipped with a
//!   warning naming it and why, falling back to an older one or to offset 0.
//!
//! This file holds the format (encode, decode, checks), the [`ImageStore`] trait, the
//! [`Policy`] and the load at start; the two stores are in `stores`, the background
//! [`Writer`] and the follower's [`Trigger`] in `writer`.

use crate::readmodel::{Image, Mark};
use flashsale_proto::UnixMs;
use flashsale_runtime::pg::PgError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod stores;
mod writer;

pub use stores::{FileImageStore, PgImageStore};
pub use writer::{Trigger, Writer};

pub const MAGIC: &[u8; 4] = b"FSRM";
pub const FORMAT_VERSION: u8 = 1;
/// Largest snapshot read or written (a read model is bounded by the retention; a
/// million live reservations are ~150 MB).
pub const MAX_IMAGE_BYTES: usize = 1 << 31;
/// Snapshots kept per log.
pub const KEEP: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a read-model snapshot (bad magic)")]
    Magic,
    #[error("read-model snapshot format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decode: {0}")]
    Decode(String),
    #[error("made for {found} events partitions, the topic has {expected}")]
    Partitions { found: usize, expected: u32 },
    #[error("partition {partition}: covers events offset {covered}, but the topic holds offsets {low}..{high} (a topic recreated, or records deleted by retention)")]
    Offsets {
        partition: u32,
        covered: u64,
        low: u64,
        high: u64,
    },
    #[error("i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("postgres: {0}")]
    Pg(#[from] PgError),
    #[error("no read-model snapshot {0}")]
    NotFound(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_IMAGE_BYTES>()
}

/// Encodes an image with its header.
pub fn encode(image: &Image) -> Result<Vec<u8>, SnapshotError> {
    let body = bincode::serde::encode_to_vec(image, config())
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 9);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks a snapshot of a model of `partitions` events partitions. Never
/// panics on any input.
pub fn decode(bytes: &[u8], partitions: u32) -> Result<Image, SnapshotError> {
    if bytes.len() < 9 || &bytes[..4] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(SnapshotError::Version(bytes[4]));
    }
    let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body = &bytes[9..];
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let (image, used): (Image, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(SnapshotError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    if image.marks.len() != partitions as usize {
        return Err(SnapshotError::Partitions {
            found: image.marks.len(),
            expected: partitions,
        });
    }
    Ok(image)
}

/// Events records an image covers, all partitions together: what orders snapshots
/// (the newest is the one that leaves the least to replay).
pub fn covered(marks: &[Mark]) -> u64 {
    marks.iter().map(|m| m.events_offset).sum()
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Events records covered, all partitions together ([`covered`]).
    pub covered: u64,
    /// Wall time it was written.
    pub taken_at: UnixMs,
    pub size_bytes: u64,
}

impl ImageInfo {
    /// How log lines name it.
    pub fn id(&self) -> String {
        format!("readmodel@{}", self.covered)
    }
}

/// Where one log's read-model snapshots live. Blocking: called from the writer thread
/// and from the follower's start, never from an async task.
pub trait ImageStore: Send + Sync + 'static {
    /// Stores a snapshot unless one covering as much or more is stored already.
    fn save(&self, covered: u64, taken_at: UnixMs, bytes: &[u8]) -> Result<(), SnapshotError>;
    /// Newest (most covered) first.
    fn list(&self) -> Result<Vec<ImageInfo>, SnapshotError>;
    fn load(&self, info: &ImageInfo) -> Result<Vec<u8>, SnapshotError>;
    /// Keeps the newest `keep`.
    fn prune(&self, keep: usize) -> Result<(), SnapshotError>;
    /// Where, for log lines.
    fn describe(&self) -> String;
}

/// When a gateway writes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// After this many event records applied (0: never by count).
    pub every_events: u64,
    /// After this much wall time with at least one event applied (zero: never by time).
    pub every: Duration,
}

impl Policy {
    pub fn never(&self) -> bool {
        self.every_events == 0 && self.every.is_zero()
    }
}

/// What the follower is given: the store of its log and the policy.
#[derive(Clone)]
pub struct Snapshots {
    pub store: Arc<dyn ImageStore>,
    pub policy: Policy,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("store", &self.store.describe())
            .field("policy", &self.policy)
            .finish()
    }
}

/// A snapshot refused at start, and why.
#[derive(Debug)]
pub struct Refused {
    pub info: ImageInfo,
    pub error: SnapshotError,
}

/// The newest snapshot that decodes and fits the topic as it is now (`bounds`: the
/// (low, high) offsets of each events partition), and every newer one refused. Each
/// refusal is logged (a warning naming the snapshot and why).
pub fn load_newest(
    store: &dyn ImageStore,
    partitions: u32,
    bounds: &[(u64, u64)],
) -> (Option<(ImageInfo, Image)>, Vec<Refused>) {
    let mut refused = Vec::new();
    let list = match store.list() {
        Ok(l) => l,
        Err(error) => {
            tracing::warn!(store = %store.describe(), %error, "cannot list read-model snapshots; replaying the events topic from its start");
            return (None, refused);
        }
    };
    for info in list {
        let result = store
            .load(&info)
            .and_then(|bytes| decode(&bytes, partitions))
            .and_then(|image| fits(&image, bounds).map(|()| image));
        match result {
            Ok(image) => return (Some((info, image)), refused),
            Err(error) => {
                tracing::warn!(snapshot = %info.id(), store = %store.describe(), %error, "read-model snapshot skipped; trying an older one (or the start of the events topic)");
                refused.push(Refused { info, error });
            }
        }
    }
    (None, refused)
}

/// The image's marks lie within the topic's current offsets.
fn fits(image: &Image, bounds: &[(u64, u64)]) -> Result<(), SnapshotError> {
    for (p, (mark, (low, high))) in image.marks.iter().zip(bounds).enumerate() {
        // Below `low` is fine only when nothing was ever read there: records the image
        // needs replayed were deleted otherwise.
        if mark.events_offset > *high || (mark.events_offset < *low && mark.events_offset > 0) {
            return Err(SnapshotError::Offsets {
                partition: p as u32,
                covered: mark.events_offset,
                low: *low,
                high: *high,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{decode, encode};
    use crate::readmodel::ReadModel;
    use flashsale_proto::*;
    use flashsale_runtime::metrics::Metrics;

    /// A sale of one product, `sku`, with `total_inventory` units (both fixtures').
    fn sale_of(sku: &SkuId, total_inventory: u64) -> SaleConfig {
        SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(7),
                name: "s".into(),
                starts_at: 1,
                ends_at: 10_000_000,
                reservation_ttl_s: 120,
                all_skus: vec![sku.clone()],
            },
            products: vec![ProductSpec {
                sku: sku.clone(),
                name: "n".into(),
                description: String::new(),
                category: String::new(),
                base_price: Cents(100),
                flash_sale_price: Cents(50),
                total_inventory,
                per_user_limit: 2,
                image_url: String::new(),
            }],
        }
    }

    fn model() -> ReadModel {
        let read = ReadModel::new(2, Arc::new(Metrics::new()));
        let sku = SkuId::parse("SKU-1").unwrap();
        let view = ReservationView {
            id: ReservationId {
                partition: 1,
                ulid: 42,
            },
            user: UserId::parse("u1").unwrap(),
            sku: sku.clone(),
            quantity: 1,
            status: ReservationStatus::Reserved,
            created_at: 5,
            expires_at: 125_000,
        };
        read.apply(&EventRecord {
            partition: 1,
            offset: 0,
            log_time: 5,
            events: vec![
                Event::SaleConfigured(sale_of(&sku, 10)),
                Event::Reservation(view),
                Event::Inventory {
                    sku,
                    total: 10,
                    held: 1,
                    sold: 0,
                },
            ],
        });
        read
    }

    fn marks() -> Vec<Mark> {
        vec![
            Mark {
                events_offset: 0,
                next_command_offset: 0,
            },
            Mark {
                events_offset: 1,
                next_command_offset: 1,
            },
        ]
    }

    #[test]
    fn an_image_round_trips_and_restores_the_same_model() {
        let read = model();
        let image = read.image(marks());
        let bytes = encode(&image).unwrap();
        let back = decode(&bytes, 2).unwrap();
        assert_eq!(back, image);
        let restored = ReadModel::new(2, Arc::new(Metrics::new()));
        restored.restore(&back);
        assert_eq!(restored.image(marks()), image);
        assert_eq!(restored.applied_through(1), 1);
        let sku = SkuId::parse("SKU-1").unwrap();
        assert_eq!(restored.product(&sku).unwrap().available(), 9);
        assert!(matches!(
            decode(&bytes, 3),
            Err(SnapshotError::Partitions { .. })
        ));
    }

    /// A log of one partition: a sale, then holds, checkouts (with orders), expiries,
    /// prunes and an early end, one command offset per record.
    fn log() -> Vec<EventRecord> {
        let sku = SkuId::parse("SKU-1").unwrap();
        let view = |n: u64, status| ReservationView {
            id: ReservationId {
                partition: 0,
                ulid: u128::from(n),
            },
            user: UserId::parse(&format!("u{}", n % 7)).unwrap(),
            sku: sku.clone(),
            quantity: 1,
            status,
            created_at: n,
            expires_at: n + 120_000,
        };
        let mut out = vec![vec![Event::SaleConfigured(sale_of(&sku, 1_000))]];
        let (mut held, mut sold, mut ended) = (0u64, 0u64, Vec::new());
        for o in 1..300u64 {
            let mut ev = Vec::new();
            match o % 6 {
                // a checkout of the hold of offset o - 3
                3 if o > 3 => {
                    ev.push(Event::Reservation(view(
                        o - 3,
                        ReservationStatus::Confirmed,
                    )));
                    ev.push(Event::OrderCreated(OrderView {
                        order_id: OrderId {
                            partition: 0,
                            ulid: u128::from(o),
                        },
                        reservation_id: view(o - 3, ReservationStatus::Confirmed).id,
                        user: view(o - 3, ReservationStatus::Confirmed).user,
                        sku: sku.clone(),
                        quantity: 1,
                        total_price: Cents(50),
                        payment_transaction_id: format!("p{o}"),
                        payment_method: PaymentMethod::Upi,
                        shipping_address: "a".into(),
                        created_at: o,
                    }));
                    held -= 1;
                    sold += 1;
                }
                // the hold of offset o - 4 expires
                5 => {
                    ev.push(Event::Reservation(view(o - 4, ReservationStatus::Expired)));
                    ended.push(view(o - 4, ReservationStatus::Expired).id);
                    held -= 1;
                }
                _ if o % 50 == 0 => ev.push(Event::ReservationsPruned {
                    reservations: std::mem::take(&mut ended),
                }),
                _ if o == 250 => ev.push(Event::SaleEnded {
                    sale_id: SaleId(7),
                    skus: vec![sku.clone()],
                    ends_at: 9_000_000,
                }),
                _ => {
                    ev.push(Event::Reservation(view(o, ReservationStatus::Reserved)));
                    held += 1;
                }
            }
            ev.push(Event::Inventory {
                sku: sku.clone(),
                total: 1_000,
                held,
                sold,
            });
            out.push(ev);
        }
        out.into_iter()
            .enumerate()
            .map(|(o, events)| EventRecord {
                partition: 0,
                offset: o as u64,
                log_time: o as u64,
                events,
            })
            .collect()
    }

    /// The claim the writer rests on (ARCHITECTURE.md, "Read-model snapshots"): an
    /// image copied while events kept arriving (the model already at offset `j` when
    /// the marks said `k`), restored and replayed from `k`, gives the same model as
    /// applying the whole log.
    #[test]
    fn a_copy_taken_while_events_arrive_replays_to_the_same_model() {
        let log = log();
        let mark = |k: u64| {
            vec![Mark {
                events_offset: k,
                next_command_offset: k,
            }]
        };
        let full = ReadModel::new(1, Arc::new(Metrics::new()));
        for r in &log {
            full.apply(r);
        }
        let want = full.image(mark(0));
        for k in [0usize, 1, 4, 49, 50, 51, 120, 249, 251, 299] {
            for j in [k, k + 1, k + 7, k + 60, log.len()] {
                let j = j.min(log.len());
                let live = ReadModel::new(1, Arc::new(Metrics::new()));
                for r in &log[..j] {
                    live.apply(r);
                }
                let image = decode(&encode(&live.image(mark(k as u64))).unwrap(), 1).unwrap();
                let restored = ReadModel::new(1, Arc::new(Metrics::new()));
                restored.restore(&image);
                for r in &log[k..] {
                    restored.apply(r);
                }
                assert_eq!(restored.image(mark(0)), want, "marks at {k}, copy at {j}");
            }
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let bytes = encode(&model().image(marks())).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(matches!(
            decode(&flipped, 2),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(matches!(decode(&bytes[..5], 2), Err(SnapshotError::Magic)));
        let mut v = bytes.clone();
        v[4] = 99;
        assert!(matches!(decode(&v, 2), Err(SnapshotError::Version(99))));
    }

    #[test]
    fn files_keep_the_newest_and_fall_back_past_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileImageStore::new(dir.path(), "t.events", "id").unwrap();
        let image = model().image(marks());
        let good = encode(&image).unwrap();
        store.save(1, 100, &good).unwrap();
        store.save(2, 200, b"FSRM garbage").unwrap();
        // Not newer than what is stored: ignored.
        store.save(2, 300, &good).unwrap();
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(|i| i.covered)
                .collect::<Vec<_>>(),
            vec![2, 1]
        );
        let (found, refused) = load_newest(&store, 2, &[(0, 5), (0, 5)]);
        assert_eq!(found.map(|(i, _)| i.covered), Some(1));
        assert_eq!(refused.len(), 1);
        // Beyond the topic's end (a topic recreated): refused too.
        let (found, _) = load_newest(&store, 2, &[(0, 0), (0, 0)]);
        assert!(found.is_none());
        store.save(3, 400, &good).unwrap();
        store.prune(KEEP).unwrap();
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(|i| i.covered)
                .collect::<Vec<_>>(),
            vec![3, 2]
        );
    }
}
