//! Small durable-file helpers shared by the broker's metadata files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file:
/// write a temporary sibling, fsync it, rename it over, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Fsyncs a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Parses `key=value` lines (the format of Kafka's `meta.properties`); `#` starts a comment.
pub fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// How long [`open_sled`] waits for a lock held by a store closed a moment ago.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled store, waiting up to [`SLED_LOCK_WAIT`] while its file lock is held. sled
/// releases the lock of a dropped store from a background thread, so reopening a store in the
/// same process right after closing it (a broker restarted in-process, as tests do) can find it
/// still held for a few milliseconds; another process holding it for longer is still an error.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_properties() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.properties");
        write_atomic(&p, b"# c\na=1\nb = two\n").unwrap();
        write_atomic(&p, b"a=3\n").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(parse_properties(&text), vec![("a".into(), "3".into())]);
        assert!(!dir.path().join("meta.properties.tmp").exists());
    }
}
