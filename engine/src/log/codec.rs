//! One record of the embedded log on disk (the layout is in the doc of the parent
//! module): encoding a version-2 record, reading one of either version with its checks,
//! and the scans at a bad stretch (is there a valid record after it; is the bad record
//! on disk in full).

use super::{LogRecord, LEN_MASK, MAX_RECORD_BYTES, TRAILER, V1_HEADER, V2_HEADER, V2_TAG};
use flashsale_proto::UnixMs;
use std::io;

/// Appends one version-2 record to `buf`.
pub(super) fn encode_record(buf: &mut Vec<u8>, offset: u64, time: UnixMs, payload: &[u8]) {
    let len = payload.len() as u32;
    let start = buf.len();
    buf.extend_from_slice(&(V2_TAG | len).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&time.to_le_bytes());
    let head_crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&head_crc.to_le_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&trailer_crc(len, offset).to_le_bytes());
}

/// The trailer's checksum: of the payload length and the record's offset, so a
/// trailer is only valid at the end of the record it belongs to.
fn trailer_crc(len: u32, offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize()
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A version-2 header that passes its checksum: the payload length.
fn valid_v2_header(head: &[u8]) -> Option<u32> {
    let word = u32_at(head, 0);
    (head.len() >= V2_HEADER
        && word & !LEN_MASK == V2_TAG
        && crc32fast::hash(&head[..24]) == u32_at(head, 24))
    .then_some(word & LEN_MASK)
}

/// What [`read_record`] found.
pub(super) enum Read {
    /// A valid record and its size in the file.
    Record(LogRecord, usize),
    /// Clean end of the file.
    End,
    /// A record that is cut short or fails its checks.
    Bad(&'static str),
}

/// The first byte position of `tail` (the bytes from a bad record on) after the first,
/// holding a record that passes its checks and can follow the last good record: its
/// offset is at least `expected` and at most one per 24 bytes (the smallest record)
/// skipped past it. Returns (position, its offset). A torn tail has none; a flipped
/// byte in the middle of a log has the rest of the log after it.
pub(super) fn first_valid_record(tail: &[u8], expected: u64) -> Option<(u64, u64)> {
    (1..tail.len()).find_map(|start| {
        let mut r = &tail[start..];
        let most = expected + (start / V1_HEADER) as u64;
        match read_record(&mut r) {
            Ok(Read::Record(rec, _)) if rec.offset >= expected && rec.offset <= most => {
                Some((start as u64, rec.offset))
            }
            _ => None,
        }
    })
}

/// `tail` is a bad stretch that runs to the end of the file, starting where the record
/// at offset `expected` should be, with no valid record in it. If that record is on
/// disk in full, its size (damage: it may have been acknowledged); `None` if nothing
/// shows it complete (a torn tail: a write cut short by a crash).
///
/// Version 2: the header, if it passes its checksum, gives the length; otherwise a
/// trailer that passes its checksum for this offset, at the distance its length says
/// from the start, does. Version 1: the length field, if the offset field is the
/// expected one and the record fits in the file.
pub(super) fn complete_record_len(tail: &[u8], expected: u64) -> Option<usize> {
    if let Some(len) = tail.get(..V2_HEADER).and_then(valid_v2_header) {
        let n = V2_HEADER + len as usize + TRAILER;
        return (n <= tail.len()).then_some(n);
    }
    // The trailer of the record: its length field sits at V2_HEADER + len.
    let trailer = (V2_HEADER..=tail.len().saturating_sub(TRAILER)).find(|&t| {
        let len = u32_at(tail, t);
        len as usize == t - V2_HEADER
            && len <= MAX_RECORD_BYTES
            && u32_at(tail, t + 4) == trailer_crc(len, expected)
    });
    if let Some(t) = trailer {
        return Some(t + TRAILER);
    }
    if tail.len() >= V1_HEADER && u32_at(tail, 0) & !LEN_MASK == 0 {
        let len = u32_at(tail, 0) as usize;
        let n = V1_HEADER + len;
        if len > 0 && u64_at(tail, 8) == expected && n <= tail.len() {
            return Some(n);
        }
    }
    None
}

/// Reads one record, of either version.
pub(super) fn read_record(r: &mut impl io::Read) -> io::Result<Read> {
    let mut head = [0u8; V2_HEADER];
    match read_full(r, &mut head[..V1_HEADER])? {
        0 => return Ok(Read::End),
        n if n < V1_HEADER => return Ok(Read::Bad("record header cut short")),
        _ => {}
    }
    let word = u32_at(&head, 0);
    let offset = u64_at(&head, 8);
    let log_time = u64_at(&head, 16);
    match word & !LEN_MASK {
        0 => {
            // Version 1.
            let len = word;
            let crc = u32_at(&head, 4);
            if len > MAX_RECORD_BYTES {
                return Ok(Read::Bad("record length over the limit"));
            }
            let mut payload = vec![0u8; len as usize];
            if read_full(r, &mut payload)? < payload.len() {
                return Ok(Read::Bad("record payload cut short"));
            }
            let mut h = crc32fast::Hasher::new();
            h.update(&head[8..24]);
            h.update(&payload);
            if h.finalize() != crc {
                return Ok(Read::Bad("record checksum mismatch"));
            }
            let size = V1_HEADER + payload.len();
            Ok(Read::Record(
                LogRecord {
                    offset,
                    log_time,
                    payload,
                },
                size,
            ))
        }
        V2_TAG => {
            if read_full(r, &mut head[V1_HEADER..])? < V2_HEADER - V1_HEADER {
                return Ok(Read::Bad("record header cut short"));
            }
            let Some(len) = valid_v2_header(&head) else {
                return Ok(Read::Bad("record header checksum mismatch"));
            };
            if len > MAX_RECORD_BYTES {
                return Ok(Read::Bad("record length over the limit"));
            }
            let mut payload = vec![0u8; len as usize];
            if read_full(r, &mut payload)? < payload.len() {
                return Ok(Read::Bad("record payload cut short"));
            }
            if crc32fast::hash(&payload) != u32_at(&head, 4) {
                return Ok(Read::Bad("record checksum mismatch"));
            }
            let mut trailer = [0u8; TRAILER];
            if read_full(r, &mut trailer)? < TRAILER {
                return Ok(Read::Bad("record trailer cut short"));
            }
            if u32_at(&trailer, 0) != len || u32_at(&trailer, 4) != trailer_crc(len, offset) {
                return Ok(Read::Bad("record trailer mismatch"));
            }
            let size = V2_HEADER + payload.len() + TRAILER;
            Ok(Read::Record(
                LogRecord {
                    offset,
                    log_time,
                    payload,
                },
                size,
            ))
        }
        _ => Ok(Read::Bad("unknown record format")),
    }
}

fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
