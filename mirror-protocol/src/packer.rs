//! Sans-IO batching of Data entries for one data stream: entries accumulate until enough
//! source bytes are pending or the oldest has waited `linger`, then go out as one Data frame.
//! Consecutive reads of a partition are merged into one entry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::data::{batch_offset_range, Data, DataEntry};

/// When a [`DataPacker`] flushes.
#[derive(Debug, Clone, Copy)]
pub struct PackerConfig {
    /// Flush at >= this many pending source bytes; default 1 MiB. Keep it well below
    /// `Limits::max_frame_bytes`: one Data frame carries everything pending.
    pub max_bytes: usize,
    /// Flush when the first pending entry is this old; default 5 ms.
    pub linger: Duration,
}

impl Default for PackerConfig {
    fn default() -> Self {
        PackerConfig {
            max_bytes: 1 << 20,
            linger: Duration::from_millis(5),
        }
    }
}

/// A pending entry: its batches as the chunks pushed (joined once, at `take`).
#[derive(Debug)]
struct Pending {
    entry: DataEntry,
    chunks: Vec<Bytes>,
    /// Offset after the last pending batch; `None` if there are no batches or they could not be
    /// parsed (then nothing is merged after them).
    next_offset: Option<i64>,
}

/// Accumulates [`DataEntry`]s for one data stream.
///
/// The caller pushes what it reads and calls [`take`](Self::take) whenever
/// [`ready`](Self::ready); as long as it does, at most `max_bytes` plus one entry is pending.
#[derive(Debug)]
pub struct DataPacker {
    cfg: PackerConfig,
    pending: Vec<Pending>,
    /// Index in `pending` of the last entry of each partition.
    last_of_partition: HashMap<(String, i32), usize>,
    pending_bytes: usize,
    first_push: Option<Instant>,
}

impl DataPacker {
    pub fn new(cfg: PackerConfig) -> Self {
        DataPacker {
            cfg,
            pending: Vec::new(),
            last_of_partition: HashMap::new(),
            pending_bytes: 0,
            first_push: None,
        }
    }

    /// Adds an entry. It is merged into the pending entry of the same partition if its batches
    /// continue that entry's (or either has none): batches are concatenated and the newest log
    /// start and high watermark kept. Otherwise it is appended.
    pub fn push(&mut self, mut entry: DataEntry, now: Instant) {
        self.first_push.get_or_insert(now);
        let batches = std::mem::take(&mut entry.batches);
        self.pending_bytes += batches.len();
        let range = batch_offset_range(&batches);
        let key = (entry.topic.clone(), entry.partition);
        if let Some(pending) = self
            .last_of_partition
            .get(&key)
            .and_then(|&index| self.pending.get_mut(index))
        {
            let merged_next = if batches.is_empty() {
                Some(pending.next_offset)
            } else if pending.chunks.is_empty() {
                Some(range.map(|(_, next)| next))
            } else {
                match (pending.next_offset, range) {
                    (Some(pending_next), Some((first, next))) if first >= pending_next => {
                        Some(Some(next))
                    }
                    _ => None,
                }
            };
            if let Some(next_offset) = merged_next {
                pending.next_offset = next_offset;
                pending.entry.source_log_start = entry.source_log_start;
                pending.entry.source_high_watermark = entry.source_high_watermark;
                if !batches.is_empty() {
                    pending.chunks.push(batches);
                }
                return;
            }
        }
        self.last_of_partition.insert(key, self.pending.len());
        let chunks = if batches.is_empty() {
            Vec::new()
        } else {
            vec![batches]
        };
        self.pending.push(Pending {
            entry,
            chunks,
            next_offset: range.map(|(_, next)| next),
        });
    }

    /// Source (batch) bytes pending.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// `pending_bytes() >= max_bytes`.
    pub fn is_full(&self) -> bool {
        self.pending_bytes >= self.cfg.max_bytes
    }

