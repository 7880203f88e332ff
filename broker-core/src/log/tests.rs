//! Tests of the partition log: append/read across rolls, reopen and recovery of torn or
//! corrupt tails, index rebuilding, retention, DeleteRecords, timestamp lookups, verification.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::*;
use crate::batch::test_batches::build;
use crate::batch::{stamp_offset_and_epoch, Batches};

const EPOCH: i32 = 3;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 150,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig) -> (PartitionLog, RecoveryReport) {
    PartitionLog::open(dir, config).unwrap()
}

/// What a batch looks like once stored at `base`.
fn stored(raw: &[u8], base: i64) -> Vec<u8> {
    let mut b = raw.to_vec();
    stamp_offset_and_epoch(&mut b, base, EPOCH);
    b
}

/// Appends `n` batches of 1..=3 records; batch `i` gets timestamps from `ts(i)`.
/// Returns the stored bytes of each batch with its base and last offsets.
fn fill(log: &mut PartitionLog, n: usize, ts: impl Fn(usize) -> i64) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let value = vec![b'a' + (i % 26) as u8; 10 + i % 7];
        let values: Vec<&[u8]> = (0..=(i % 3)).map(|_| value.as_slice()).collect();
        let mut raw = build(&values, ts(i));
        let info = log.append(&mut raw, EPOCH, 1_000).unwrap();
        assert_eq!(info.last_offset - info.base_offset, (i % 3) as i64);
        out.push((info.base_offset, info.last_offset, raw));
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let chunk = log.read(offset, end, 1 << 20).unwrap();
        assert!(!chunk.is_empty());
        for b in Batches::new(&chunk) {
            let h = crate::batch::validate(b.unwrap()).unwrap();
            offset = h.last_offset() + 1;
        }
        out.extend_from_slice(&chunk);
    }
    out
}

#[test]
fn new_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let (log, report) = open(&path, LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert_eq!(report.segments, 1);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(log.read(0, 0, 100).unwrap(), Vec::<u8>::new());
    assert!(log.find_batch_by_timestamp(0).unwrap().is_none());
    assert!(log.batch_with_max_timestamp().unwrap().is_none());
    assert_eq!(log.sync_target().end_offset, 0);
    assert_eq!(
        log.verify().unwrap(),
        VerifyReport {
            segments: 1,
            ..Default::default()
        }
    );
}

#[test]
fn append_and_read_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    let batches = fill(&mut log, 40, |i| 1_000 + i as i64);
    let files = segment_files(dir.path());
    assert!(
        files.len() > 5,
        "expected several segments, got {}",
        files.len()
    );
    assert_eq!(
        files[1].file_name().unwrap().to_str().unwrap(),
        format!("{:020}.log", log.segments[1].base_offset)
    );
    for (i, (base, last, raw)) in batches.iter().enumerate() {
        assert_eq!(*base, if i == 0 { 0 } else { batches[i - 1].1 + 1 });
        let got = log.read(*base, log.log_end_offset(), 1).unwrap();
        assert_eq!(got, stored(raw, *base));
        assert!(*last >= *base);
    }
    let expected: Vec<u8> = batches.iter().flat_map(|(b, _, r)| stored(r, *b)).collect();
    assert_eq!(read_all(&log), expected);
    let report = log.verify().unwrap();
    assert_eq!(report.batches, 40);
    assert_eq!(report.records as i64, log.log_end_offset());
    assert_eq!(report.bytes, log.size_bytes());
    assert_eq!(report.segments, files.len());
    assert_eq!(log.sync_target().end_offset, log.log_end_offset());
    // scan_headers starts with the batch holding from_offset and visits every later one.
    let from = batches[17].0 + 1;
    let mut seen = Vec::new();
    log.scan_headers(from, &mut |h| seen.push(h.base_offset))
        .unwrap();
    let expected: Vec<i64> = batches[17..].iter().map(|(b, _, _)| *b).collect();
    assert_eq!(seen, expected);
}

#[test]
fn read_at_every_offset_returns_the_containing_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(500));
    let batches = fill(&mut log, 30, |i| i as i64);
    let end = log.log_end_offset();
    for (base, last, raw) in &batches {
        for offset in *base..=*last {
            let got = log.read(offset, end, 0).unwrap();
            assert_eq!(got, stored(raw, *base), "offset {offset}");
        }
    }
}

