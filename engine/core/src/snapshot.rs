//! Snapshot encoding: a checksummed, versioned image of one partition's [`State`].
//!
//! Layout: `b"FSNP"`, format version (1 byte), CRC-32 of the body (4 bytes LE), body =
//! `flashsale_proto::encode(&State)`. [`encode`] refuses to write a state that fails
//! the invariants; [`decode`] refuses one that fails the checksum, the decoding or the
//! invariants. A bad snapshot is never loaded.

use crate::core::State;
use crate::invariants::{check_state, Violation};

pub const MAGIC: &[u8; 4] = b"FSNP";
/// 2: products carry `max_hold_ms` and `paused` (issue 14); a version-1 snapshot is
/// refused (never misread as the new layout).
pub const SNAPSHOT_VERSION: u8 = 2;
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
    if bytes[4] != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(bytes[4]));
    }
    let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body = &bytes[9..];
    let computed = checksum(body);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let (state, used): (State, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
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
