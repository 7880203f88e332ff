//! The `log-start-offset` checkpoint: the partition's log start offset (advanced by retention
//! and DeleteRecords), stored as three text lines (format tag, decimal offset, CRC-32C of the
//! offset line) and replaced atomically (temp file, fsync, rename, fsync directory).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files::{self, CORRUPT_MARKER, LOG_START_FILE};
use super::LogError;

const TAG: &str = "strait-log-start-offset v1";

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(LOG_START_FILE)
}

fn encode(offset: i64) -> String {
    let line = offset.to_string();
    let crc = crc32c::crc32c(line.as_bytes());
    format!("{TAG}\n{line}\ncrc32c {crc:08x}\n")
}

fn decode(text: &str) -> Result<i64, String> {
    let mut lines = text.lines();
    if lines.next() != Some(TAG) {
        return Err("missing or unknown format line".to_string());
    }
    let line = lines.next().ok_or("missing offset line")?;
    let crc_line = lines.next().ok_or("missing checksum line")?;
    let stored = crc_line
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("bad checksum line {crc_line:?}"))?;
    let computed = crc32c::crc32c(line.as_bytes());
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    if lines.next().is_some() {
        return Err("trailing lines".to_string());
    }
    let offset: i64 = line
        .parse()
        .map_err(|_| format!("offset {line:?} is not an integer"))?;
    if offset < 0 {
        return Err(format!("negative offset {offset}"));
    }
    Ok(offset)
}

/// Reads the checkpoint. `Ok(None)` when absent. A damaged checkpoint is renamed to
/// `log-start-offset.corrupt-{unix_ms}` (kept for inspection), logged, and treated as absent.
pub(crate) fn read(dir: &Path) -> Result<Option<i64>, LogError> {
    let path = checkpoint_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(files::io_err("reading", &path)(e)),
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8 text".to_string())
        .and_then(decode);
    match parsed {
        Ok(offset) => Ok(Some(offset)),
        Err(reason) => {
            let now = files::unix_ms(std::time::SystemTime::now());
            let aside = dir.join(format!("{LOG_START_FILE}{CORRUPT_MARKER}{now}"));
            fs::rename(&path, &aside).map_err(files::io_err("quarantining", &path))?;
            files::sync_dir(dir)?;
            tracing::warn!(
                path = %path.display(),
                quarantine = %aside.display(),
                %reason,
                "log start offset checkpoint is damaged; falling back to the first segment's base offset"
            );
            Ok(None)
        }
    }
}

/// Atomically replaces the checkpoint and fsyncs the directory.
pub(crate) fn write(dir: &Path, offset: i64) -> Result<(), LogError> {
    files::replace_file(&checkpoint_path(dir), encode(offset).as_bytes())?;
    files::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        assert_eq!(decode(&encode(0)), Ok(0));
        assert_eq!(decode(&encode(123_456_789)), Ok(123_456_789));
        let flipped = encode(1234).replace("1234", "1235");
        assert!(decode(&flipped).is_err());
        assert!(decode("").is_err());
        assert!(decode(&encode(5)[..20]).is_err());

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), 42).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(42));
        fs::write(dir.path().join(LOG_START_FILE), b"garbage").unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let kept = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(CORRUPT_MARKER));
        assert!(kept, "damaged checkpoint is kept aside");
    }
}