#[test]
fn max_bytes_and_max_offset_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    let batches = fill(&mut log, 10, |i| i as i64);
    let end = log.log_end_offset();
    let len = |i: usize| batches[i].2.len();
    // At least one whole batch, even when it is larger than max_bytes.
    assert_eq!(log.read(0, end, 1).unwrap().len(), len(0));
    assert_eq!(log.read(0, end, len(0) + len(1) - 1).unwrap().len(), len(0));
    assert_eq!(
        log.read(0, end, len(0) + len(1)).unwrap().len(),
        len(0) + len(1)
    );
    // Everything fits.
    assert_eq!(log.read(0, end, 1 << 20).unwrap(), {
        let all: Vec<u8> = batches.iter().flat_map(|(b, _, r)| stored(r, *b)).collect();
        all
    });
    // The high watermark excludes batches whose base offset is >= it.
    let hw = batches[3].0;
    let got = log.read(0, hw, 1 << 20).unwrap();
    assert_eq!(got.len(), len(0) + len(1) + len(2));
    let got = log.read(0, hw + 1, 1 << 20).unwrap();
    assert_eq!(got.len(), len(0) + len(1) + len(2) + len(3));
    assert!(log.read(hw, hw, 100).unwrap().is_empty());
    assert!(log.read(end, end, 100).unwrap().is_empty());
}

#[test]
fn out_of_range_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    fill(&mut log, 5, |i| i as i64);
    let end = log.log_end_offset();
    assert!(log.read(end, end, 10).unwrap().is_empty());
    for bad in [end + 1, -1, i64::MAX, i64::MIN] {
        match log.read(bad, end, 10) {
            Err(LogError::OffsetOutOfRange {
                offset,
                log_start: 0,
                log_end,
            }) => assert_eq!((offset, log_end), (bad, end)),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn reopen_preserves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    let batches = fill(&mut log, 25, |i| 50 - i as i64);
    let before = read_all(&log);
    let end = log.log_end_offset();
    let segments = log.segments.len();
    log.close().unwrap();
    drop(log);
    let (mut log, report) = open(dir.path(), config(400));
    assert_eq!(report.segments, segments);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.quarantine_file, None);
    assert_eq!(report.rebuilt_indexes, 0);
    assert!(report.recovered_batches > 0);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&log), before);
    log.verify().unwrap();
    // Without close(): the active segment is recovered from its bytes alone.
    let more = fill(&mut log, 3, |i| i as i64);
    assert_eq!(more[0].0, end);
    let end = log.log_end_offset();
    drop(log);
    let (log, _) = open(dir.path(), config(400));
    assert_eq!(log.log_end_offset(), end);
    let expected: Vec<u8> = batches
        .iter()
        .chain(more.iter())
        .flat_map(|(b, _, r)| stored(r, *b))
        .collect();
    assert_eq!(read_all(&log), expected);
    log.verify().unwrap();
}

/// Damages the active segment with `damage(path, batch positions)`, reopens, and checks the
/// tail from the first damaged batch is quarantined and appends continue after the kept ones.
fn torn_tail_case(damage: impl Fn(&Path, &[u64]), keep: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    let batches = fill(&mut log, 5, |i| i as i64);
    let positions: Vec<u64> = {
        let mut p = 0;
        batches
            .iter()
            .map(|(_, _, b)| {
                let at = p;
                p += b.len() as u64;
                at
            })
            .collect()
    };
    let seg_path = log.segments[0].path.clone();
    drop(log);
    let before = fs::read(&seg_path).unwrap();
    damage(&seg_path, &positions);
    let damaged = fs::read(&seg_path).unwrap();

    let (mut log, report) = open(dir.path(), config(1 << 20));
    let cut = if keep < positions.len() {
        positions[keep] as usize
    } else {
        before.len()
    };
    assert_eq!(report.recovered_batches, keep as u64);
    assert_eq!(report.truncated_bytes, (damaged.len() - cut) as u64);
    let quarantine = report.quarantine_file.clone().expect("quarantine file");
    assert!(quarantine
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("00000000000000000000.log.corrupt-"));
    assert_eq!(fs::read(&quarantine).unwrap(), &damaged[cut..]);
    assert_eq!(fs::read(&seg_path).unwrap(), &before[..cut]);
    let end = if keep == 0 {
        0
    } else {
        batches[keep - 1].1 + 1
    };
    assert_eq!(log.log_end_offset(), end);
    log.verify().unwrap();
    let mut raw = build(&[b"after"], 77);
    let info = log.append(&mut raw, EPOCH, 0).unwrap();
    assert_eq!(info.base_offset, end);
    assert_eq!(log.read(end, end + 1, 10).unwrap(), stored(&raw, end));
    drop(log);
    // The quarantine file is left alone on the next open and nothing more is cut.
    let (log, report) = open(dir.path(), config(1 << 20));
    assert_eq!(report.truncated_bytes, 0);
    assert!(quarantine.exists());
    assert_eq!(log.log_end_offset(), end + 1);
}

