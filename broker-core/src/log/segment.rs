//! One segment of a partition log: its in-memory metadata (size, offsets, running max
//! timestamp, sparse indexes) and the positional-read primitives used on its data file
//! (a buffered batch scanner, locating the batch holding an offset, reading a byte range of
//! whole batches with CRC checks).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchHeader, HEADER_LEN};

use super::files::{self, index_path, log_path, time_index_path};
use super::index::{OffsetIndex, TimeIndex};
use super::{LogError, VerifyReport};

/// Read size when walking batch headers (locating an offset, scanning timestamps).
pub(crate) const HEADER_CHUNK: usize = 8 * 1024;
/// Read size when walking whole batches (recovery, verification).
pub(crate) const FULL_CHUNK: usize = 1024 * 1024;

/// `base_offset + last_offset_delta` without overflowing on hostile headers.
pub(crate) fn last_offset_of(h: &BatchHeader) -> Option<i64> {
    h.base_offset.checked_add(i64::from(h.last_offset_delta))
}

/// Why a scan of a byte range of a segment stopped early.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    /// Bytes at `position` are not a complete, well-formed batch header/batch.
    Bad {
        position: u64,
        reason: String,
    },
}

impl ScanError {
    pub fn into_log_error(self, path: &Path) -> LogError {
        match self {
            ScanError::Io(source) => LogError::Io {
                context: format!("reading {}", path.display()),
                source,
            },
            ScanError::Bad { position, reason } => LogError::Corrupt {
                path: path.to_path_buf(),
                position,
                reason,
            },
        }
    }
}

/// Walks the batches of `[pos, end)` of a file with buffered positional reads.
pub(crate) struct Scanner<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    chunk: usize,
}

impl<'f> Scanner<'f> {
    pub fn new(file: &'f File, pos: u64, end: u64, chunk: usize) -> Self {
        Scanner {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_start: 0,
            chunk,
        }
    }

    /// Makes `[pos, pos + n)` (which must lie before `end`) available in the buffer.
    fn fill(&mut self, pos: u64, n: usize) -> io::Result<()> {
        let have_end = self.buf_start + self.buf.len() as u64;
        if pos >= self.buf_start && pos + n as u64 <= have_end {
            return Ok(());
        }
        let avail = self.end.saturating_sub(pos);
        if (n as u64) > avail {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{n} bytes requested at {pos} but the scanned range ends at {}",
                    self.end
                ),
            ));
        }
        let len = (n.max(self.chunk) as u64).min(avail) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.buf_start = pos;
        if let Err(e) = self.file.read_exact_at(&mut self.buf, pos) {
            self.buf.clear();
            return Err(e);
        }
        Ok(())
    }

    fn slice(&self, pos: u64, n: usize) -> &[u8] {
        let off = (pos - self.buf_start) as usize;
        &self.buf[off..off + n]
    }

    /// Parses the header at the current position without advancing.
    fn peek(&mut self) -> Result<Option<(u64, BatchHeader, usize)>, ScanError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let pos = self.pos;
        let left = self.end - pos;
        if left < HEADER_LEN as u64 {
            return Err(ScanError::Bad {
                position: pos,
                reason: format!("incomplete batch header: only {left} bytes left"),
            });
        }
        self.fill(pos, HEADER_LEN).map_err(ScanError::Io)?;
        let header =
            BatchHeader::parse(self.slice(pos, HEADER_LEN)).map_err(|e| ScanError::Bad {
                position: pos,
                reason: e.to_string(),
            })?;
        let total = header.total_len();
        if total as u64 > left {
            return Err(ScanError::Bad {
                position: pos,
                reason: format!("batch of {total} bytes but only {left} bytes left"),
            });
        }
        Ok(Some((pos, header, total)))
    }

    /// Next batch header and its position; reads only the header.
    pub fn next_header(&mut self) -> Result<Option<(u64, BatchHeader)>, ScanError> {
        let Some((pos, header, total)) = self.peek()? else {
            return Ok(None);
        };
        self.pos = pos + total as u64;
        Ok(Some((pos, header)))
    }

    /// Next whole batch (unvalidated bytes) and its position.
    pub fn next_batch(&mut self) -> Result<Option<(u64, &[u8])>, ScanError> {
        let Some((pos, _, total)) = self.peek()? else {
            return Ok(None);
        };
        self.fill(pos, total).map_err(ScanError::Io)?;
        self.pos = pos + total as u64;
        Ok(Some((pos, self.slice(pos, total))))
    }
}

