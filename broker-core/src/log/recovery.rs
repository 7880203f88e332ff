//! Opening a partition directory: listing and validating file names, removing leftover temp
//! files, loading (or rebuilding) the indexes of closed segments, and recovering the active
//! segment by validating every batch and quarantining + truncating a torn or corrupt tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch;

use super::checkpoint;
use super::files::{
    self, index_path, io_err, log_path, parse_stem, time_index_path, CORRUPT_MARKER, INDEX_SUFFIX,
    LOG_START_FILE, LOG_SUFFIX, TIME_INDEX_SUFFIX, TMP_SUFFIX,
};
use super::index::{OffsetIndex, TimeIndex};
use super::segment::{last_offset_of, ScanError, Scanner, Segment, FULL_CHUNK, HEADER_CHUNK};
use super::{LogConfig, LogError, RecoveryReport};

/// The state of a freshly opened partition directory.
pub(crate) struct Opened {
    pub segments: Vec<Segment>,
    pub active_file: File,
    pub log_start: i64,
    pub report: RecoveryReport,
}

/// What the directory holds, by kind.
#[derive(Default)]
struct Listing {
    segment_bases: Vec<i64>,
    index_files: Vec<(i64, PathBuf)>,
    temp_files: Vec<PathBuf>,
}

/// The base offset of a segment-family file name (`.log`, `.index`, `.timeindex`).
fn family_base(name: &str) -> Option<i64> {
    [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .and_then(|stem| parse_stem(stem).ok())
}

fn list_dir(dir: &Path) -> Result<Listing, LogError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(io_err("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::debug!(path = %path.display(), "ignoring non-UTF-8 file name in partition directory");
            continue;
        };
        if name.contains(CORRUPT_MARKER) {
            continue; // quarantined bytes, kept for operators
        }
        if let Some(stripped) = name.strip_suffix(TMP_SUFFIX) {
            if stripped == LOG_START_FILE || family_base(stripped).is_some() {
                listing.temp_files.push(path);
            }
            continue;
        }
        let bad_name = |reason: String| LogError::BadFileName {
            path: path.clone(),
            reason,
        };
        if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
            let base = parse_stem(stem).map_err(|r| bad_name(format!("segment file name: {r}")))?;
            let meta = fs::metadata(&path).map_err(io_err("inspecting", &path))?;
            if !meta.is_file() {
                return Err(bad_name("segment is not a regular file".to_string()));
            }
            listing.segment_bases.push(base);
        } else if let Some(stem) = name
            .strip_suffix(INDEX_SUFFIX)
            .or_else(|| name.strip_suffix(TIME_INDEX_SUFFIX))
        {
            let base = parse_stem(stem).map_err(|r| bad_name(format!("index file name: {r}")))?;
            listing.index_files.push((base, path));
        } else if name != LOG_START_FILE {
            tracing::debug!(path = %path.display(), "ignoring unrelated file in partition directory");
        }
    }
    listing.segment_bases.sort_unstable();
    Ok(listing)
}

/// Creates (or reuses, if a crash left it empty) the data file of a new segment. The caller
/// fsyncs the directory.
pub(crate) fn create_segment_file(dir: &Path, base: i64) -> Result<File, LogError> {
    let path = log_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("creating segment", &path))?;
    let len = file.metadata().map_err(io_err("inspecting", &path))?.len();
    if len != 0 {
        return Err(LogError::Corrupt {
            path,
            position: 0,
            reason: format!("new segment file unexpectedly already holds {len} bytes"),
        });
    }
    Ok(file)
}

