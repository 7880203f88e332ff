//! Per-partition state of idempotent producers: the sequence-number checks that turn retried
//! batches into duplicates answered with their original offsets instead of second copies.
//!
//! A sans-IO table: the partition feeds it batch headers (on append, and on start-up from the
//! log) and asks it to judge each incoming batch. Kafka keeps the last five batches per producer
//! (the most a producer may have in flight); so does this table.
//!
//! It also tracks transactions in this partition: the first offset of every open transaction
//! (the lowest is the first unstable offset, which bounds the last stable offset) and the
//! offset ranges of aborted transactions, which read_committed fetches report so clients can
//! drop aborted records.

use std::collections::{HashMap, VecDeque};

use crate::batch::{BatchHeader, ControlType};

/// Batches remembered per producer, as in Kafka (max.in.flight.requests.per.connection <= 5).
pub const CACHED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

/// An aborted transaction's extent in this partition: its first data batch to its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
}

/// One producer as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    /// First offset of its open transaction in this partition, or -1.
    pub txn_start_offset: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate { base_offset: i64 },
}

/// Why an idempotent batch was refused; each maps to the Kafka error of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    OutOfOrder { expected: i32, got: i32 },
    InvalidEpoch { current: i16, got: i16 },
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX back to 0, as in Kafka.
    ((h.base_sequence as i64 + h.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Producer id -> recent batches, for one partition.
#[derive(Debug, Default)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: producer id -> offset of its first batch in this partition.
    ongoing: HashMap<i64, i64>,
    /// Aborted transactions, in marker order.
    aborted: Vec<AbortedTxn>,
}

impl ProducerStateTable {
    /// Judges a batch before it is appended. Batches without a producer id always append.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceVerdict, SequenceError> {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Ok(SequenceVerdict::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return if h.base_sequence == 0 {
                Ok(SequenceVerdict::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                })
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err(SequenceError::InvalidEpoch {
                current: entry.epoch,
                got: h.producer_epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            // A new epoch starts its sequences again at 0.
            return if h.base_sequence == 0 {
                Ok(SequenceVerdict::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                })
            };
        }
        let last = last_seq_of(h);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Ok(SequenceVerdict::Duplicate {
                base_offset: dup.base_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| next_seq(b.last_seq))
            .unwrap_or(0);
        if h.base_sequence != expected {
            return Err(SequenceError::OutOfOrder {
                expected,
                got: h.base_sequence,
            });
        }
        Ok(SequenceVerdict::Append)
    }

    /// Checks a transaction marker before it is written: an older epoch is fenced.
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), SequenceError> {
        match self.producers.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(SequenceError::InvalidEpoch {
                current: e.epoch,
                got: epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Records a transaction marker that is now in the log.
    pub fn record_marker(&mut self, h: &BatchHeader, kind: ControlType) {
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if let Some(first_offset) = self.ongoing.remove(&h.producer_id) {
            if kind == ControlType::Abort {
                self.aborted.push(AbortedTxn {
                    producer_id: h.producer_id,
                    first_offset,
                    last_offset: h.base_offset,
                });
            }
        }
    }

    /// The first offset of the oldest open transaction, if any.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Aborted transactions that overlap offsets `[from, to)`.
    pub fn aborted_overlapping(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions that ended below the log start.
    pub fn prune_aborted(&mut self, log_start_offset: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start_offset);
    }

    /// Every producer with its epoch, last sequence and open transaction (DescribeProducers).
    pub fn describe(&self) -> Vec<ProducerInfo> {
        let mut v: Vec<ProducerInfo> = self
            .producers
            .iter()
            .map(|(id, e)| ProducerInfo {
                producer_id: *id,
                epoch: e.epoch,
                last_sequence: e.batches.back().map(|b| b.last_seq).unwrap_or(-1),
                txn_start_offset: self.ongoing.get(id).copied().unwrap_or(-1),
            })
            .collect();
        for (id, first) in &self.ongoing {
            if !self.producers.contains_key(id) {
                v.push(ProducerInfo {
                    producer_id: *id,
                    epoch: -1,
                    last_sequence: -1,
                    txn_start_offset: *first,
                });
            }
        }
        v.sort_by_key(|p| p.producer_id);
        v
    }

    /// Records a batch that is now in the log (its header carries the assigned offsets).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.is_transactional() && !h.is_control() && h.producer_id >= 0 {
            self.ongoing.entry(h.producer_id).or_insert(h.base_offset);
        }
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(CachedBatch {
            first_seq: h.base_sequence,
            last_seq: last_seq_of(h),
            base_offset: h.base_offset,
        });
        while entry.batches.len() > CACHED_BATCHES {
            entry.batches.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Snapshot file format version tag.
const SNAPSHOT_MAGIC: &[u8; 8] = b"STRAITPS";
const SNAPSHOT_VERSION: u8 = 1;

impl ProducerStateTable {
    /// Serialises the table (a snapshot taken at log end offset `offset`), CRC-32C protected.
    pub fn encode_snapshot(&self, offset: i64) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.producers.len() * 80);
        b.extend_from_slice(SNAPSHOT_MAGIC);
        b.push(SNAPSHOT_VERSION);
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let e = &self.producers[id];
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&e.epoch.to_be_bytes());
            b.push(e.batches.len() as u8);
            for c in &e.batches {
                b.extend_from_slice(&c.first_seq.to_be_bytes());
                b.extend_from_slice(&c.last_seq.to_be_bytes());
                b.extend_from_slice(&c.base_offset.to_be_bytes());
            }
        }
        let mut ongoing: Vec<(&i64, &i64)> = self.ongoing.iter().collect();
        ongoing.sort();
        b.extend_from_slice(&(ongoing.len() as u32).to_be_bytes());
        for (pid, first) in ongoing {
            b.extend_from_slice(&pid.to_be_bytes());
            b.extend_from_slice(&first.to_be_bytes());
        }
        b.extend_from_slice(&(self.aborted.len() as u32).to_be_bytes());
        for a in &self.aborted {
            b.extend_from_slice(&a.producer_id.to_be_bytes());
            b.extend_from_slice(&a.first_offset.to_be_bytes());
            b.extend_from_slice(&a.last_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses a snapshot: the table and the offset it was taken at. None if corrupt.
    pub fn decode_snapshot(b: &[u8]) -> Option<(ProducerStateTable, i64)> {
        let body_len = b.len().checked_sub(4)?;
        let (body, crc) = b.split_at(body_len);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let mut r = SnapshotReader { b: body, at: 0 };
        if r.take(8)? != SNAPSHOT_MAGIC || r.take(1)?[0] != SNAPSHOT_VERSION {
            return None;
        }
        let offset = r.i64()?;
        let mut table = ProducerStateTable::default();
        for _ in 0..r.count(14)? {
            let id = r.i64()?;
            let epoch = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let n = r.take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(n.min(CACHED_BATCHES));
            for _ in 0..n {
                batches.push_back(CachedBatch {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                });
            }
            table.producers.insert(id, ProducerEntry { epoch, batches });
        }
        for _ in 0..r.count(16)? {
            let pid = r.i64()?;
            table.ongoing.insert(pid, r.i64()?);
        }
        for _ in 0..r.count(24)? {
            table.aborted.push(AbortedTxn {
                producer_id: r.i64()?,
                first_offset: r.i64()?,
                last_offset: r.i64()?,
            });
        }
        (r.at == body.len()).then_some((table, offset))
    }
}

struct SnapshotReader<'a> {
    b: &'a [u8],
    at: usize,
}

impl SnapshotReader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    /// An element count that the remaining bytes can hold (`min_size` bytes each).
    fn count(&mut self, min_size: usize) -> Option<usize> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        (n.checked_mul(min_size)? <= self.b.len() - self.at).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn in_order_duplicate_and_gap() {
        let mut t = ProducerStateTable::default();
        let b0 = header(7, 0, 0, 10, 0);
        assert_eq!(t.check(&b0), Ok(SequenceVerdict::Append));
        t.record(&b0);
        let b1 = header(7, 0, 10, 5, 10);
        assert_eq!(t.check(&b1), Ok(SequenceVerdict::Append));
        t.record(&b1);
        // retry of b0 and of b1
        assert_eq!(
            t.check(&header(7, 0, 0, 10, 0)),
            Ok(SequenceVerdict::Duplicate { base_offset: 0 })
        );
        assert_eq!(
            t.check(&header(7, 0, 10, 5, 0)),
            Ok(SequenceVerdict::Duplicate { base_offset: 10 })
        );
        // a gap
        assert_eq!(
            t.check(&header(7, 0, 16, 1, 0)),
            Err(SequenceError::OutOfOrder {
                expected: 15,
                got: 16
            })
        );
        // an old epoch is fenced, a new one restarts at 0
        assert!(matches!(
            t.check(&header(7, -1, 15, 1, 0)),
            Err(SequenceError::InvalidEpoch { .. })
        ));
        assert_eq!(t.check(&header(7, 1, 0, 1, 0)), Ok(SequenceVerdict::Append));
        assert!(t.check(&header(7, 1, 3, 1, 0)).is_err());
        // unknown producer must start at 0; non-idempotent batches always append
        assert!(t.check(&header(8, 0, 4, 1, 0)).is_err());
        assert_eq!(
            t.check(&header(-1, -1, -1, 3, 0)),
            Ok(SequenceVerdict::Append)
        );
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut t = ProducerStateTable::default();
        for i in 0..7 {
            t.record(&header(1, 0, i, 1, i as i64));
        }
        assert_eq!(
            t.check(&header(1, 0, 6, 1, 0)),
            Ok(SequenceVerdict::Duplicate { base_offset: 6 })
        );
        assert!(t.check(&header(1, 0, 0, 1, 0)).is_err());
        assert_eq!(t.check(&header(1, 0, 7, 1, 0)), Ok(SequenceVerdict::Append));
    }

    #[test]
    fn transactions_open_commit_and_abort() {
        let mut t = ProducerStateTable::default();
        let mut b = header(1, 0, 0, 2, 10);
        b.attributes = 0x10; // transactional
        t.record(&b);
        let mut b2 = header(2, 0, 0, 1, 12);
        b2.attributes = 0x10;
        t.record(&b2);
        assert_eq!(t.first_unstable_offset(), Some(10));
        let mut marker = header(1, 0, -1, 1, 13);
        marker.attributes = 0x30;
        t.record_marker(&marker, ControlType::Abort);
        assert_eq!(t.first_unstable_offset(), Some(12));
        let mut marker2 = header(2, 0, -1, 1, 14);
        marker2.attributes = 0x30;
        t.record_marker(&marker2, ControlType::Commit);
        assert_eq!(t.first_unstable_offset(), None);
        assert_eq!(
            t.aborted_overlapping(0, 100),
            vec![AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 13
            }]
        );
        assert!(t.aborted_overlapping(14, 100).is_empty());
        assert!(t.check_marker(1, -1).is_err());
        t.prune_aborted(14);
        assert!(t.aborted_overlapping(0, 100).is_empty());
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let mut t = ProducerStateTable::default();
        for i in 0..7 {
            t.record(&header(1, 2, i, 1, i as i64));
        }
        let mut txn = header(9, 0, 0, 3, 20);
        txn.attributes = 0x10;
        t.record(&txn);
        let mut aborted = header(8, 0, 0, 1, 10);
        aborted.attributes = 0x10;
        t.record(&aborted);
        let mut marker = header(8, 0, -1, 1, 11);
        marker.attributes = 0x30;
        t.record_marker(&marker, ControlType::Abort);
        let bytes = t.encode_snapshot(23);
        let (back, offset) = ProducerStateTable::decode_snapshot(&bytes).unwrap();
        assert_eq!(offset, 23);
        assert_eq!(back.describe(), t.describe());
        assert_eq!(back.first_unstable_offset(), Some(20));
        assert_eq!(
            back.aborted_overlapping(0, 100),
            t.aborted_overlapping(0, 100)
        );
        assert_eq!(
            back.check(&header(1, 2, 6, 1, 0)),
            Ok(SequenceVerdict::Duplicate { base_offset: 6 })
        );
        for cut in 0..bytes.len() {
            assert!(ProducerStateTable::decode_snapshot(&bytes[..cut]).is_none());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(ProducerStateTable::decode_snapshot(&flipped).is_none());
    }

    #[test]
    fn sequence_wraps() {
        let mut t = ProducerStateTable::default();
        t.record(&header(1, 0, i32::MAX - 1, 2, 0));
        assert_eq!(t.check(&header(1, 0, 0, 1, 2)), Ok(SequenceVerdict::Append));
    }
}