/// One segment's metadata. The data file handle lives elsewhere (the active segment's in
/// [`super::PartitionLog`], closed segments are opened per read).
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    /// Committed bytes; everything in `[0, size)` is whole, valid batches.
    pub size: u64,
    /// Last offset + 1 (== base_offset when empty).
    pub next_offset: i64,
    /// Largest batch max timestamp (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Base offset of the first batch holding `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    /// When the segment was created / first appended to (for `segment_ms`).
    pub rolling_ms: Option<i64>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_index: u64,
}

impl Segment {
    pub fn new_empty(dir: &Path, base_offset: i64) -> Self {
        Segment {
            base_offset,
            path: log_path(dir, base_offset),
            size: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            offset_of_max_timestamp: base_offset,
            rolling_ms: None,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Offset relative to the base, if it fits an index entry.
    pub fn rel(&self, offset: i64) -> Option<u32> {
        offset
            .checked_sub(self.base_offset)
            .and_then(|r| u32::try_from(r).ok())
    }

    /// Whether a batch `[base, last]` starting at byte `pos` can be described by this
    /// segment's 32-bit index entries.
    pub fn can_index(&self, last_offset: i64, pos: u64) -> bool {
        self.rel(last_offset).is_some() && u32::try_from(pos).is_ok()
    }

    /// Records a batch of `len` bytes written at `pos` (which must be the current size and
    /// pass [`Self::can_index`]): indexes, running max timestamp, size, next offset.
    pub fn on_batch(
        &mut self,
        h: &BatchHeader,
        last_offset: i64,
        pos: u64,
        len: u64,
        interval: u32,
    ) {
        let rel = self.rel(h.base_offset).unwrap_or(u32::MAX);
        if h.max_timestamp > self.max_timestamp || self.is_empty() {
            self.max_timestamp = h.max_timestamp;
            self.offset_of_max_timestamp = h.base_offset;
        }
        if self.offset_index.last().is_none() || self.bytes_since_index >= u64::from(interval) {
            self.offset_index
                .push(rel, u32::try_from(pos).unwrap_or(u32::MAX));
            self.bytes_since_index = 0;
            let max_rel = self.rel(self.offset_of_max_timestamp).unwrap_or(rel);
            self.time_index.maybe_push(self.max_timestamp, max_rel);
        }
        self.bytes_since_index += len;
        self.size = pos + len;
        self.next_offset = last_offset + 1;
    }

    /// Adds the final (max timestamp, offset) entry to the time index so that the persisted
    /// index of a closed segment ends with the segment's max timestamp.
    pub fn seal_time_index(&mut self) {
        if !self.is_empty() {
            let rel = self.rel(self.offset_of_max_timestamp).unwrap_or(0);
            self.time_index.maybe_push(self.max_timestamp, rel);
        }
    }

    /// Writes both index files (temp + fsync + rename); the caller fsyncs the directory.
    pub fn write_indexes(&self, dir: &Path) -> Result<(), LogError> {
        files::replace_file(
            &index_path(dir, self.base_offset),
            &self.offset_index.encode(),
        )?;
        files::replace_file(
            &time_index_path(dir, self.base_offset),
            &self.time_index.encode(),
        )
    }

    /// Removes the segment's files: indexes first, data last (a crash in between leaves a
    /// data file whose indexes are simply rebuilt).
    pub fn delete_files(&self, dir: &Path) -> Result<(), LogError> {
        files::remove_if_exists(&index_path(dir, self.base_offset))?;
        files::remove_if_exists(&time_index_path(dir, self.base_offset))?;
        files::remove_if_exists(&self.path)
    }

    /// Timestamp used by time-based retention: the max record timestamp, or the file's
    /// modification time when the batches carry no timestamps.
    pub fn retention_timestamp(&self) -> Result<i64, LogError> {
        if self.max_timestamp >= 0 {
            return Ok(self.max_timestamp);
        }
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(files::io_err("reading modification time of", &self.path))?;
        Ok(files::unix_ms(modified))
    }

    pub fn shrink_indexes(&mut self) {
        self.offset_index.shrink();
        self.time_index.shrink();
    }

    fn corrupt(&self, position: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position,
            reason,
        }
    }

    /// Position of the index entry at or before `offset`.
    fn index_floor_pos(&self, offset: i64) -> u64 {
        let rel = offset
            .saturating_sub(self.base_offset)
            .clamp(0, i64::from(u32::MAX)) as u32;
        self.offset_index.floor(rel).map_or(0, |e| u64::from(e.pos))
    }

    /// Finds the first batch whose last offset is >= `offset` (the batch containing it),
    /// starting from the offset index. Errors if the segment has no such batch.
    pub fn locate(&self, file: &File, offset: i64) -> Result<(u64, BatchHeader), LogError> {
        let start = self.index_floor_pos(offset);
        let mut scan = Scanner::new(file, start, self.size, HEADER_CHUNK);
        while let Some((pos, h)) = scan
            .next_header()
            .map_err(|e| e.into_log_error(&self.path))?
        {
            let last = last_offset_of(&h)
                .ok_or_else(|| self.corrupt(pos, "last offset overflows".to_string()))?;
            if last >= offset {
                return Ok((pos, h));
            }
        }
        Err(self.corrupt(
            self.size,
            format!(
                "offset {offset} not found (segment covers [{}, {}))",
                self.base_offset, self.next_offset
            ),
        ))
    }

    /// Reads and CRC-checks the whole batch whose header `h` was found at `pos`.
    pub fn read_batch(&self, file: &File, pos: u64, h: &BatchHeader) -> Result<Vec<u8>, LogError> {
        let bytes = files::read_exact_at(file, pos, h.total_len())
            .map_err(files::io_err("reading", &self.path))?;
        batch::validate(&bytes).map_err(|e| self.corrupt(pos, e.to_string()))?;
        Ok(bytes)
    }

    /// Whole batches starting at `start` (a batch boundary): the first one always, then
    /// following ones while their base offset is < `max_offset` and the total stays within
    /// `max_bytes`. Every returned batch is CRC-checked.
    pub fn read_range(
        &self,
        file: &File,
        start: u64,
        max_offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<u8>, LogError> {
        // Batches at or beyond max_offset start no earlier than the index entry at or after it.
        let mut limit = self.size;
        if max_offset < self.next_offset {
            if let Some(e) = self
                .rel(max_offset)
                .and_then(|r| self.offset_index.ceiling(r))
            {
                if u64::from(e.pos) > start {
                    limit = u64::from(e.pos);
                }
            }
        }
        let avail = limit.saturating_sub(start);
        let want = (max_bytes as u64).max(HEADER_LEN as u64).min(avail) as usize;
        let mut buf = files::read_exact_at(file, start, want)
            .map_err(files::io_err("reading", &self.path))?;
        if buf.len() < HEADER_LEN {
            return Err(self.corrupt(start, format!("only {} bytes left for a batch", buf.len())));
        }
        let first = BatchHeader::parse(&buf).map_err(|e| self.corrupt(start, e.to_string()))?;
        let first_len = first.total_len();
        if first_len > buf.len() {
            if start + first_len as u64 > self.size {
                return Err(self.corrupt(
                    start,
                    format!("batch of {first_len} bytes runs past the end of the segment"),
                ));
            }
            let have = buf.len();
            buf.resize(first_len, 0);
            file.read_exact_at(&mut buf[have..], start + have as u64)
                .map_err(files::io_err("reading", &self.path))?;
        }
        let mut end = 0usize;
        while buf.len() - end >= HEADER_LEN {
            let at = start + end as u64;
            let h = BatchHeader::parse(&buf[end..]).map_err(|e| self.corrupt(at, e.to_string()))?;
            if end > 0 && h.base_offset >= max_offset {
                break;
            }
            let total = h.total_len();
            if end + total > buf.len() || (end > 0 && end + total > max_bytes) {
                break;
            }
            batch::validate(&buf[end..end + total]).map_err(|e| self.corrupt(at, e.to_string()))?;
            end += total;
        }
        buf.truncate(end);
        Ok(buf)
    }

    /// Full check of this segment's bytes against its metadata: every batch valid (header,
    /// length, CRC-32C), offsets contiguous from the base, file size, end offset and max
    /// timestamp as recorded, and every index entry at the start of the batch it names.
    pub fn verify(&self, file: &File) -> Result<VerifyReport, LogError> {
        let file_len = file
            .metadata()
            .map_err(files::io_err("inspecting", &self.path))?
            .len();
        if file_len != self.size {
            return Err(self.corrupt(
                self.size.min(file_len),
                format!("file holds {file_len} bytes, the log {}", self.size),
            ));
        }
        let mut counts = VerifyReport {
            segments: 1,
            ..VerifyReport::default()
        };
        let mut offsets = self.offset_index.entries().iter().peekable();
        let mut times = self.time_index.entries().iter().peekable();
        let mut next = self.base_offset;
        let mut running_max: Option<i64> = None;
        let mut scan = Scanner::new(file, 0, self.size, FULL_CHUNK);
        while let Some((pos, bytes)) = scan
            .next_batch()
            .map_err(|e| e.into_log_error(&self.path))?
        {
            let h = batch::validate(bytes).map_err(|e| self.corrupt(pos, e.to_string()))?;
            if h.base_offset != next {
                let reason = format!("batch base offset {} but expected {next}", h.base_offset);
                return Err(self.corrupt(pos, reason));
            }
            let last = last_offset_of(&h)
                .ok_or_else(|| self.corrupt(pos, "last offset overflows".to_string()))?;
            let rel = self.rel(h.base_offset);
            if let Some(e) = offsets.next_if(|e| u64::from(e.pos) <= pos) {
                if u64::from(e.pos) != pos || Some(e.rel) != rel {
                    let reason = format!(
                        "offset index entry ({}, {}) does not match the batch at offset {}",
                        e.rel, e.pos, h.base_offset
                    );
                    return Err(self.corrupt(u64::from(e.pos), reason));
                }
            }
            if let Some(t) = times.next_if(|t| rel.is_some_and(|r| t.rel <= r)) {
                if Some(t.rel) != rel || t.ts != h.max_timestamp {
                    let reason = format!(
                        "time index entry ({}, {}) does not match the batch at offset {} \
                         (max timestamp {})",
                        t.ts, t.rel, h.base_offset, h.max_timestamp
                    );
                    return Err(self.corrupt(pos, reason));
                }
            }
            if running_max.is_none_or(|m| h.max_timestamp > m) {
                running_max = Some(h.max_timestamp);
            }
            next = last + 1;
            counts.batches += 1;
            counts.records += u64::from(h.last_offset_delta.unsigned_abs()) + 1;
            counts.bytes += bytes.len() as u64;
        }
        if offsets.next().is_some() || times.next().is_some() {
            let reason = "index entries point past the last batch".to_string();
            return Err(self.corrupt(self.size, reason));
        }
        if next != self.next_offset || running_max.is_some_and(|m| m != self.max_timestamp) {
            let reason = format!(
                "segment ends before offset {next} with max timestamp {running_max:?}, but the \
                 log recorded {} and {}",
                self.next_offset, self.max_timestamp
            );
            return Err(self.corrupt(self.size, reason));
        }
        Ok(counts)
    }
}
