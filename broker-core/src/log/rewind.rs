//! Mirror-only operations that take records back out of a log, for a mirror whose source's
//! history changed under it (the operator chose to re-seed or truncate): [`PartitionLog::header_at`]
//! (the identity of the batch holding an offset), [`PartitionLog::truncate_to`] (keep the
//! prefix below a batch boundary) and [`PartitionLog::restart_at`] (drop everything, restart
//! empty at any offset). Producers never reach these: ordinary logs only ever grow at the end.
//!
//! Crash safety: every step leaves a log that recovery opens as a contiguous prefix of the old
//! one or as the final state; callers keep the mirror's divergence persisted until the
//! operation returned, so an interrupted one is simply repeated.

use crate::batch::BatchHeader;

use super::files::{self, io_err};
use super::{LogError, PartitionLog};

impl PartitionLog {
    /// The header of the batch holding `offset` (which must be in `[log start, log end)`).
    pub fn header_at(&self, offset: i64) -> Result<BatchHeader, LogError> {
        if offset < self.log_start || offset >= self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        let first = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        for i in first..self.segments.len() {
            let segment = &self.segments[i];
            if segment.next_offset <= offset {
                continue;
            }
            let file = self.reader(i)?;
            return Ok(segment.locate(&file, offset)?.1);
        }
        Err(self.out_of_range(offset))
    }

    /// Cuts the log to `[log start, offset)`: `offset` must be the base offset of a batch (or
    /// the log end, a no-op) and not below the log start. Segments wholly at or above `offset`
    /// are deleted newest first; the segment holding it is cut at that batch and becomes the
    /// active segment, with its indexes rebuilt by reopening the log.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        let end = self.log_end_offset();
        if offset == end {
            return Ok(());
        }
        if offset < self.log_start || offset > end {
            return Err(self.out_of_range(offset));
        }
        let keep = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        let (pos, header) = {
            let file = self.reader(keep)?;
            self.segments[keep].locate(&file, offset)?
        };
        if header.base_offset != offset {
            return Err(LogError::NonContiguous {
                expected: header.base_offset,
                got: offset,
            });
        }
        let dir = self.dir.clone();
        // Newest first: a crash in between leaves a contiguous prefix.
        while self.segments.len() > keep + 1 {
            if let Some(last) = self.segments.last() {
                last.delete_files(&dir)?;
            }
            self.segments.pop();
        }
        files::sync_dir(&dir)?;
        let kept = &self.segments[keep];
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&kept.path)
            .map_err(io_err("opening", &kept.path))?;
        file.set_len(pos)
            .map_err(io_err("truncating", &kept.path))?;
        file.sync_all().map_err(io_err("fsyncing", &kept.path))?;
        // Its indexes describe the cut batches: drop them; reopening rebuilds them.
        files::remove_if_exists(&files::index_path(&dir, kept.base_offset))?;
        files::remove_if_exists(&files::time_index_path(&dir, kept.base_offset))?;
        files::sync_dir(&dir)?;
        let (reopened, _) = PartitionLog::open(&dir, self.config.clone())?;
        *self = reopened;
        tracing::info!(dir = %dir.display(), log_end_offset = offset, "mirror log truncated");
        Ok(())
    }

    /// Discards every record and restarts the log, empty, at `offset` (any offset >= 0, below
    /// the log end too: a mirror re-seeded from a new source history).
    pub fn restart_at(&mut self, offset: i64) -> Result<(), LogError> {
        if offset >= self.log_end_offset() {
            return self.reset_to(offset);
        }
        if offset < 0 {
            return Err(self.out_of_range(offset));
        }
        let dir = self.dir.clone();
        // Delete every segment first (a crash here recovers an empty log at the old start),
        // then create the new one (a crash here recovers the empty log at `offset`, the start
        // checkpoint being clamped to it), then checkpoint the new start.
        for segment in &self.segments {
            segment.delete_files(&dir)?;
        }
        files::sync_dir(&dir)?;
        self.replace_segments_with_empty_at(offset)?;
        self.set_log_start(offset)?;
        tracing::info!(dir = %dir.display(), log_start_offset = offset, "mirror log restarted");
        Ok(())
    }
}