pub(crate) fn open_dir(dir: &Path, config: &LogConfig) -> Result<Opened, LogError> {
    fs::create_dir_all(dir).map_err(io_err("creating partition directory", dir))?;
    let listing = list_dir(dir)?;
    let mut dir_changed = false;
    for tmp in &listing.temp_files {
        tracing::debug!(path = %tmp.display(), "removing leftover temporary file");
        files::remove_if_exists(tmp)?;
        dir_changed = true;
    }
    for (base, path) in &listing.index_files {
        if listing.segment_bases.binary_search(base).is_err() {
            tracing::debug!(path = %path.display(), "removing index file without a segment");
            files::remove_if_exists(path)?;
            dir_changed = true;
        }
    }
    let checkpointed = checkpoint::read(dir)?;
    let mut report = RecoveryReport::default();
    let mut segments = Vec::with_capacity(listing.segment_bases.len().max(1));

    let active_file = match listing.segment_bases.split_last() {
        None => {
            let base = checkpointed.unwrap_or(0);
            let file = create_segment_file(dir, base)?;
            dir_changed = true;
            segments.push(Segment::new_empty(dir, base));
            file
        }
        Some((&last, closed)) => {
            for &base in closed {
                let (segment, rebuilt) = load_closed(dir, base, config)?;
                if rebuilt {
                    report.rebuilt_indexes += 1;
                    dir_changed = true;
                }
                if segment.is_empty() {
                    tracing::warn!(path = %segment.path.display(), "removing empty non-active segment");
                    segment.delete_files(dir)?;
                    dir_changed = true;
                } else {
                    segments.push(segment);
                }
            }
            let (segment, file) = recover_active(dir, last, config, &mut report)?;
            segments.push(segment);
            file
        }
    };

    for pair in segments.windows(2) {
        if pair[0].next_offset != pair[1].base_offset {
            return Err(LogError::Corrupt {
                path: pair[1].path.clone(),
                position: 0,
                reason: format!(
                    "segment starts at offset {} but the previous segment ends before offset {}",
                    pair[1].base_offset, pair[0].next_offset
                ),
            });
        }
    }

    let first_base = segments[0].base_offset;
    let log_end = segments[segments.len() - 1].next_offset;
    let mut log_start = checkpointed.unwrap_or(first_base).max(first_base);
    if log_start > log_end {
        tracing::warn!(
            dir = %dir.display(),
            checkpointed = log_start,
            log_end,
            "log start offset checkpoint is beyond the recovered log end; clamping it"
        );
        log_start = log_end;
    }
    if checkpointed.is_some_and(|c| c != log_start) {
        checkpoint::write(dir, log_start)?;
    }
    // Finish a deletion interrupted after the checkpoint was written.
    while segments.len() > 1 && segments[0].next_offset <= log_start {
        let segment = segments.remove(0);
        segment.delete_files(dir)?;
        dir_changed = true;
    }
    if dir_changed {
        files::sync_dir(dir)?;
    }
    report.segments = segments.len();
    Ok(Opened {
        segments,
        active_file,
        log_start,
        report,
    })
}

/// Loads a closed segment's metadata from its index files, or rebuilds them by scanning
/// batch headers when they are missing or fail the sanity checks. Returns whether it rebuilt.
fn load_closed(dir: &Path, base: i64, config: &LogConfig) -> Result<(Segment, bool), LogError> {
    let mut segment = Segment::new_empty(dir, base);
    let file = File::open(&segment.path).map_err(io_err("opening segment", &segment.path))?;
    segment.size = file
        .metadata()
        .map_err(io_err("inspecting", &segment.path))?
        .len();
    match load_indexes(dir, &mut segment, &file) {
        Ok(()) => return Ok((segment, false)),
        Err(reason) => tracing::info!(
            segment = %segment.path.display(),
            %reason,
            "rebuilding segment indexes"
        ),
    }
    let size = segment.size;
    let mut segment = Segment::new_empty(dir, base);
    segment.size = size;
    rebuild_by_scan(&mut segment, &file, config.index_interval_bytes)?;
    segment.seal_time_index();
    segment.write_indexes(dir)?;
    Ok((segment, true))
}

