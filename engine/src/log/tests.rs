//! Unit tests of the embedded log: appends and reopen, torn tails and damage, version-1
//! logs, reading past damage a snapshot covers.

use super::codec::u32_at;
use super::*;

#[test]
fn appends_survive_reopen_and_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), 2).unwrap();
    let recs = log
        .append(vec![b"a".to_vec(), b"bb".to_vec()], 1000)
        .unwrap();
    assert_eq!(recs[1].offset, 1);
    // the clock never goes back
    let recs = log.append(vec![b"ccc".to_vec()], 500).unwrap();
    assert_eq!(recs[0].log_time, 1000);
    drop(log);
    // simulate a torn write: half a record at the end
    let path = log_path(dir.path(), 2);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[9, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let log = PartitionLog::open(dir.path(), 2).unwrap();
    assert_eq!(log.next_offset(), 3);
    assert_eq!(log.truncated_bytes(), 7);
    let all: Vec<_> = log.reader_from(1).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].payload, b"ccc");
    assert!(log.reader_from(4).is_err());
}

/// Every byte of the last record flipped: it is on disk in full, so it may have
/// been acknowledged: never cut, corruption (accepted only past a snapshot that
/// covers it). Every cut inside it: a torn tail, cut.
#[test]
fn a_damaged_last_record_is_corruption_and_a_short_one_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), 0).unwrap();
    log.append(vec![b"one".to_vec()], 1).unwrap();
    log.append(vec![b"two and more".to_vec(), b"three".to_vec()], 2)
        .unwrap();
    drop(log);
    let path = log_path(dir.path(), 0);
    let original = std::fs::read(&path).unwrap();
    let last = starts(&original)[2];
    for at in last..original.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = original.clone();
            bytes[at] ^= bit;
            std::fs::write(&path, &bytes).unwrap();
            match PartitionLog::open(dir.path(), 0) {
                Err(LogError::Corrupt {
                    offset: 2,
                    position,
                    evidence: COMPLETE,
                    resume_offset: Some(3),
                    ..
                }) => assert_eq!(position, last as u64),
                other => panic!("byte {at} ^ {bit}: expected corruption, got {other:?}"),
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "byte {at}: file changed"
            );
            // A snapshot that covers it: recovered past, appended after.
            let mut log = PartitionLog::open_past_damage(dir.path(), 0, 3).unwrap();
            assert_eq!((log.first_offset(), log.next_offset()), (3, 3));
            assert_eq!(log.truncated_bytes(), 0);
            log.append(vec![b"four".to_vec()], 3).unwrap();
            drop(log);
            let log = PartitionLog::open_past_damage(dir.path(), 0, 3).unwrap();
            let rest: Vec<_> = log.reader_from(3).unwrap().map(|r| r.unwrap()).collect();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].payload, b"four");
            assert!(PartitionLog::open_past_damage(dir.path(), 0, 2).is_err());
        }
    }
    for cut in last..original.len() {
        std::fs::write(&path, &original[..cut]).unwrap();
        let log = PartitionLog::open(dir.path(), 0).unwrap();
        assert_eq!(log.next_offset(), 2, "cut at {cut}");
        assert_eq!(log.truncated_bytes(), (cut - last) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last as u64);
    }
    // A write whose room was allocated but never filled (zeros): torn too.
    let mut bytes = original[..last].to_vec();
    bytes.resize(original.len(), 0);
    std::fs::write(&path, &bytes).unwrap();
    let log = PartitionLog::open(dir.path(), 0).unwrap();
    assert_eq!(log.next_offset(), 2);
}

/// A version-1 record, as logs were written before version 2.
fn encode_v1(buf: &mut Vec<u8>, offset: u64, time: UnixMs, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(&time.to_le_bytes());
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&time.to_le_bytes());
    buf.extend_from_slice(payload);
}

#[test]
fn version_1_logs_are_read_and_appended_to_in_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(dir.path(), 0);
    let mut v1 = Vec::new();
    for o in 0..3u64 {
        encode_v1(&mut v1, o, 10 + o, &[o as u8; 40]);
    }
    std::fs::write(&path, &v1).unwrap();
    let mut log = PartitionLog::open(dir.path(), 0).unwrap();
    assert_eq!((log.next_offset(), log.last_time()), (3, 12));
    log.append(vec![b"new".to_vec()], 20).unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), 0).unwrap();
    let all: Vec<_> = log.reader_from(0).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 4);
    assert_eq!(all[2].payload, vec![2u8; 40]);
    assert_eq!(all[3].payload, b"new");
    drop(log);
    // A damaged last version-1 record whose length fits: corruption; cut short: torn.
    let mut bytes = v1.clone();
    let last = bytes.len() - 10;
    bytes[last] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), 0),
        Err(LogError::Corrupt {
            offset: 2,
            evidence: COMPLETE,
            ..
        })
    ));
    std::fs::write(&path, &v1[..v1.len() - 10]).unwrap();
    assert_eq!(PartitionLog::open(dir.path(), 0).unwrap().next_offset(), 2);
}