#[test]
fn torn_last_batch_is_truncated_and_quarantined() {
    torn_tail_case(
        |path, positions| {
            let len = fs::metadata(path).unwrap().len();
            let last = positions[positions.len() - 1];
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(last + (len - last) / 2).unwrap();
        },
        4,
    );
}

#[test]
fn garbage_after_the_last_batch_is_quarantined() {
    torn_tail_case(
        |path, _| {
            let mut bytes = fs::read(path).unwrap();
            bytes.extend_from_slice(&[0xAB; 37]);
            fs::write(path, bytes).unwrap();
        },
        5,
    );
    // A run of zeros (preallocated space after a crash) too.
    torn_tail_case(
        |path, _| {
            let mut bytes = fs::read(path).unwrap();
            bytes.extend_from_slice(&[0; 4096]);
            fs::write(path, bytes).unwrap();
        },
        5,
    );
}

#[test]
fn flipped_byte_in_a_middle_batch_cuts_from_there() {
    torn_tail_case(
        |path, positions| {
            let mut bytes = fs::read(path).unwrap();
            let at = positions[2] as usize + 70; // inside the records of batch 2
            bytes[at] ^= 0x10;
            fs::write(path, bytes).unwrap();
        },
        2,
    );
}

#[test]
fn corrupt_first_batch_empties_the_active_segment() {
    torn_tail_case(
        |path, _| {
            let mut bytes = fs::read(path).unwrap();
            bytes[30] ^= 0xFF; // lastOffsetDelta/baseTimestamp: inside the CRC
            fs::write(path, bytes).unwrap();
        },
        0,
    );
}

#[test]
fn wrong_base_offset_in_the_active_segment_is_cut() {
    torn_tail_case(
        |path, positions| {
            let mut bytes = fs::read(path).unwrap();
            let at = positions[3] as usize;
            bytes[at + 7] ^= 0x01; // baseOffset is outside the CRC
            fs::write(path, bytes).unwrap();
        },
        3,
    );
}

#[test]
fn missing_or_corrupt_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(600));
    fill(&mut log, 40, |i| ((i * 7) % 13) as i64);
    log.close().unwrap();
    let end = log.log_end_offset();
    let before = read_all(&log);
    let bases: Vec<i64> = log.segments.iter().map(|s| s.base_offset).collect();
    assert!(bases.len() >= 4);
    drop(log);
    let idx = |b: i64| files::index_path(dir.path(), b);
    let tidx = |b: i64| files::time_index_path(dir.path(), b);
    let originals: Vec<(Vec<u8>, Vec<u8>)> = bases[..3]
        .iter()
        .map(|&b| (fs::read(idx(b)).unwrap(), fs::read(tidx(b)).unwrap()))
        .collect();
    assert!(originals[0].0.len() >= 16, "several index entries expected");
    fs::remove_file(idx(bases[0])).unwrap();
    // Out-of-order entries.
    let mut bad = originals[1].0[8..16].to_vec();
    bad.extend_from_slice(&originals[1].0[..8]);
    bad.extend_from_slice(&originals[1].0[16..]);
    fs::write(idx(bases[1]), bad).unwrap();
    // Partial entry in the time index.
    fs::write(tidx(bases[2]), &originals[2].1[..5]).unwrap();
    // A stray temp file is cleaned up too.
    fs::write(dir.path().join("log-start-offset.tmp"), b"junk").unwrap();

    let (log, report) = open(dir.path(), config(600));
    assert_eq!(report.rebuilt_indexes, 3);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&log), before);
    log.verify().unwrap();
    for (i, &b) in bases[..3].iter().enumerate() {
        assert_eq!(fs::read(idx(b)).unwrap(), originals[i].0, "index {i}");
        assert_eq!(fs::read(tidx(b)).unwrap(), originals[i].1, "time index {i}");
    }
    assert!(!dir.path().join("log-start-offset.tmp").exists());
}

