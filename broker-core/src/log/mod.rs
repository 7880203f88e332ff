//! The durable segmented log of one partition.
//!
//! A partition directory holds segments `{base_offset:020}.log` (Kafka RecordBatch v2 batches
//! back to back, exactly the bytes of the wire), their sparse offset indexes (`.index`) and time
//! indexes (`.timeindex`), and a `log-start-offset` checkpoint. Only the last (active) segment
//! is appended to; it keeps the partition's one open file descriptor, shared through an `Arc`
//! with [`SyncTarget`] so the server can fsync outside the partition lock. Closed segments are
//! opened per read. On open, the active segment is always fully validated (header, length,
//! CRC-32C, contiguous offsets) and a torn or corrupt tail is copied to a quarantine file and
//! truncated; see `recovery.rs` and the format notes in ARCHITECTURE.md.

mod checkpoint;
mod files;
mod index;
mod recovery;
mod rewind;
mod segment;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchError, BatchHeader};

use files::io_err;
use segment::{last_offset_of, Scanner, Segment, HEADER_CHUNK};

/// Per-partition log settings (from the topic config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Roll the active segment once it is older than this (ms since its first append).
    pub segment_ms: i64,
    /// Delete closed segments whose newest record is older than this; -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest closed segments while the log stays at least this big; -1 = no limit.
    pub retention_bytes: i64,
    /// Add an offset index entry after at least this many bytes since the previous one.
    pub index_interval_bytes: u32,
}

const SEVEN_DAYS_MS: i64 = 7 * 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: SEVEN_DAYS_MS,
            retention_ms: SEVEN_DAYS_MS,
            retention_bytes: -1,
            index_interval_bytes: 4096,
        }
    }
}

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {offset} is out of range (log start {log_start}, log end {log_end})")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("batch base offset {got} does not continue the log, whose end offset is {expected}")]
    NonContiguous { expected: i64, got: i64 },
    #[error("corrupt log data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("unexpected file {} in the partition directory: {reason}", path.display())]
    BadFileName { path: PathBuf, reason: String },
    #[error("offsets overflow: base offset {base_offset} + lastOffsetDelta {last_offset_delta}")]
    OffsetOverflow {
        base_offset: i64,
        last_offset_delta: i32,
    },
}

/// Where an appended batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch's maxTimestamp field.
    pub max_timestamp: i64,
    /// Byte position of the batch in its segment.
    pub position: u64,
}

/// What [`PartitionLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after opening.
    pub segments: usize,
    /// Valid batches found in the active segment.
    pub recovered_batches: u64,
    /// Bytes cut from the end of the active segment (a torn or corrupt tail).
    pub truncated_bytes: u64,
    /// Where those bytes were kept.
    pub quarantine_file: Option<PathBuf>,
    /// Segments whose indexes were rebuilt from the data (missing or damaged index files, or
    /// the active segment after truncation).
    pub rebuilt_indexes: usize,
}

/// The active segment's file and the log end offset it covered when taken: after
/// `file.sync_data()` every offset below `end_offset` is durable.
#[derive(Debug, Clone)]
pub struct SyncTarget {
    pub file: Arc<File>,
    pub end_offset: i64,
}

/// Result of [`PartitionLog::verify`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub batches: u64,
    /// Sum of `lastOffsetDelta + 1` over all batches.
    pub records: u64,
    pub bytes: u64,
}