fn describe(e: ScanError) -> String {
    match e {
        ScanError::Io(e) => format!("read error: {e}"),
        ScanError::Bad { position, reason } => format!("at byte {position}: {reason}"),
    }
}

/// Reads and checks the index files of a closed segment, then scans the batch headers after
/// the last offset index entry to find the segment's end offset.
fn load_indexes(dir: &Path, segment: &mut Segment, file: &File) -> Result<(), String> {
    let read = |path: PathBuf| fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
    let offset_index =
        OffsetIndex::decode(&read(index_path(dir, segment.base_offset))?, segment.size)?;
    let time_index = TimeIndex::decode(
        &read(time_index_path(dir, segment.base_offset))?,
        segment.size,
    )?;
    let (Some(last_entry), Some(last_time)) = (offset_index.last(), time_index.last()) else {
        // Empty segment: nothing else to learn.
        return Ok(());
    };
    let expected_first = segment
        .base_offset
        .checked_add(i64::from(last_entry.rel))
        .ok_or("index offset overflows")?;
    let mut scan = Scanner::new(file, u64::from(last_entry.pos), segment.size, HEADER_CHUNK);
    let mut next = expected_first;
    while let Some((pos, h)) = scan.next_header().map_err(describe)? {
        if h.base_offset != next {
            return Err(format!(
                "batch at byte {pos} has base offset {}, expected {next}",
                h.base_offset
            ));
        }
        if h.max_timestamp > last_time.ts {
            return Err(format!(
                "time index ends at timestamp {} but the batch at offset {next} has {}",
                last_time.ts, h.max_timestamp
            ));
        }
        next = last_offset_of(&h)
            .and_then(|l| l.checked_add(1))
            .ok_or("last offset overflows")?;
    }
    if i64::from(last_time.rel) >= next - segment.base_offset {
        return Err(format!(
            "time index points at relative offset {} beyond the segment end",
            last_time.rel
        ));
    }
    segment.next_offset = next;
    segment.max_timestamp = last_time.ts;
    segment.offset_of_max_timestamp = segment.base_offset + i64::from(last_time.rel);
    segment.offset_index = offset_index;
    segment.time_index = time_index;
    Ok(())
}

/// Rebuilds a closed segment's metadata from its batch headers; any malformed or
/// non-contiguous batch is a corruption error (closed segments were fsynced when rolled).
fn rebuild_by_scan(segment: &mut Segment, file: &File, interval: u32) -> Result<(), LogError> {
    let end = segment.size;
    segment.size = 0;
    let path = segment.path.clone();
    let corrupt = |position, reason| LogError::Corrupt {
        path: path.clone(),
        position,
        reason,
    };
    let mut scan = Scanner::new(file, 0, end, HEADER_CHUNK);
    while let Some((pos, h)) = scan.next_header().map_err(|e| e.into_log_error(&path))? {
        if h.base_offset != segment.next_offset {
            return Err(corrupt(
                pos,
                format!(
                    "batch base offset {} does not follow offset {}",
                    h.base_offset,
                    segment.next_offset - 1
                ),
            ));
        }
        let last = last_offset_of(&h)
            .filter(|&l| segment.can_index(l, pos))
            .ok_or_else(|| corrupt(pos, "batch offsets exceed the segment's range".to_string()))?;
        segment.on_batch(&h, last, pos, h.total_len() as u64, interval);
    }
    Ok(())
}