#[test]
fn index_pointing_at_the_wrong_batch_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(600));
    fill(&mut log, 20, |i| i as i64);
    let base = log.segments[0].base_offset;
    drop(log);
    // A sane-looking index whose last entry claims the wrong relative offset.
    let path = files::index_path(dir.path(), base);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] = bytes[n - 5].wrapping_add(1);
    fs::write(&path, bytes).unwrap();
    let (log, report) = open(dir.path(), config(600));
    assert_eq!(report.rebuilt_indexes, 1);
    log.verify().unwrap();
}

#[test]
fn retention_by_bytes_deletes_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    let now = 10_000;
    fill(&mut log, 40, |_| now);
    let total = log.size_bytes();
    let segments = log.segments.len();
    let limit = total / 2;
    log.set_config(LogConfig {
        retention_bytes: limit as i64,
        ..log.config().clone()
    });
    let deleted = log.enforce_retention(now).unwrap();
    assert!(deleted > 0 && deleted < segments);
    assert_eq!(log.segments.len(), segments - deleted);
    assert!(log.size_bytes() >= limit);
    // Deleting one more would go below the limit.
    assert!(log.size_bytes() - log.segments[0].size < limit);
    let start = log.segments[0].base_offset;
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(segment_files(dir.path()).len(), log.segments.len());
    assert!(matches!(
        log.read(start - 1, log.log_end_offset(), 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(!log
        .read(start, log.log_end_offset(), 100)
        .unwrap()
        .is_empty());
    assert_eq!(log.enforce_retention(now).unwrap(), 0);
    log.verify().unwrap();
    let end = log.log_end_offset();
    drop(log);
    let (log, _) = open(dir.path(), config(400));
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, end));
}

#[test]
fn retention_by_time_and_rolling_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: 1_000,
        segment_ms: 500,
        ..config(300)
    };
    let (mut log, _) = open(dir.path(), cfg.clone());
    // Old batches (timestamps 0..21) in several segments, then one new batch (t=5000) alone in
    // the active segment, first appended at now=1000.
    let old = fill(&mut log, 20, |i| i as i64);
    let old_end = old[old.len() - 1].1 + 1;
    log.roll().unwrap();
    let old_segments = log.segments.len() - 1;
    assert!(old_segments > 2);
    let mut raw = build(&[b"new-1"], 5_000);
    let info = log.append(&mut raw, EPOCH, 1_000).unwrap();
    assert_eq!((info.base_offset, info.position), (old_end, 0));
    let end = log.log_end_offset();

    // now=1400: cutoff 400 expires every old segment; the active one is never deleted.
    assert_eq!(log.enforce_retention(1_400).unwrap(), old_segments);
    assert_eq!(log.segments.len(), 1);
    assert_eq!(log.log_start_offset(), old_end);
    assert!(matches!(
        log.read(old_end - 1, end, 10),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.read(old_end, end, 10).unwrap(), stored(&raw, old_end));
    // now=1600: the active segment is older than segment_ms and rolls; nothing expires.
    assert_eq!(log.enforce_retention(1_600).unwrap(), 0);
    assert_eq!(log.segments.len(), 2);
    // now=7000: the segment with max timestamp 5000 expires; what remains is the empty
    // active segment at the old log end, so offsets never go backwards.
    assert_eq!(log.enforce_retention(7_000).unwrap(), 1);
    assert_eq!(log.segments.len(), 1);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
    assert_eq!(log.size_bytes(), 0);
    assert!(log.read(end, end, 10).unwrap().is_empty());
    drop(log);
    let (mut log, _) = open(dir.path(), cfg);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
    let mut raw = build(&[b"later"], 9_000);
    assert_eq!(log.append(&mut raw, EPOCH, 9_000).unwrap().base_offset, end);
    log.verify().unwrap();
}