/// The log of one partition: an ordered list of segments, the last of which is active.
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset, contiguous, never empty; the last one is active.
    segments: Vec<Segment>,
    /// Read/write handle of the active segment.
    active_file: Arc<File>,
    log_start: i64,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .field("log_start_offset", &self.log_start)
            .field("log_end_offset", &self.log_end_offset())
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl PartitionLog {
    /// Opens (creating if missing) the partition directory and recovers it.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(PartitionLog, RecoveryReport), LogError> {
        let opened = recovery::open_dir(dir, &config)?;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments: opened.segments,
            active_file: Arc::new(opened.active_file),
            log_start: opened.log_start,
        };
        Ok((log, opened.report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start
    }

    /// The next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty (see the field's invariant).
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// A read handle on segment `i`: the shared active file, or a fresh fd for a closed one.
    fn reader(&self, i: usize) -> Result<Arc<File>, LogError> {
        if i + 1 == self.segments.len() {
            return Ok(Arc::clone(&self.active_file));
        }
        let path = &self.segments[i].path;
        File::open(path)
            .map(Arc::new)
            .map_err(io_err("opening segment", path))
    }

    fn out_of_range(&self, offset: i64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            log_start: self.log_start,
            log_end: self.log_end_offset(),
        }
    }

    /// Index of the segment whose range holds `offset` (the last one with base <= offset).
    fn segment_for(&self, offset: i64) -> Option<usize> {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .checked_sub(1)
    }

    /// Producer path: assigns `baseOffset = log_end_offset()`, stamps the leader epoch and
    /// appends. `batch` must already have passed `batch::validate_produced`.
    pub fn append(
        &mut self,
        batch: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let header = BatchHeader::parse(batch)?;
        check_exact_len(batch, &header)?;
        let base = self.log_end_offset();
        batch::stamp_offset_and_epoch(batch, base, leader_epoch);
        let header = BatchHeader {
            base_offset: base,
            partition_leader_epoch: leader_epoch,
            ..header
        };
        self.write_batch(batch, &header, now_ms)
    }

    /// Mirror path: the batch keeps its own base offset, which must be `log_end_offset()`.
    /// The CRC is checked again; the bytes are written unchanged.
    pub fn append_at_offset(&mut self, batch: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let header = batch::validate(batch)?;
        let expected = self.log_end_offset();
        if header.base_offset != expected {
            return Err(LogError::NonContiguous {
                expected,
                got: header.base_offset,
            });
        }
        self.write_batch(batch, &header, now_ms)
    }

    /// Mirror path: discards every record and restarts the log, empty, at `offset` (at or past
    /// the log end). Used when the source's log start moved past this log's end (retention on
    /// the source), so the records in between exist nowhere any more.
    ///
    /// Crash safety: the new log start is checkpointed first, then the old segments are deleted
    /// oldest first, then the new segment is created. Recovery from any point yields either a
    /// contiguous prefix of the old log (and the mirror repeats the reset) or the empty log at
    /// `offset` (recovery creates the missing segment at the checkpointed start).
    pub fn reset_to(&mut self, offset: i64) -> Result<(), LogError> {
        let end = self.log_end_offset();
        if offset < end {
            return Err(LogError::NonContiguous {
                expected: end,
                got: offset,
            });
        }
        if offset == end {
            self.delete_records_before(offset)?;
            return Ok(());
        }
        self.set_log_start(offset)?;
        let dir = self.dir.clone();
        // Closed segments first (oldest first), then the active one; the in-memory list keeps
        // the active segment until the new one exists, so it is never empty.
        let closed = self.segments.len() - 1;
        self.delete_oldest(closed)?;
        self.active().delete_files(&dir)?;
        files::sync_dir(&dir)?;
        self.replace_segments_with_empty_at(offset)?;
        tracing::info!(dir = %dir.display(), log_start_offset = offset, "log reset to follow the source's log start");
        Ok(())
    }

    fn write_batch(
        &mut self,
        bytes: &[u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let last_offset = last_offset_of(header).ok_or(LogError::OffsetOverflow {
            base_offset: header.base_offset,
            last_offset_delta: header.last_offset_delta,
        })?;
        let len = bytes.len() as u64;
        if self.should_roll(len, last_offset, now_ms) {
            self.roll()?;
        }
        let interval = self.config.index_interval_bytes;
        let pos = self.active().size;
        if !self.active().can_index(last_offset, pos) {
            // Only reachable for an empty segment given the roll rules; keep the index sound.
            return Err(LogError::OffsetOverflow {
                base_offset: header.base_offset,
                last_offset_delta: header.last_offset_delta,
            });
        }
        if let Err(source) = self.active_file.write_all_at(bytes, pos) {
            // Drop whatever part of the batch reached the file; later writes go to `pos` anyway.
            if let Err(e) = self.active_file.set_len(pos) {
                tracing::warn!(
                    segment = %self.active().path.display(),
                    error = %e,
                    "could not cut a partially written batch"
                );
            }
            return Err(LogError::Io {
                context: format!("appending to {}", self.active().path.display()),
                source,
            });
        }
        let segment = self.active_mut();
        if segment.rolling_ms.is_none() {
            segment.rolling_ms = Some(now_ms);
        }
        segment.on_batch(header, last_offset, pos, len, interval);
        Ok(AppendInfo {
            base_offset: header.base_offset,
            last_offset,
            max_timestamp: header.max_timestamp,
            position: pos,
        })
    }

    fn active_too_old(&self, now_ms: i64) -> bool {
        let active = self.active();
        !active.is_empty()
            && active
                .rolling_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > self.config.segment_ms)
    }

    /// Whether a batch of `len` bytes ending at `last_offset` must go to a new segment.
    fn should_roll(&self, len: u64, last_offset: i64, now_ms: i64) -> bool {
        let active = self.active();
        if active.is_empty() {
            return false;
        }
        // Index positions are 32-bit: never let a batch start beyond u32::MAX.
        let max_bytes = self.config.segment_bytes.min(u64::from(u32::MAX));
        active.size.saturating_add(len) > max_bytes
            || active.rel(last_offset).is_none()
            || self.active_too_old(now_ms)
    }

    /// Closes the active segment and starts a new one at the log end offset. The old segment
    /// is fsynced and its indexes written before the new file exists; the directory is
    /// fsynced after creating it.
    fn roll(&mut self) -> Result<(), LogError> {
        let base = self.log_end_offset();
        let old_path = self.active().path.clone();
        self.active_file
            .sync_data()
            .map_err(io_err("fsyncing", &old_path))?;
        let dir = self.dir.clone();
        let old = self.active_mut();
        old.seal_time_index();
        old.write_indexes(&dir)?;
        let file = recovery::create_segment_file(&dir, base)?;
        if let Err(e) = files::sync_dir(&dir) {
            // Do not leave an empty segment behind that later appends to the old one would
            // contradict; the next roll creates it again.
            drop(file);
            if let Err(cleanup) = files::remove_if_exists(&files::log_path(&dir, base)) {
                tracing::warn!(error = %cleanup, "could not remove a half-created segment");
            }
            return Err(e);
        }
        let old = self.active_mut();
        old.shrink_indexes();
        self.segments.push(Segment::new_empty(&dir, base));
        self.active_file = Arc::new(file);
        tracing::debug!(dir = %dir.display(), base_offset = base, "rolled to a new segment");
        Ok(())
    }

    /// Whole batches from the one holding `offset`, below `max_offset`, within `max_bytes`
    /// except that the first batch is always returned whole. CRC-checked.
    pub fn read(
        &self,
        offset: i64,
        max_offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<u8>, LogError> {
        let end = self.log_end_offset();
        if offset < self.log_start || offset > end {
            return Err(self.out_of_range(offset));
        }
        if offset == end || offset >= max_offset {
            return Ok(Vec::new());
        }
        let Some(first) = self.segment_for(offset) else {
            return Err(self.out_of_range(offset));
        };
        for i in first..self.segments.len() {
            let segment = &self.segments[i];
            if segment.next_offset <= offset {
                continue;
            }
            let file = self.reader(i)?;
            let (pos, _) = segment.locate(&file, offset)?;
            return segment.read_range(&file, pos, max_offset, max_bytes);
        }
        Ok(Vec::new())
    }

    /// The first batch, from the log start, whose max timestamp is >= `ts`.
    pub fn find_batch_by_timestamp(&self, ts: i64) -> Result<Option<Vec<u8>>, LogError> {
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.is_empty()
                || segment.max_timestamp < ts
                || segment.next_offset <= self.log_start
            {
                continue;
            }
            let file = self.reader(i)?;
            let hint = segment.time_index.scan_start(ts);
            let mut pos = segment
                .offset_index
                .floor(hint)
                .map_or(0, |e| u64::from(e.pos));
            if segment.base_offset < self.log_start {
                pos = pos.max(segment.locate(&file, self.log_start)?.0);
            }
            let mut scan = Scanner::new(&file, pos, segment.size, HEADER_CHUNK);
            while let Some((at, h)) = scan
                .next_header()
                .map_err(|e| e.into_log_error(&segment.path))?
            {
                if h.max_timestamp >= ts {
                    return segment.read_batch(&file, at, &h).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// The batch with the largest max timestamp (the first one on ties).
    pub fn batch_with_max_timestamp(&self) -> Result<Option<Vec<u8>>, LogError> {
        let mut best: Option<(i64, usize, i64)> = None;
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.is_empty() || segment.next_offset <= self.log_start {
                continue;
            }
            let (ts, offset) = if segment.offset_of_max_timestamp < self.log_start {
                // DeleteRecords cut into this segment: scan what is still visible.
                let file = self.reader(i)?;
                let (pos, _) = segment.locate(&file, self.log_start)?;
                let mut scan = Scanner::new(&file, pos, segment.size, HEADER_CHUNK);
                let mut found: Option<(i64, i64)> = None;
                while let Some((_, h)) = scan
                    .next_header()
                    .map_err(|e| e.into_log_error(&segment.path))?
                {
                    if found.is_none_or(|(t, _)| h.max_timestamp > t) {
                        found = Some((h.max_timestamp, h.base_offset));
                    }
                }
                match found {
                    Some(f) => f,
                    None => continue,
                }
            } else {
                (segment.max_timestamp, segment.offset_of_max_timestamp)
            };
            if best.is_none_or(|(t, _, _)| ts > t) {
                best = Some((ts, i, offset));
            }
        }
        let Some((_, i, offset)) = best else {
            return Ok(None);
        };
        let segment = &self.segments[i];
        let file = self.reader(i)?;
        let (pos, h) = segment.locate(&file, offset)?;
        segment.read_batch(&file, pos, &h).map(Some)
    }

    /// Persists a new log start offset, then updates it in memory.
    fn set_log_start(&mut self, offset: i64) -> Result<(), LogError> {
        checkpoint::write(&self.dir, offset)?;
        self.log_start = offset;
        Ok(())
    }

    /// Deletes the files of the `n` oldest segments (never the active one).
    /// The last step of restarting a log whose segment files are already deleted (and the
    /// deletions synced): a new, durable, empty segment at `offset` becomes the only one.
    pub(super) fn replace_segments_with_empty_at(&mut self, offset: i64) -> Result<(), LogError> {
        let file = recovery::create_segment_file(&self.dir, offset)?;
        files::sync_dir(&self.dir)?;
        self.segments.clear();
        self.segments.push(Segment::new_empty(&self.dir, offset));
        self.active_file = Arc::new(file);
        Ok(())
    }

    fn delete_oldest(&mut self, n: usize) -> Result<(), LogError> {
        let n = n.min(self.segments.len() - 1);
        for _ in 0..n {
            self.segments[0].delete_files(&self.dir)?;
            let gone = self.segments.remove(0);
            tracing::debug!(segment = %gone.path.display(), "deleted segment");
        }
        if n > 0 {
            files::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// DeleteRecords: moves the log start to `offset` (persisted) and deletes the closed
    /// segments entirely below it. Returns the log start offset.
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        if offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        if offset <= self.log_start {
            return Ok(self.log_start);
        }
        self.set_log_start(offset)?;
        let last = self.segments.len() - 1;
        let n = self.segments[..last]
            .iter()
            .take_while(|s| s.next_offset <= offset)
            .count();
        self.delete_oldest(n)?;
        Ok(self.log_start)
    }

    /// Time/size retention over closed segments, plus time-based rolling of the active one.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        if self.active_too_old(now_ms) {
            self.roll()?;
        }
        let mut total = self.size_bytes();
        let mut n = 0;
        let cutoff = now_ms.saturating_sub(self.config.retention_ms);
        while n + 1 < self.segments.len() {
            let segment = &self.segments[n];
            let by_time = self.config.retention_ms >= 0 && segment.retention_timestamp()? < cutoff;
            let by_size = self.config.retention_bytes >= 0
                && total - segment.size >= self.config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            total -= segment.size;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let new_start = self.segments[n].base_offset;
        if new_start > self.log_start {
            self.set_log_start(new_start)?;
        }
        self.delete_oldest(n)?;
        tracing::info!(
            dir = %self.dir.display(),
            deleted_segments = n,
            log_start_offset = self.log_start,
            "retention deleted old segments"
        );
        Ok(n)
    }

    /// Handle for fsyncing the active segment outside the partition lock.
    pub fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            file: Arc::clone(&self.active_file),
            end_offset: self.log_end_offset(),
        }
    }

    /// Clean shutdown: writes the active segment's indexes, fsyncs it and the directory.
    /// The log stays usable afterwards.
    pub fn close(&mut self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        let active = self.active_mut();
        active.seal_time_index();
        active.write_indexes(&dir)?;
        let path = self.active().path.clone();
        self.active_file
            .sync_data()
            .map_err(io_err("fsyncing", &path))?;
        files::sync_dir(&dir)
    }

    /// Checks every batch of every segment (header, CRC, contiguity, file sizes) and that
    /// every index entry points at the start of the batch it names.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let mut report = VerifyReport::default();
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 && segment.base_offset != self.segments[i - 1].next_offset {
                return Err(LogError::Corrupt {
                    path: segment.path.clone(),
                    position: 0,
                    reason: format!(
                        "segment base {} but the previous segment ends before {}",
                        segment.base_offset,
                        self.segments[i - 1].next_offset
                    ),
                });
            }
            let file = self.reader(i)?;
            let counts = segment.verify(&file)?;
            report.segments += 1;
            report.batches += counts.batches;
            report.records += counts.records;
            report.bytes += counts.bytes;
        }
        Ok(report)
    }

    /// Calls `f` with the header of every batch whose last offset is >= `from_offset`
    /// (and >= the log start), in offset order.
    pub fn scan_headers(
        &self,
        from_offset: i64,
        f: &mut dyn FnMut(&BatchHeader),
    ) -> Result<(), LogError> {
        let from = from_offset.max(self.log_start);
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.is_empty() || segment.next_offset <= from {
                continue;
            }
            let file = self.reader(i)?;
            let pos = if segment.base_offset < from {
                segment.locate(&file, from)?.0
            } else {
                0
            };
            let mut scan = Scanner::new(&file, pos, segment.size, HEADER_CHUNK);
            while let Some((_, h)) = scan
                .next_header()
                .map_err(|e| e.into_log_error(&segment.path))?
            {
                f(&h);
            }
        }
        Ok(())
    }

    /// Removes the whole partition directory (topic deletion).
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(io_err("removing partition directory", &dir))?;
        if let Some(parent) = dir.parent() {
            // Best effort: the parent may be gone or not ours to sync.
            if let Err(e) = files::sync_dir(parent) {
                tracing::debug!(error = %e, "could not fsync the parent directory");
            }
        }
        Ok(())
    }
}

/// The producer path's batch must be exactly one batch.
fn check_exact_len(bytes: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let total = header.total_len();
    match bytes.len().cmp(&total) {
        std::cmp::Ordering::Less => Err(BatchError::Truncated {
            claimed: total,
            available: bytes.len(),
        }),
        std::cmp::Ordering::Greater => Err(BatchError::TrailingBytes(bytes.len() - total)),
        std::cmp::Ordering::Equal => Ok(()),
    }
}
