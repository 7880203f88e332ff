//! File naming and low-level durable I/O helpers for the partition log: segment/index file
//! names, positional reads, atomic replace (temp + fsync + rename) and directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::LogError;

/// Extension of segment data files.
pub(crate) const LOG_SUFFIX: &str = ".log";
/// Extension of sparse offset index files.
pub(crate) const INDEX_SUFFIX: &str = ".index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Marker between a segment file name and the quarantine timestamp.
pub(crate) const CORRUPT_MARKER: &str = ".corrupt-";
/// Suffix of temporary files written before an atomic rename.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// Name of the log start offset checkpoint.
pub(crate) const LOG_START_FILE: &str = "log-start-offset";

/// Width of the zero-padded base offset in file names.
const NAME_DIGITS: usize = 20;

pub(crate) fn segment_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

pub(crate) fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}{LOG_SUFFIX}", segment_stem(base_offset)))
}

pub(crate) fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}{INDEX_SUFFIX}", segment_stem(base_offset)))
}

pub(crate) fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}{TIME_INDEX_SUFFIX}", segment_stem(base_offset)))
}

/// Parses the 20-digit base offset of a segment-family file name stem.
pub(crate) fn parse_stem(stem: &str) -> Result<i64, String> {
    if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected a {NAME_DIGITS}-digit zero-padded base offset, found {stem:?}"
        ));
    }
    stem.parse::<i64>()
        .map_err(|_| format!("base offset {stem} does not fit in a signed 64-bit offset"))
}

/// Wraps an I/O error with what we were doing and on which path.
pub(crate) fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let context = format!("{what} {}", path.display());
    move |source| LogError::Io { context, source }
}

/// Reads exactly `len` bytes at `pos`.
pub(crate) fn read_exact_at(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, pos)?;
    Ok(buf)
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsyncing directory", dir))
}

/// Replaces `path` with `contents`: writes `path.tmp`, fsyncs it and renames it over `path`.
/// The caller fsyncs the directory (once, possibly after several replacements).
pub(crate) fn replace_file(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(contents).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("fsyncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Milliseconds since the Unix epoch from the system clock (used for quarantine names and
/// file modification times, never for record timestamps).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