#[test]
fn append_rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 100,
        ..config(1 << 20)
    };
    let (mut log, _) = open(dir.path(), cfg);
    let mut a = build(&[b"a"], 0);
    let mut b = build(&[b"b"], 0);
    let mut c = build(&[b"c"], 0);
    assert_eq!(log.append(&mut a, EPOCH, 1_000).unwrap().position, 0);
    assert!(log.append(&mut b, EPOCH, 1_100).unwrap().position > 0);
    assert_eq!(log.append(&mut c, EPOCH, 1_101).unwrap().position, 0);
    assert_eq!(log.segments.len(), 2);
    assert_eq!(log.segments[1].base_offset, 2);
}

#[test]
fn delete_records_mid_segment_persists() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    let batches = fill(&mut log, 30, |i| i as i64);
    let end = log.log_end_offset();
    let segments = log.segments.len();
    // An offset strictly inside a batch of the second segment.
    let target = batches
        .iter()
        .find(|(b, l, _)| *b >= log.segments[1].base_offset && l > b)
        .unwrap();
    let offset = target.0 + 1;
    assert_eq!(log.delete_records_before(offset).unwrap(), offset);
    assert_eq!(log.log_start_offset(), offset);
    assert_eq!(log.segments.len(), segments - 1);
    assert!(matches!(
        log.read(offset - 1, end, 10),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Reading the new start returns the whole batch holding it.
    assert_eq!(
        log.read(offset, end, 0).unwrap(),
        stored(&target.2, target.0)
    );
    // Lower offsets are a no-op; beyond the end is out of range.
    assert_eq!(log.delete_records_before(0).unwrap(), offset);
    assert!(matches!(
        log.delete_records_before(end + 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let (mut log, _) = open(dir.path(), config(400));
    assert_eq!(log.log_start_offset(), offset);
    assert_eq!(log.log_end_offset(), end);
    assert!(log.read(offset - 1, end, 10).is_err());
    let mut seen = Vec::new();
    log.scan_headers(0, &mut |h| seen.push(h.base_offset))
        .unwrap();
    assert_eq!(seen[0], target.0);
    // Up to the log end: every closed segment goes, the active one stays (empty of visible data).
    assert_eq!(log.delete_records_before(end).unwrap(), end);
    assert_eq!(log.segments.len(), 1);
    assert!(log.read(end, end, 10).unwrap().is_empty());
    assert!(log.find_batch_by_timestamp(0).unwrap().is_none());
    assert!(log.batch_with_max_timestamp().unwrap().is_none());
    drop(log);
    let (log, _) = open(dir.path(), config(400));
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
}

#[test]
fn log_start_checkpoint_is_clamped_to_a_truncated_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    let batches = fill(&mut log, 4, |i| i as i64);
    let end = log.log_end_offset();
    log.delete_records_before(end).unwrap();
    let path = log.segments[0].path.clone();
    drop(log);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(fs::metadata(&path).unwrap().len() - 3).unwrap();
    let (log, report) = open(dir.path(), config(1 << 20));
    let new_end = batches[2].1 + 1;
    assert!(report.truncated_bytes > 0);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (new_end, new_end)
    );
}

#[test]
fn timestamp_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(500));
    // Non-monotonic timestamps with a peak of 900 reached twice (first one must win).
    let ts = |i: usize| -> i64 {
        match i {
            12 | 27 => 900,
            _ => (i as i64 * 37) % 400 + 100,
        }
    };
    let batches = fill(&mut log, 40, ts);
    let max_ts = |i: usize| ts(i) + (i % 3) as i64; // build() gives records ts, ts+1, ...
    assert!(log.segments.len() > 3);
    let check = |log: &PartitionLog| {
        for target in [-5, 0, 100, 250, 499, 500, 501, 899, 900, 901, 902, 903] {
            let expected = (0..batches.len()).find(|&i| max_ts(i) >= target);
            let got = log.find_batch_by_timestamp(target).unwrap();
            assert_eq!(
                got,
                expected.map(|i| stored(&batches[i].2, batches[i].0)),
                "target {target}"
            );
        }
        let top = (0..batches.len()).map(max_ts).max().unwrap();
        let first_top = (0..batches.len()).find(|&i| max_ts(i) == top).unwrap();
        assert_eq!(
            log.batch_with_max_timestamp().unwrap(),
            Some(stored(&batches[first_top].2, batches[first_top].0))
        );
    };
    check(&log);
    // Same answers from loaded (not rebuilt) indexes after a clean close.
    log.close().unwrap();
    drop(log);
    let (mut log, report) = open(dir.path(), config(500));
    assert_eq!(report.rebuilt_indexes, 0);
    check(&log);
    // Batches below the log start are not candidates; the one holding the start is.
    let cut = batches[14].0 + 1;
    log.delete_records_before(cut).unwrap();
    let found = log.find_batch_by_timestamp(0).unwrap().unwrap();
    assert_eq!(
        found,
        stored(&batches[14].2, batches[14].0),
        "batch holding the new start"
    );
    let found = log.find_batch_by_timestamp(900).unwrap().unwrap();
    assert_eq!(found, stored(&batches[27].2, batches[27].0));
    let max = log.batch_with_max_timestamp().unwrap().unwrap();
    assert_eq!(max, stored(&batches[27].2, batches[27].0));
}

