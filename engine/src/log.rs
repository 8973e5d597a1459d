//! The embedded command log: one append-only file per partition, with offsets and log
//! time, synced to disk before anything is applied (and so before any reply).
//!
//! Record layout, version 2 (little endian; what this version writes):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | `tag_len`: payload length (at most [`MAX_RECORD_BYTES`]) with the format version (2) in the top byte |
//! | 4 | `body_crc`: CRC-32 of the payload |
//! | 8 | `offset` |
//! | 8 | `log_time_ms` |
//! | 4 | `head_crc`: CRC-32 of the 24 header bytes before it |
//! | n | payload |
//! | 4 | trailer: the payload length again |
//! | 4 | trailer: CRC-32 of that length and the offset |
//!
//! Version 1 (written before; still read, and appended to in version 2): `len: u32`
//! (top byte 0), `crc: u32` (of offset, time and payload), `offset: u64`,
//! `log_time_ms: u64`, payload. The top byte of the first word tells them apart.
//!
//! Opening a log scans it and checks every record. The question at the tail is
//! whether a bad last record was ever acknowledged: a batch is acknowledged only after
//! `fdatasync` returned, so an acknowledged record is on disk in full, while a write
//! interrupted by a crash leaves the file short of the record's end. Version 2 records
//! carry their length twice, each copy protected by its own checksum (the header's
//! and the trailer's), so one damaged stretch cannot hide how long the record is:
//!
//! - **Torn tail** — neither copy shows the last record complete (a valid header
//!   whose record runs past the end of the file, or no valid header and no valid
//!   trailer at the distance its length says): never synced, never acknowledged. It
//!   is copied aside to `pNNN.log.torn-<byte position>` and cut.
//! - **Damaged last record** — the record is on disk in full but fails a check (a
//!   flipped byte, a bad sector): it may have been acknowledged, so it is never cut.
//!   It is damage like any other: [`LogError::Corrupt`], the partition stays down
//!   unless a snapshot covers it (below).
//! - A bad record followed by valid data is corruption: [`LogError::Corrupt`].
//!
//! Why this and not a separate record of the durable offset: that record would need a
//! second `fdatasync` per group commit (halving the commit rate on most disks) or
//! would lag one batch behind, leaving the newest batch, the one at risk, unprotected.
//! The length copies cost 12 bytes per record in the same write and sync.
//!
//! Version-1 records have one unprotected length: a bad last version-1 record counts
//! as complete (damage) when that length fits in the file and its offset field is the
//! expected one; a flip in its length field still reads as a torn tail. Logs written
//! since version 2 do not have that gap from their first new record on. Downgrading to
//! a binary that predates version 2 is not supported: it would read version-2
//! records as a torn tail.
//!
//! Lost writes (a log shorter than its newest snapshot, a deleted log file) cannot be
//! seen in the log itself; recovery ([`crate::recovery`]) checks for them.
//!
//! Recovery past damage: every record carries its offset and checksums over all its
//! bytes, so a reader can resynchronise after a bad stretch: the first byte position
//! after it where a record passes its checks, with an offset that fits (at least the
//! missing one, at most one per 24 bytes skipped), starts the valid rest of the log.
//! Those offsets, and only those, are trusted after the damage. When a valid snapshot
//! covers every offset the damage made unreadable
//! ([`PartitionLog::open_past_damage`]), the partition is rebuilt from that snapshot
//! and the records after it; the damaged file is never modified (the bad bytes are
//! also copied to `pNNN.log.damaged-<byte position>`), and reads below the first
//! readable offset are refused.
//!
//! The record encoding and the checks on one record are in `codec`; the unit tests in
//! `tests`.

use flashsale_proto::UnixMs;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read as _, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

mod codec;
#[cfg(test)]
mod tests;

use codec::{complete_record_len, encode_record, first_valid_record, read_record, Read};

