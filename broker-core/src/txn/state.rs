//! Transaction coordinator state: one record per transactional id, its state machine, and a
//! compact binary encoding for the durable store.
//!
//! States follow Kafka's: `Empty` → `Ongoing` (AddPartitionsToTxn / AddOffsetsToTxn) →
//! `PrepareCommit`/`PrepareAbort` (EndTxn, written durably before any marker) →
//! `CompleteCommit`/`CompleteAbort` (after every marker is durable). A crash between prepare
//! and complete is finished at start-up by writing the markers again (a repeated marker is
//! harmless: it closes nothing).

use std::collections::BTreeSet;

use crate::group::offsets::CommittedOffset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    /// The names Kafka's DescribeTransactions/ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    fn code(self) -> u8 {
        match self {
            TxnStatus::Empty => 0,
            TxnStatus::Ongoing => 1,
            TxnStatus::PrepareCommit => 2,
            TxnStatus::PrepareAbort => 3,
            TxnStatus::CompleteCommit => 4,
            TxnStatus::CompleteAbort => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            _ => return None,
        })
    }

    pub fn is_prepare(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort)
    }
}

/// A transactional offset commit waiting for its transaction to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: CommittedOffset,
}

/// Everything the coordinator knows about one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    pub pending_offsets: Vec<PendingOffset>,
    pub start_ms: i64,
    pub last_update_ms: i64,
}

impl TxnMeta {
    pub fn new(transactional_id: &str, producer_id: i64, timeout_ms: i32, now: i64) -> Self {
        TxnMeta {
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch: 0,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            pending_offsets: Vec::new(),
            start_ms: -1,
            last_update_ms: now,
        }
    }

    /// Serialises the record for the store.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128));
        w.u8(1); // format version
        w.str(&self.transactional_id);
        w.i64(self.producer_id);
        w.i16(self.epoch);
        w.i32(self.timeout_ms);
        w.u8(self.status.code());
        w.i64(self.start_ms);
        w.i64(self.last_update_ms);
        w.i32(self.partitions.len() as i32);
        for (t, p) in &self.partitions {
            w.str(t);
            w.i32(*p);
        }
        w.i32(self.groups.len() as i32);
        for g in &self.groups {
            w.str(g);
        }
        w.i32(self.pending_offsets.len() as i32);
        for o in &self.pending_offsets {
            w.str(&o.group);
            w.str(&o.topic);
            w.i32(o.partition);
            w.i64(o.offset.offset);
            w.i32(o.offset.leader_epoch);
            w.i64(o.offset.commit_time_ms);
            w.str(&o.offset.metadata);
        }
        w.0
    }

    /// Parses a stored record; None if it is corrupt.
    pub fn decode(b: &[u8]) -> Option<TxnMeta> {
        let mut r = Reader { b, at: 0 };
        if r.u8()? != 1 {
            return None;
        }
        let transactional_id = r.str()?;
        let producer_id = r.i64()?;
        let epoch = r.i16()?;
        let timeout_ms = r.i32()?;
        let status = TxnStatus::from_code(r.u8()?)?;
        let start_ms = r.i64()?;
        let last_update_ms = r.i64()?;
        let mut partitions = BTreeSet::new();
        for _ in 0..r.count()? {
            partitions.insert((r.str()?, r.i32()?));
        }
        let mut groups = BTreeSet::new();
        for _ in 0..r.count()? {
            groups.insert(r.str()?);
        }
        let mut pending_offsets = Vec::new();
        for _ in 0..r.count()? {
            pending_offsets.push(PendingOffset {
                group: r.str()?,
                topic: r.str()?,
                partition: r.i32()?,
                offset: CommittedOffset {
                    offset: r.i64()?,
                    leader_epoch: r.i32()?,
                    commit_time_ms: r.i64()?,
                    metadata: r.str()?,
                },
            });
        }
        if r.at != b.len() {
            return None;
        }
        Some(TxnMeta {
            transactional_id,
            producer_id,
            epoch,
            timeout_ms,
            status,
            partitions,
            groups,
            pending_offsets,
            start_ms,
            last_update_ms,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.i32(s.len() as i32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Option<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(i64::from_be_bytes(a))
    }
    /// A collection length: never larger than the bytes left, so a corrupt count cannot
    /// make us loop or allocate without bound.
    fn count(&mut self) -> Option<usize> {
        let n = self.i32()?;
        (n >= 0 && (n as usize) <= self.b.len() - self.at).then_some(n as usize)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.count()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trip_and_corruption() {
        let mut m = TxnMeta::new("tx-1", 42, 60_000, 5);
        m.status = TxnStatus::PrepareCommit;
        m.epoch = 3;
        m.partitions.insert(("a".into(), 0));
        m.partitions.insert(("b".into(), 7));
        m.groups.insert("g".into());
        m.pending_offsets.push(PendingOffset {
            group: "g".into(),
            topic: "a".into(),
            partition: 0,
            offset: CommittedOffset {
                offset: 10,
                leader_epoch: 0,
                commit_time_ms: 5,
                metadata: "x".into(),
            },
        });
        let bytes = m.encode();
        assert_eq!(TxnMeta::decode(&bytes), Some(m));
        for cut in 0..bytes.len() {
            assert_eq!(TxnMeta::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(TxnMeta::decode(&huge), None);
    }
}