#[test]
fn append_at_offset_requires_contiguity_and_a_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    let mut first = build(&[b"x", b"y"], 10);
    stamp_offset_and_epoch(&mut first, 0, 5);
    let info = log.append_at_offset(&first, 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.max_timestamp),
        (0, 1, 11)
    );
    let mut gap = build(&[b"z"], 12);
    stamp_offset_and_epoch(&mut gap, 5, 5);
    assert!(matches!(
        log.append_at_offset(&gap, 0),
        Err(LogError::NonContiguous {
            expected: 2,
            got: 5
        })
    ));
    let mut next = build(&[b"z"], 12);
    stamp_offset_and_epoch(&mut next, 2, 5);
    let last = next.len() - 1;
    next[last] ^= 1;
    assert!(matches!(
        log.append_at_offset(&next, 0),
        Err(LogError::InvalidBatch(
            crate::batch::BatchError::CrcMismatch { .. }
        ))
    ));
    next[last] ^= 1;
    log.append_at_offset(&next, 0).unwrap();
    // Bytes are stored unchanged, leader epoch included.
    let mut expected = first.clone();
    expected.extend_from_slice(&next);
    assert_eq!(log.read(0, 3, 1 << 20).unwrap(), expected);
    // The producer path refuses anything but exactly one batch.
    let mut two = build(&[b"a"], 0);
    two.extend_from_slice(&build(&[b"b"], 0));
    assert!(matches!(
        log.append(&mut two, EPOCH, 0),
        Err(LogError::InvalidBatch(
            crate::batch::BatchError::TrailingBytes(_)
        ))
    ));
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn verify_and_read_detect_a_flipped_byte_in_a_closed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    let batches = fill(&mut log, 20, |i| i as i64);
    assert!(log.segments.len() > 2);
    log.verify().unwrap();
    let path = log.segments[0].path.clone();
    let mut bytes = fs::read(&path).unwrap();
    let second = batches[1].2.len();
    let at = batches[0].2.len() + second - 3; // inside batch 1's records
    bytes[at] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    match log.verify() {
        Err(LogError::Corrupt {
            path: p, position, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(position, batches[0].2.len() as u64);
        }
        other => panic!("{other:?}"),
    }
    let end = log.log_end_offset();
    assert!(log.read(0, end, 0).is_ok());
    assert!(matches!(
        log.read(batches[1].0, end, 0),
        Err(LogError::Corrupt { .. })
    ));
    assert!(matches!(
        log.read(0, end, 1 << 20),
        Err(LogError::Corrupt { .. })
    ));
    // A closed segment is not silently truncated on open: its headers are intact so it loads,
    // and the damage stays visible to reads and verify.
    drop(log);
    let (log, report) = open(dir.path(), config(400));
    assert_eq!(report.truncated_bytes, 0);
    assert!(log.verify().is_err());
}