/// Largest payload accepted in one record (a command is far smaller).
pub const MAX_RECORD_BYTES: u32 = 1 << 20;
/// Header of a version-1 record, and the smallest record of either version.
const V1_HEADER: usize = 24;
/// Header of a version-2 record.
const V2_HEADER: usize = 28;
/// Trailer of a version-2 record.
const TRAILER: usize = 8;
/// The format version in the top byte of a version-2 record's first word.
const V2_TAG: u32 = 2 << 24;
/// Mask of the length in a record's first word.
const LEN_MASK: u32 = 0x00FF_FFFF;
/// Bytes a version-2 record adds to its payload.
pub const RECORD_OVERHEAD: usize = V2_HEADER + TRAILER;

pub use flashsale_core::LogRecord;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("offset {offset} is past the end of partition {partition}'s log (next offset {end})")]
    PastEnd {
        partition: u32,
        offset: u64,
        end: u64,
    },
    #[error("record of {0} bytes is over the {MAX_RECORD_BYTES} byte limit")]
    TooLarge(usize),
    #[error("partition {partition}'s log {path} is corrupt at byte {position} (record offset {offset}): {reason}, and {evidence}, so this is not a torn tail; nothing was cut. Diagnose with `flashsale snapshot verify --partition {partition}` and `flashsale audit`; to recover, see docs/operations.md, \"Storage damage and recovery\"")]
    Corrupt {
        partition: u32,
        path: PathBuf,
        /// The offset the bad record should have had.
        offset: u64,
        /// Its byte position in the file.
        position: u64,
        reason: &'static str,
        /// Why it is not a torn tail: valid records follow it, or it is the last
        /// record and is on disk in full.
        evidence: &'static str,
        /// The first valid record after the damage (offset), if the reader could
        /// resynchronise: records `offset..resume_offset` are unreadable.
        resume_offset: Option<u64>,
    },
    #[error("offset {offset} of partition {partition}'s log {path} lies in or before a damaged stretch: the first readable offset is {first_readable}; start from a snapshot that covers the damage (`flashsale snapshot list --partition {partition}`)")]
    Damaged {
        partition: u32,
        path: PathBuf,
        offset: u64,
        first_readable: u64,
    },
}

/// A stretch of a log that fails its checks, with valid records after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The offset the first bad record should have had.
    pub offset: u64,
    /// Byte position where the damage starts.
    pub position: u64,
    /// The first valid record after the damage: its offset (records
    /// `offset..resume_offset` are lost) and byte position.
    pub resume_offset: u64,
    pub resume_position: u64,
    pub reason: &'static str,
}

/// Position marker of an offset lost in a damaged stretch.
const DAMAGED: u64 = u64::MAX;

/// One partition's log file. Appends come from a single writer.
#[derive(Debug)]
pub struct PartitionLog {
    partition: u32,
    path: PathBuf,
    file: File,
    /// File position of every record, by offset. 8 bytes per record.
    positions: Vec<u64>,
    end_pos: u64,
    last_time: UnixMs,
    /// Bytes cut from a torn tail when the log was opened.
    truncated_bytes: u64,
    /// A failed append may have left bytes past `end_pos`; cut them before the next.
    dirty_tail: bool,
    /// A torn tail found at open is still in the file (see `open_uncut`).
    torn_pending: bool,
    /// Damaged stretches accepted at open (see `open_past_damage`), oldest first.
    damage: Vec<Damage>,
}

pub fn log_path(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("p{partition:03}.log"))
}

impl PartitionLog {
    /// Opens (creating if needed) `dir/pNNN.log`, verifying every record and cutting a
    /// torn tail.
    pub fn open(dir: &Path, partition: u32) -> Result<Self, LogError> {
        let mut log = Self::open_with(dir, partition, true, None)?;
        log.cut_torn_tail()?;
        Ok(log)
    }