/// Validates every batch of the active segment (header, length, CRC-32C, contiguous offsets),
/// rebuilding its indexes as it goes; quarantines and truncates from the first bad byte.
fn recover_active(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<(Segment, File), LogError> {
    let mut segment = Segment::new_empty(dir, base);
    let path = segment.path.clone();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("opening segment", &path))?;
    let meta = file.metadata().map_err(io_err("inspecting", &path))?;
    let file_len = meta.len();
    let mut bad: Option<(u64, String)> = None;
    let mut first_timestamp = None;
    {
        let mut scan = Scanner::new(&file, 0, file_len, FULL_CHUNK);
        loop {
            let (pos, bytes) = match scan.next_batch() {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(ScanError::Io(source)) => {
                    return Err(LogError::Io {
                        context: format!("recovering {}", path.display()),
                        source,
                    })
                }
                Err(ScanError::Bad { position, reason }) => {
                    bad = Some((position, reason));
                    break;
                }
            };
            let h = match batch::validate(bytes) {
                Ok(h) => h,
                Err(e) => {
                    bad = Some((pos, e.to_string()));
                    break;
                }
            };
            if h.base_offset != segment.next_offset {
                bad = Some((
                    pos,
                    format!(
                        "batch base offset {} is not the expected {}",
                        h.base_offset, segment.next_offset
                    ),
                ));
                break;
            }
            let Some(last) = last_offset_of(&h).filter(|&l| segment.can_index(l, pos)) else {
                bad = Some((pos, "batch offsets exceed the segment's range".to_string()));
                break;
            };
            if first_timestamp.is_none() {
                first_timestamp = Some(h.max_timestamp);
            }
            segment.on_batch(
                &h,
                last,
                pos,
                bytes.len() as u64,
                config.index_interval_bytes,
            );
            report.recovered_batches += 1;
        }
    }
    if let Some((position, reason)) = bad {
        let quarantine = quarantine_tail(dir, &file, &segment, position, file_len, &reason)?;
        report.truncated_bytes += file_len - position;
        report.quarantine_file = Some(quarantine);
        report.rebuilt_indexes += 1;
        segment.write_indexes(dir)?;
        files::sync_dir(dir)?;
    }
    if !segment.is_empty() {
        segment.rolling_ms = meta
            .created()
            .ok()
            .map(files::unix_ms)
            .or(first_timestamp.filter(|&t| t >= 0));
    }
    Ok((segment, file))
}

/// Copies `[position, file_len)` of the active segment into `{base}.log.corrupt-{unix_ms}`,
/// makes that copy durable, then truncates the segment at `position` and fsyncs it.
fn quarantine_tail(
    dir: &Path,
    file: &File,
    segment: &Segment,
    position: u64,
    file_len: u64,
    reason: &str,
) -> Result<PathBuf, LogError> {
    let now = files::unix_ms(std::time::SystemTime::now());
    let stem = files::segment_stem(segment.base_offset);
    let mut attempt = 0u32;
    let (quarantine, mut out) = loop {
        let name = if attempt == 0 {
            format!("{stem}{LOG_SUFFIX}{CORRUPT_MARKER}{now}")
        } else {
            format!("{stem}{LOG_SUFFIX}{CORRUPT_MARKER}{now}-{attempt}")
        };
        let candidate = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => break (candidate, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(io_err("creating quarantine file", &candidate)(e)),
        }
    };
    let mut buf = vec![0u8; (file_len - position).min(FULL_CHUNK as u64) as usize];
    let mut at = position;
    while at < file_len {
        let n = (file_len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_err("reading corrupt tail of", &segment.path))?;
        out.write_all(&buf[..n])
            .map_err(io_err("writing", &quarantine))?;
        at += n as u64;
    }
    out.sync_all().map_err(io_err("fsyncing", &quarantine))?;
    files::sync_dir(dir)?;
    file.set_len(position)
        .map_err(io_err("truncating", &segment.path))?;
    file.sync_all().map_err(io_err("fsyncing", &segment.path))?;
    tracing::warn!(
        segment = %segment.path.display(),
        base_offset = segment.base_offset,
        position,
        valid_until_offset = segment.next_offset,
        truncated_bytes = file_len - position,
        quarantine = %quarantine.display(),
        %reason,
        "active segment had a torn or corrupt tail: moved it to a quarantine file and truncated"
    );
    Ok(quarantine)
}