#[test]
fn unparsable_segment_names_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20));
    fill(&mut log, 2, |i| i as i64);
    drop(log);
    fs::write(dir.path().join("12.log"), b"").unwrap();
    match PartitionLog::open(dir.path(), config(1 << 20)) {
        Err(e @ LogError::BadFileName { .. }) => assert!(e.to_string().contains("12.log")),
        other => panic!("{other:?}"),
    }
    fs::remove_file(dir.path().join("12.log")).unwrap();
    fs::write(dir.path().join("99999999999999999999.log"), b"").unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), config(1 << 20)),
        Err(LogError::BadFileName { .. })
    ));
    fs::remove_file(dir.path().join("99999999999999999999.log")).unwrap();
    // Unrelated files are left alone.
    fs::write(dir.path().join("partition.metadata"), b"x").unwrap();
    let (log, _) = open(dir.path(), config(1 << 20));
    assert_eq!(log.log_end_offset(), 3); // batches of 1 and 2 records
    assert!(dir.path().join("partition.metadata").exists());
}

#[test]
fn gap_between_segments_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    fill(&mut log, 12, |i| i as i64);
    assert!(log.segments.len() >= 3);
    let middle = log.segments[1].base_offset;
    drop(log);
    fs::remove_file(files::log_path(dir.path(), middle)).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), config(300)),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn garbage_in_a_closed_segment_without_indexes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    fill(&mut log, 12, |i| i as i64);
    let base = log.segments[0].base_offset;
    drop(log);
    fs::remove_file(files::index_path(dir.path(), base)).unwrap();
    let path = files::log_path(dir.path(), base);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]); // absurd batchLength
    fs::write(&path, bytes).unwrap();
    match PartitionLog::open(dir.path(), config(300)) {
        Err(LogError::Corrupt { position: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-3");
    let (mut log, _) = open(&path, config(300));
    fill(&mut log, 10, |i| i as i64);
    log.delete().unwrap();
    assert!(!path.exists());
}

#[test]
fn sync_target_follows_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    fill(&mut log, 3, |i| i as i64);
    let t1 = log.sync_target();
    assert_eq!(t1.end_offset, log.log_end_offset());
    fill(&mut log, 10, |i| i as i64);
    let t2 = log.sync_target();
    assert!(!Arc::ptr_eq(&t1.file, &t2.file));
    t1.file.sync_data().unwrap();
    t2.file.sync_data().unwrap();
    // After a roll the previous segment's indexes are already on disk.
    let first = log.segments[0].base_offset;
    assert!(files::index_path(dir.path(), first).exists());
    assert!(files::time_index_path(dir.path(), first).exists());
}

#[test]
fn random_damage_never_panics_and_leaves_a_valid_log() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| -> usize {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), config(500));
        fill(&mut log, 12, |i| (i * 5 % 7) as i64);
        let paths: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        drop(log);
        // Damage one file: flip bytes, truncate, or append junk.
        let victim = &paths[next(paths.len())];
        let mut bytes = fs::read(victim).unwrap();
        match round % 3 {
            0 if !bytes.is_empty() => {
                for _ in 0..1 + next(3) {
                    let at = next(bytes.len());
                    bytes[at] ^= 1 << next(8);
                }
            }
            1 => bytes.truncate(next(bytes.len() + 1)),
            _ => bytes.extend((0..next(100)).map(|_| next(256) as u8)),
        }
        fs::write(victim, &bytes).unwrap();
        // Either a clean error, or a log that verifies and accepts appends. Closed segments
        // are only header-checked on open, so a flipped record byte there shows up in verify.
        if let Ok((mut log, _)) = PartitionLog::open(dir.path(), config(500)) {
            let closed_damage = log.verify().is_err();
            let end = log.log_end_offset();
            let mut raw = build(&[b"more"], 1);
            assert_eq!(log.append(&mut raw, EPOCH, 0).unwrap().base_offset, end);
            if !closed_damage {
                log.verify().unwrap();
            }
            let _ = log.read(log.log_start_offset(), end + 1, 1 << 20);
            let _ = log.find_batch_by_timestamp(3);
            let _ = log.batch_with_max_timestamp();
        }
    }
}