    /// Like [`PartitionLog::open`], but a torn tail is left in place until the caller
    /// has checked the log against its snapshots and calls
    /// [`PartitionLog::cut_torn_tail`] (recovery: a log that ends before a snapshot
    /// says is corruption, and then nothing may be cut). Appending before the cut is
    /// refused.
    pub fn open_uncut(dir: &Path, partition: u32) -> Result<Self, LogError> {
        Self::open_with(dir, partition, true, None)
    }

    /// Like [`PartitionLog::open_uncut`], but damaged stretches are accepted when a
    /// snapshot covers every offset they make unreadable: each must be followed by a
    /// valid record at an offset `<= covered` (the snapshot's next offset). Reads then
    /// start at [`PartitionLog::first_offset`] or later; the file is not modified. A
    /// damage that the snapshot does not cover is [`LogError::Corrupt`].
    pub fn open_past_damage(dir: &Path, partition: u32, covered: u64) -> Result<Self, LogError> {
        Self::open_with(dir, partition, true, Some(covered))
    }

    /// [`PartitionLog::open_past_damage`] for reading only (operators' tools).
    pub fn open_read_only_past_damage(
        dir: &Path,
        partition: u32,
        covered: u64,
    ) -> Result<Self, LogError> {
        Self::open_with(dir, partition, false, Some(covered))
    }