#[test]
fn torn_tail_is_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), 1).unwrap();
    log.append(vec![b"one".to_vec()], 1).unwrap();
    drop(log);
    let path = log_path(dir.path(), 1);
    let good = std::fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[3, 0, 0, 0, 7, 7]).unwrap();
    drop(f);
    let log = PartitionLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.next_offset(), 1);
    let aside = dir.path().join(format!("p001.log.torn-{good}"));
    assert_eq!(std::fs::read(aside).unwrap(), vec![3, 0, 0, 0, 7, 7]);
}

#[test]
fn a_bad_record_followed_by_valid_ones_is_corruption_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), 0).unwrap();
    for i in 0..20u64 {
        log.append(vec![vec![i as u8; 10 + i as usize]], i).unwrap();
    }
    drop(log);
    let path = log_path(dir.path(), 0);
    let original = std::fs::read(&path).unwrap();
    // every byte of every record but the last: corruption, never a cut
    let last_start = original.len() - (RECORD_OVERHEAD + 29);
    for at in (0..last_start).step_by(7) {
        let mut bytes = original.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match PartitionLog::open(dir.path(), 0) {
            Err(LogError::Corrupt { position, .. }) => assert!(position <= at as u64),
            other => panic!("byte {at}: expected corruption, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "byte {at}: file was changed"
        );
    }
    // a cut in the middle, valid records after it: corruption too
    let mut bytes = original.clone();
    bytes.drain(100..110);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), 0),
        Err(LogError::Corrupt { .. })
    ));
}

fn twenty_records(dir: &Path) -> Vec<u8> {
    let mut log = PartitionLog::open(dir, 0).unwrap();
    for i in 0..20u64 {
        log.append(vec![vec![i as u8; 10 + i as usize]], i).unwrap();
    }
    drop(log);
    std::fs::read(log_path(dir, 0)).unwrap()
}

fn starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        out.push(pos);
        pos += RECORD_OVERHEAD + (u32_at(bytes, pos) & LEN_MASK) as usize;
    }
    out
}

#[test]
fn damage_a_snapshot_covers_is_read_past_and_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let original = twenty_records(dir.path());
    let at = starts(&original)[5] + 9; // record 5's offset field
    let mut bytes = original.clone();
    bytes[at] ^= 0x02;
    let path = log_path(dir.path(), 0);
    std::fs::write(&path, &bytes).unwrap();
    match PartitionLog::open_uncut(dir.path(), 0) {
        Err(LogError::Corrupt {
            offset: 5,
            resume_offset: Some(6),
            ..
        }) => {}
        other => panic!("expected corruption at 5, resuming at 6: {other:?}"),
    }
    // A snapshot up to offset 5 does not cover record 5.
    assert!(matches!(
        PartitionLog::open_past_damage(dir.path(), 0, 5),
        Err(LogError::Corrupt { .. })
    ));
    let mut log = PartitionLog::open_past_damage(dir.path(), 0, 6).unwrap();
    assert_eq!(log.first_offset(), 6);
    assert_eq!(log.next_offset(), 20);
    assert_eq!(log.damage().len(), 1);
    assert_eq!(log.damage()[0].position, starts(&original)[5] as u64);
    assert!(matches!(
        log.reader_from(5),
        Err(LogError::Damaged {
            first_readable: 6,
            ..
        })
    ));
    let rest: Vec<_> = log.reader_from(6).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(
        rest.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (6..20).collect::<Vec<_>>()
    );
    assert_eq!(rest[0].payload, vec![6u8; 16]);
    // The damaged bytes are copied aside; the file itself is only appended to.
    let aside = log.keep_damage_aside().unwrap();
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        bytes[starts(&original)[5]..starts(&original)[6]].to_vec()
    );
    let new = log.append(vec![b"after".to_vec()], 100).unwrap();
    assert_eq!(new[0].offset, 20);
    drop(log);
    assert_eq!(&std::fs::read(&path).unwrap()[..bytes.len()], &bytes[..]);
    let log = PartitionLog::open_past_damage(dir.path(), 0, 20).unwrap();
    assert_eq!(log.next_offset(), 21);
    let last: Vec<_> = log.reader_from(20).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(last[0].payload, b"after");
}

#[test]
fn records_cut_out_on_record_boundaries_are_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let original = twenty_records(dir.path());
    let st = starts(&original);
    let mut bytes = original[..st[5]].to_vec();
    bytes.extend_from_slice(&original[st[8]..]);
    std::fs::write(log_path(dir.path(), 0), &bytes).unwrap();
    assert!(matches!(
        PartitionLog::open_uncut(dir.path(), 0),
        Err(LogError::Corrupt {
            offset: 5,
            resume_offset: Some(8),
            ..
        })
    ));
    let log = PartitionLog::open_past_damage(dir.path(), 0, 9).unwrap();
    assert_eq!((log.first_offset(), log.next_offset()), (8, 20));
    assert_eq!(log.reader_from(8).unwrap().count(), 12);
    // Two damaged stretches: both must be covered.
    let mut twice = bytes.clone();
    let st2 = starts(&bytes);
    twice[st2[2] + 20] ^= 1;
    twice[st2[10] + 20] ^= 1;
    std::fs::write(log_path(dir.path(), 0), &twice).unwrap();
    assert!(PartitionLog::open_past_damage(dir.path(), 0, 9).is_err());
    let log = PartitionLog::open_past_damage(dir.path(), 0, 15).unwrap();
    assert_eq!(log.damage().len(), 3);
    assert_eq!(log.first_offset(), 14);
}