    /// When the pending entries must be sent: first push since the last take + linger.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_push.map(|first| first + self.cfg.linger)
    }

    /// Whether something is pending and it is full or its deadline has passed.
    pub fn ready(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            && (self.is_full() || self.deadline().is_some_and(|deadline| now >= deadline))
    }

    /// Everything pending, as one Data frame (`None` if nothing is).
    pub fn take(&mut self) -> Option<Data> {
        if self.pending.is_empty() {
            return None;
        }
        self.last_of_partition.clear();
        self.pending_bytes = 0;
        self.first_push = None;
        let entries = self
            .pending
            .drain(..)
            .map(|pending| DataEntry {
                batches: join(pending.chunks),
                ..pending.entry
            })
            .collect();
        Some(Data { entries })
    }
}

fn join(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in &chunks {
        joined.extend_from_slice(chunk);
    }
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::SourceOffset;

    /// A fake batch: only the header fields the packer reads are meaningful.
    fn batch(base: i64, records: i32) -> Vec<u8> {
        let mut b = vec![0u8; 61];
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b[8..12].copy_from_slice(&49i32.to_be_bytes());
        b[23..27].copy_from_slice(&(records - 1).to_be_bytes());
        b
    }

    fn entry(topic: &str, partition: i32, batches: Vec<u8>, hw: i64) -> DataEntry {
        DataEntry {
            topic: topic.into(),
            partition,
            source_log_start: SourceOffset(0),
            source_high_watermark: SourceOffset(hw),
            batches: Bytes::from(batches),
        }
    }

    #[test]
    fn contiguous_reads_merge_and_rewinds_do_not() {
        let now = Instant::now();
        let mut packer = DataPacker::new(PackerConfig::default());
        packer.push(entry("t", 0, batch(0, 10), 10), now);
        packer.push(entry("t", 1, batch(0, 5), 5), now);
        packer.push(entry("t", 0, batch(10, 10), 20), now);
        packer.push(entry("t", 0, Vec::new(), 25), now); // progress only
        packer.push(entry("t", 0, batch(5, 1), 25), now); // rewind: separate entry
        assert_eq!(packer.pending_bytes(), 4 * 61);
        let data = packer.take().unwrap();
        assert_eq!(data.entries.len(), 3);
        let first = &data.entries[0];
        assert_eq!((first.partition, first.batches.len()), (0, 122));
        assert_eq!(first.source_high_watermark, SourceOffset(25));
        assert_eq!(&first.batches[61..69], &10i64.to_be_bytes());
        assert_eq!(data.entries[1].partition, 1);
        assert_eq!(data.entries[2].batches.len(), 61);
        assert!(packer.take().is_none());
        assert_eq!(packer.pending_bytes(), 0);
    }

    #[test]
    fn ready_on_size_or_linger() {
        let start = Instant::now();
        let cfg = PackerConfig {
            max_bytes: 100,
            linger: Duration::from_millis(5),
        };
        let mut packer = DataPacker::new(cfg);
        assert!(!packer.ready(start + Duration::from_secs(1)));
        assert_eq!(packer.deadline(), None);
        packer.push(entry("t", 0, batch(0, 1), 1), start);
        assert_eq!(packer.deadline(), Some(start + cfg.linger));
        assert!(!packer.ready(start + Duration::from_millis(4)));
        assert!(packer.ready(start + Duration::from_millis(5)));
        packer.push(
            entry("t", 0, batch(1, 1), 2),
            start + Duration::from_millis(1),
        );
        assert!(packer.is_full());
        assert!(packer.ready(start));
        packer.take().unwrap();
        assert!(!packer.is_full());
        assert_eq!(packer.deadline(), None);
    }

    #[test]
    fn unparseable_batches_are_never_merged_after() {
        let now = Instant::now();
        let mut packer = DataPacker::new(PackerConfig::default());
        packer.push(entry("t", 0, vec![1, 2, 3], 1), now);
        packer.push(entry("t", 0, batch(0, 1), 1), now);
        assert_eq!(packer.take().unwrap().entries.len(), 2);
    }
}
