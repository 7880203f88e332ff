//! In-memory sparse offset index and time index of one segment, with their on-disk encodings
//! (`.index`: relative offset u32 BE + file position u32 BE; `.timeindex`: max timestamp so far
//! i64 BE + relative offset u32 BE) and the sanity checks applied when loading them.

/// One offset index entry: the batch whose base offset is `segment base + rel` starts at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub rel: u32,
    pub pos: u32,
}

/// One time index entry: when this entry was added the running max timestamp of the segment was
/// `ts`, first reached by the batch whose base offset is `segment base + rel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub ts: i64,
    pub rel: u32,
}

const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

/// Sparse map from relative offsets to file positions, strictly increasing in both.
#[derive(Debug, Default, Clone)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    pub fn push(&mut self, rel: u32, pos: u32) {
        self.entries.push(OffsetEntry { rel, pos });
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// The entry with the largest relative offset <= `rel`, if any.
    pub fn floor(&self, rel: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.rel <= rel);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// The entry with the smallest relative offset >= `rel`, if any.
    pub fn ceiling(&self, rel: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.rel < rel);
        self.entries.get(i).copied()
    }

    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.rel.to_be_bytes());
            out.extend_from_slice(&e.pos.to_be_bytes());
        }
        out
    }

    /// Decodes and checks an index file of a segment of `segment_size` bytes: whole entries,
    /// first entry (0, 0) when the segment holds data, both fields strictly increasing,
    /// positions inside the segment.
    pub fn decode(bytes: &[u8], segment_size: u64) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return Err(format!(
                "{} bytes is not a whole number of {OFFSET_ENTRY_LEN}-byte entries",
                bytes.len()
            ));
        }
        let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN);
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let rel = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let pos = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if let Some(prev) = entries.last() {
                let prev: &OffsetEntry = prev;
                if rel <= prev.rel || pos <= prev.pos {
                    return Err(format!(
                        "entry ({rel}, {pos}) does not follow ({}, {})",
                        prev.rel, prev.pos
                    ));
                }
            } else if rel != 0 || pos != 0 {
                return Err(format!("first entry is ({rel}, {pos}), not (0, 0)"));
            }
            if u64::from(pos) >= segment_size {
                return Err(format!(
                    "position {pos} is outside the {segment_size}-byte segment"
                ));
            }
            entries.push(OffsetEntry { rel, pos });
        }
        if entries.is_empty() && segment_size > 0 {
            return Err("empty index for a non-empty segment".to_string());
        }
        Ok(OffsetIndex { entries })
    }
}

/// Running-max-timestamp index: timestamps strictly increasing, relative offsets non-decreasing.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Appends `(ts, rel)` if `ts` is larger than the last entry's timestamp.
    pub fn maybe_push(&mut self, ts: i64, rel: u32) {
        if self.entries.last().is_none_or(|e| ts > e.ts) {
            self.entries.push(TimeEntry { ts, rel });
        }
    }

    /// A relative offset from which a forward scan finds the first batch whose max timestamp
    /// is >= `ts`: every batch up to and including the returned one has max timestamp < `ts`
    /// (or it is 0, the segment start).
    pub fn scan_start(&self, ts: i64) -> u32 {
        let k = self.entries.partition_point(|e| e.ts < ts);
        match k.checked_sub(1) {
            Some(i) => self.entries[i].rel,
            None => 0,
        }
    }

    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.ts.to_be_bytes());
            out.extend_from_slice(&e.rel.to_be_bytes());
        }
        out
    }

    /// Decodes and checks a time index file: whole entries, first entry at relative offset 0
    /// when the segment holds data, timestamps strictly increasing, offsets non-decreasing.
    pub fn decode(bytes: &[u8], segment_size: u64) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return Err(format!(
                "{} bytes is not a whole number of {TIME_ENTRY_LEN}-byte entries",
                bytes.len()
            ));
        }
        let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN);
        for c in bytes.chunks_exact(TIME_ENTRY_LEN) {
            let ts = i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            let rel = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
            match entries.last() {
                Some(prev) if ts <= prev.ts || rel < prev.rel => {
                    return Err(format!(
                        "entry ({ts}, {rel}) does not follow ({}, {})",
                        prev.ts, prev.rel
                    ))
                }
                None if rel != 0 => {
                    return Err(format!("first entry is at relative offset {rel}, not 0"))
                }
                _ => {}
            }
            entries.push(TimeEntry { ts, rel });
        }
        if entries.is_empty() && segment_size > 0 {
            return Err("empty time index for a non-empty segment".to_string());
        }
        Ok(TimeIndex { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_round_trip_and_lookup() {
        let mut idx = OffsetIndex::default();
        idx.push(0, 0);
        idx.push(10, 4096);
        idx.push(25, 9000);
        let back = OffsetIndex::decode(&idx.encode(), 10_000).unwrap();
        assert_eq!(back.entries(), idx.entries());
        assert_eq!(back.floor(0).unwrap().pos, 0);
        assert_eq!(back.floor(24).unwrap().pos, 4096);
        assert_eq!(back.floor(99).unwrap().pos, 9000);
        assert_eq!(back.ceiling(11).unwrap().rel, 25);
        assert!(back.ceiling(26).is_none());
    }

    #[test]
    fn offset_index_sanity_checks() {
        let mut idx = OffsetIndex::default();
        idx.push(0, 0);
        idx.push(10, 4096);
        let bytes = idx.encode();
        assert!(OffsetIndex::decode(&bytes, 4000).is_err()); // position past the end
        assert!(OffsetIndex::decode(&bytes[..7], 10_000).is_err()); // partial entry
        assert!(OffsetIndex::decode(&[], 10).is_err()); // empty for data
        assert!(OffsetIndex::decode(&[], 0).is_ok());
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(OffsetIndex::decode(&swapped, 10_000).is_err());
    }

    #[test]
    fn time_index_scan_start() {
        let mut t = TimeIndex::default();
        t.maybe_push(100, 0);
        t.maybe_push(100, 5); // not larger: ignored
        t.maybe_push(200, 7);
        t.maybe_push(300, 20);
        assert_eq!(t.entries().len(), 3);
        assert_eq!(t.scan_start(50), 0);
        assert_eq!(t.scan_start(100), 0);
        assert_eq!(t.scan_start(150), 0);
        assert_eq!(t.scan_start(201), 7);
        assert_eq!(t.scan_start(1000), 20);
        let back = TimeIndex::decode(&t.encode(), 1).unwrap();
        assert_eq!(back.entries(), t.entries());
        let mut bad = t.encode();
        bad[19] = 0; // second timestamp 200 -> 0, below the first
        assert!(TimeIndex::decode(&bad, 1).is_err());
    }
}