#[test]
fn mirror_appends_keep_source_offsets_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(400));
    // A source log's batches, stored at offsets 0.., copied as they are.
    let src_dir = tempfile::tempdir().unwrap();
    let (mut src, _) = open(src_dir.path(), config(400));
    let batches = fill(&mut src, 20, |i| 5_000 + i as i64);
    for (_, _, bytes) in &batches {
        log.append_at_offset(bytes, 1_000).unwrap();
    }
    assert_eq!(read_all(&log), read_all(&src));
    // A batch that does not continue the log is refused and changes nothing.
    let (base, _, bytes) = &batches[3];
    let err = log.append_at_offset(bytes, 1_000).unwrap_err();
    assert!(
        matches!(err, LogError::NonContiguous { got, .. } if got == *base),
        "{err}"
    );
    assert_eq!(log.log_end_offset(), src.log_end_offset());
}

#[test]
fn reset_to_restarts_an_empty_log_at_the_source_start_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    fill(&mut log, 12, |i| i as i64);
    let end = log.log_end_offset();
    assert!(
        log.reset_to(end - 1).is_err(),
        "reset below the log end must be refused"
    );
    log.reset_to(end + 1_000).unwrap();
    assert_eq!(log.log_start_offset(), end + 1_000);
    assert_eq!(log.log_end_offset(), end + 1_000);
    assert_eq!(segment_files(dir.path()).len(), 1);
    // A batch of the source at that offset continues the reset log.
    let mut raw = build(&[b"after".as_slice()], 7);
    stamp_offset_and_epoch(&mut raw, end + 1_000, EPOCH);
    log.append_at_offset(&raw, 1_000).unwrap();
    drop(log);
    let (log, _) = open(dir.path(), config(300));
    assert_eq!(log.log_start_offset(), end + 1_000);
    assert_eq!(log.log_end_offset(), end + 1_001);
    assert_eq!(read_all(&log), raw);
}

#[test]
fn reset_interrupted_after_the_checkpoint_recovers_to_a_consistent_log() {
    // Simulates a crash after the new log start was checkpointed but before the segments were
    // deleted: recovery clamps the start to the old end and the log stays usable.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    fill(&mut log, 5, |i| i as i64);
    let end = log.log_end_offset();
    drop(log);
    checkpoint::write(dir.path(), end + 50).unwrap();
    let (mut log, _) = open(dir.path(), config(300));
    assert!(log.log_start_offset() <= log.log_end_offset());
    log.reset_to(end + 50).unwrap();
    assert_eq!(log.log_end_offset(), end + 50);
}

#[test]
fn truncate_to_a_batch_boundary_keeps_the_prefix_across_segments_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), config(400));
    let batches = fill(&mut log, 40, |i| 1_000 + i as i64);
    assert!(segment_files(tmp.path()).len() > 3, "several segments");
    // Cut in the middle of the log, at a batch that is not a segment's first.
    let (cut, _, _) = batches[17];
    let before: Vec<u8> = batches[..17]
        .iter()
        .flat_map(|(base, _, raw)| stored(raw, *base))
        .collect();
    assert!(log.truncate_to(cut + 1).is_err(), "inside a batch");
    log.truncate_to(cut).unwrap();
    assert_eq!(log.log_end_offset(), cut);
    assert_eq!(read_all(&log), before);
    assert_eq!(
        log.header_at(batches[3].0).unwrap().base_offset,
        batches[3].0
    );
    assert!(log.header_at(cut).is_err(), "past the end now");
    // Appending continues at the cut; a reopen sees the same log.
    let mut raw = build(&[b"after"], 9_999);
    assert_eq!(log.append(&mut raw, EPOCH, 1_000).unwrap().base_offset, cut);
    drop(log);
    let (log, _) = open(tmp.path(), config(400));
    assert_eq!(log.log_end_offset(), cut + 1);
    log.verify().unwrap();
}

#[test]
fn restart_at_a_lower_offset_empties_the_log_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), config(400));
    fill(&mut log, 20, |i| 1_000 + i as i64);
    log.delete_records_before(5).unwrap();
    log.restart_at(2).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (2, 2));
    assert_eq!(segment_files(tmp.path()).len(), 1);
    let raw = build(&[b"new history"], 5_000);
    let mut stamped = raw.clone();
    stamp_offset_and_epoch(&mut stamped, 2, EPOCH);
    log.append_at_offset(&stamped, 1_000).unwrap();
    drop(log);
    let (log, _) = open(tmp.path(), config(400));
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (2, 3));
    assert_eq!(read_all(&log), stored(&raw, 2));
}