    /// Damaged stretches accepted at open, oldest first (empty for a clean log).
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the bytes of each accepted damaged stretch to
    /// `pNNN.log.damaged-<byte position>` (once; an existing copy is kept), so the
    /// evidence survives whatever an operator does to the log later. Returns the files.
    pub fn keep_damage_aside(&self) -> Result<Vec<PathBuf>, LogError> {
        let io_err = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut out = Vec::new();
        for d in &self.damage {
            let aside = self
                .path
                .with_extension(format!("log.damaged-{}", d.position));
            if !aside.exists() {
                let mut bytes = vec![0u8; (d.resume_position - d.position) as usize];
                let mut f = File::open(&self.path).map_err(io_err)?;
                f.seek(SeekFrom::Start(d.position)).map_err(io_err)?;
                f.read_exact(&mut bytes).map_err(io_err)?;
                std::fs::write(&aside, &bytes).map_err(io_err)?;
                File::open(&aside)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err)?;
            }
            out.push(aside);
        }
        Ok(out)
    }

    /// Copies a torn tail aside (`pNNN.log.torn-<byte position>`) and cuts it.
    pub fn cut_torn_tail(&mut self) -> Result<(), LogError> {
        if !self.torn_pending {
            return Ok(());
        }
        let io_err = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let pos = self.end_pos;
        let mut tail = Vec::with_capacity(self.truncated_bytes as usize);
        let mut f = File::open(&self.path).map_err(io_err)?;
        f.seek(SeekFrom::Start(pos)).map_err(io_err)?;
        f.read_to_end(&mut tail).map_err(io_err)?;
        let aside = self.path.with_extension(format!("log.torn-{pos}"));
        std::fs::write(&aside, &tail).map_err(io_err)?;
        File::open(&aside)
            .and_then(|f| f.sync_all())
            .map_err(io_err)?;
        self.file.set_len(pos).map_err(io_err)?;
        self.file.sync_all().map_err(io_err)?;
        self.torn_pending = false;
        Ok(())
    }

    /// Opens an existing log for reading only (operators' tools): nothing is created
    /// or cut, and a log a server is appending to can be read up to its valid end.
    pub fn open_read_only(dir: &Path, partition: u32) -> Result<Self, LogError> {
        Self::open_with(dir, partition, false, None)
    }

    /// Opens and scans the log. `covered`: damage whose lost offsets all lie below it
    /// is accepted (a snapshot covers them); `None`: any damage is an error.
    fn open_with(
        dir: &Path,
        partition: u32,
        writable: bool,
        covered: Option<u64>,
    ) -> Result<Self, LogError> {
        let path = log_path(dir, partition);
        let io_err = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let file = if writable {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
        } else {
            OpenOptions::new().read(true).open(&path)
        }
        .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let mut positions = Vec::new();
        let mut last_time = 0;
        let mut pos = 0u64;
        let mut reader = BufReader::with_capacity(1 << 20, file.try_clone().map_err(io_err)?);
        let mut damage = Vec::new();
        loop {
            let expected = positions.len() as u64;
            let (reason, ahead) = match read_record(&mut reader).map_err(io_err)? {
                Read::End => break,
                Read::Record(rec, size) if rec.offset == expected => {
                    positions.push(pos);
                    last_time = rec.log_time;
                    pos += size as u64;
                    continue;
                }
                // A valid record whose offset is ahead: records are missing before
                // it (a stretch cut out on record boundaries), and it is itself the
                // first one after the gap.
                Read::Record(rec, _) if rec.offset > expected => {
                    ("records missing", Some(rec.offset))
                }
                Read::Record(..) => ("record out of sequence", None),
                Read::Bad(reason) => (reason, None),
            };
            let (found, evidence) = match ahead {
                Some(offset) => (Some((0, offset)), FOLLOWED),
                None => {
                    // Torn tail or corruption? Look for a valid record after the bad one.
                    let mut tail = Vec::with_capacity((len - pos) as usize);
                    let mut f = file.try_clone().map_err(io_err)?;
                    f.seek(SeekFrom::Start(pos)).map_err(io_err)?;
                    f.read_to_end(&mut tail).map_err(io_err)?;
                    match first_valid_record(&tail, expected) {
                        Some(found) => (Some(found), FOLLOWED),
                        // Nothing valid after it: the last record. Was it written in
                        // full (so maybe acknowledged)?
                        None => match complete_record_len(&tail, expected) {
                            None => break, // no: a torn tail
                            // Exactly the rest of the file: the log resumes after it.
                            Some(n) if n == tail.len() => {
                                (Some((n as u64, expected + 1)), COMPLETE)
                            }
                            // A complete record and more bad bytes after it: how many
                            // offsets they held is unknown.
                            Some(_) => (None, COMPLETE),
                        },
                    }
                }
            };
            let Some((skip, resume_offset)) = found else {
                return Err(LogError::Corrupt {
                    partition,
                    path,
                    offset: expected,
                    position: pos,
                    reason,
                    evidence,
                    resume_offset: None,
                });
            };
            if covered.is_none_or(|n| resume_offset > n) {
                return Err(LogError::Corrupt {
                    partition,
                    path,
                    offset: expected,
                    position: pos,
                    reason,
                    evidence,
                    resume_offset: Some(resume_offset),
                });
            }
            damage.push(Damage {
                offset: expected,
                position: pos,
                resume_offset,
                resume_position: pos + skip,
                reason,
            });
            positions.resize(resume_offset as usize, DAMAGED);
            pos += skip;
            reader.seek(SeekFrom::Start(pos)).map_err(io_err)?;
        }
        drop(reader);
        let truncated_bytes = len - pos;
        Ok(PartitionLog {
            partition,
            path,
            file,
            positions,
            end_pos: pos,
            last_time,
            truncated_bytes,
            // A torn tail to cut (by `cut_torn_tail`) before anything is appended.
            dirty_tail: false,
            torn_pending: truncated_bytes > 0 && writable,
            damage,
        })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }
    /// The offset the next appended record gets.
    pub fn next_offset(&self) -> u64 {
        self.positions.len() as u64
    }
    /// The oldest offset that can be read: 0 (the embedded log keeps everything),
    /// or the first offset after the last accepted damaged stretch.
    pub fn first_offset(&self) -> u64 {
        self.damage.last().map_or(0, |d| d.resume_offset)
    }
    pub fn last_time(&self) -> UnixMs {
        self.last_time
    }
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }

    /// Appends a batch stamped with log time `max(last, now_ms)` and syncs it to disk
    /// (group commit: one sync per batch). Returns the records as written. On an error
    /// (disk full, I/O) nothing of the batch counts: whatever part of it reached the
    /// file is cut again (now, or before the next append if the cut fails too), so the
    /// log can be appended to once the cause is gone.
    pub fn append(
        &mut self,
        payloads: Vec<Vec<u8>>,
        now_ms: UnixMs,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.cut_torn_tail()?;
        if self.dirty_tail {
            self.file
                .set_len(self.end_pos)
                .map_err(|source| LogError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            self.dirty_tail = false;
        }
        let result = self.append_inner(payloads, now_ms);
        if matches!(result, Err(LogError::Io { .. })) {
            self.dirty_tail = self.file.set_len(self.end_pos).is_err();
        }
        result
    }

    fn append_inner(
        &mut self,
        payloads: Vec<Vec<u8>>,
        now_ms: UnixMs,
    ) -> Result<Vec<LogRecord>, LogError> {
        let io_err = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let time = self.last_time.max(now_ms);
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + RECORD_OVERHEAD).sum());
        let mut out = Vec::with_capacity(payloads.len());
        let first = self.next_offset();
        let mut pos = self.end_pos;
        let mut positions = Vec::with_capacity(payloads.len());
        for (offset, payload) in (first..).zip(payloads) {
            if payload.len() > MAX_RECORD_BYTES as usize {
                return Err(LogError::TooLarge(payload.len()));
            }
            encode_record(&mut buf, offset, time, &payload);
            positions.push(pos);
            pos += (RECORD_OVERHEAD + payload.len()) as u64;
            out.push(LogRecord {
                offset,
                log_time: time,
                payload,
            });
        }
        self.file.write_all(&buf).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.positions.extend(positions);
        self.end_pos = pos;
        self.last_time = time;
        Ok(out)
    }

    /// A reader positioned at `offset`, for replay. Reads records synced so far.
    pub fn reader_from(&self, offset: u64) -> Result<LogReader, LogError> {
        let end = self.next_offset();
        if offset > end {
            return Err(LogError::PastEnd {
                partition: self.partition,
                offset,
                end,
            });
        }
        if offset < self.first_offset() {
            return Err(LogError::Damaged {
                partition: self.partition,
                path: self.path.clone(),
                offset,
                first_readable: self.first_offset(),
            });
        }
        let pos = self
            .positions
            .get(offset as usize)
            .copied()
            .unwrap_or(self.end_pos);
        debug_assert!(pos != DAMAGED, "no damage after the first readable offset");
        let io_err = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        f.seek(SeekFrom::Start(pos)).map_err(io_err)?;
        Ok(LogReader {
            inner: BufReader::with_capacity(1 << 20, f),
            next: offset,
            end,
            path: self.path.clone(),
        })
    }
}

/// Sequential reader over a log, up to the end it had when created.
#[derive(Debug)]
pub struct LogReader {
    inner: BufReader<File>,
    next: u64,
    end: u64,
    path: PathBuf,
}

impl LogReader {
    pub fn end(&self) -> u64 {
        self.end
    }
}

impl Iterator for LogReader {
    type Item = Result<LogRecord, LogError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        match read_record(&mut self.inner) {
            Ok(Read::Record(r, _)) => {
                self.next += 1;
                Some(Ok(r))
            }
            Ok(Read::End) | Ok(Read::Bad(_)) => None,
            Err(source) => Some(Err(LogError::Io {
                path: self.path.clone(),
                source,
            })),
        }
    }
}

/// Why a bad record is not a torn tail (the `evidence` of [`LogError::Corrupt`]).
const FOLLOWED: &str = "valid records follow it";
const COMPLETE: &str = "it is the last record and is on disk in full (its length is confirmed by a checksummed copy), so it was synced and may have been acknowledged";
