//! Fault injectors for scenarios.
//!
//! * Process faults: [`signal`] (SIGKILL, SIGSTOP/SIGCONT, SIGTERM) to a PID the caller
//!   started (see [`crate::cluster::Node`]), and [`random_moments`]: seeded fault times.
//! * Network faults: partition / heal / loss through a [`crate::wan::WanControl`] in-process
//!   or a [`crate::wan::http::ControlClient`] against a running `strait-chaos`.
//! * Disk full: [`SizedMount`], a size-limited tmpfs (needs root and `mount`; verified in
//!   this sandbox) used as a broker's data dir, with [`SizedMount::fill`] to leave only a
//!   few bytes free and [`SizedMount::free`] to give the space back.
//! * Clock jumps: `strait broker --debug-clock-file F` adds the offset in F (milliseconds,
//!   re-read every 100 ms) to the broker's clock (`broker_core::broker::now_ms`: timestamps,
//!   LogAppendTime, retention, group and transaction timeouts); a scenario writes F. Timers
//!   use `Instant` and are not affected.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::rng::Rng;

/// Sends `signal` to `pid`. Call it only on processes you started.
pub fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) with a positive PID (never 0 or -1, which would address groups).
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `count` sorted fault moments in `earliest..latest`, at least `min_gap` apart where the
/// window allows, drawn from `rng`.
pub fn random_moments(
    rng: &mut Rng,
    count: usize,
    earliest: Duration,
    latest: Duration,
    min_gap: Duration,
) -> Vec<Duration> {
    let span = latest.saturating_sub(earliest);
    let slot = span / count.max(1) as u32;
    (0..count)
        .map(|i| {
            let slot_start = earliest + slot * i as u32;
            let usable = slot.saturating_sub(min_gap);
            let jitter = rng.range(0, usable.as_millis().max(1) as u64);
            slot_start + min_gap.min(slot) / 2 + Duration::from_millis(jitter)
        })
        .collect()
}

/// Errors of disk faults.
#[derive(Debug, thiserror::Error)]
pub enum DiskFaultError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

/// A tmpfs of fixed size mounted on a fresh directory; unmounted (and removed) on drop.
#[derive(Debug)]
pub struct SizedMount {
    dir: tempfile::TempDir,
    filler: PathBuf,
    mounted: bool,
}

fn run(command: &mut Command) -> Result<(), DiskFaultError> {
    let text = format!("{command:?}");
    let output = command.output().map_err(|source| DiskFaultError::Io {
        context: text.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskFaultError::Command {
            command: text,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl SizedMount {
    /// Mounts a tmpfs of `size_bytes` (needs root).
    pub fn new(size_bytes: u64) -> Result<SizedMount, DiskFaultError> {
        let dir = tempfile::Builder::new()
            .prefix("strait-chaos-disk-")
            .tempdir()
            .map_err(|source| DiskFaultError::Io {
                context: "create mount point".to_string(),
                source,
            })?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes}"))
            .arg("tmpfs")
            .arg(dir.path()))?;
        let filler = dir.path().join("filler");
        Ok(SizedMount {
            dir,
            filler,
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free on the mount.
    pub fn free_bytes(&self) -> Result<u64, DiskFaultError> {
        let path =
            std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).map_err(|_| {
                DiskFaultError::Io {
                    context: "mount path has a NUL byte".to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                }
            })?;
        // SAFETY: statvfs into a zeroed struct we own, on a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(DiskFaultError::Io {
                context: "statvfs".to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Writes a filler file so that at most `leave_bytes` stay free.
    pub fn fill(&self, leave_bytes: u64) -> Result<(), DiskFaultError> {
        use std::io::Write;
        let io = |context: &str| {
            let context = context.to_string();
            move |source| DiskFaultError::Io { context, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .map_err(io("open filler"))?;
        let chunk = vec![0u8; 64 << 10];
        // Bounded: at most size/64 KiB iterations before ENOSPC or the target is reached.
        loop {
            let free = self.free_bytes()?;
            if free <= leave_bytes {
                return Ok(());
            }
            let want = (free - leave_bytes).min(chunk.len() as u64) as usize;
            match file.write_all(chunk.get(..want).unwrap_or_default()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
                Err(e) => return Err(io("write filler")(e)),
            }
        }
    }

    /// Removes the filler file.
    pub fn free(&self) -> Result<(), DiskFaultError> {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DiskFaultError::Io {
                context: "remove filler".to_string(),
                source,
            }),
        }
    }
}

impl Drop for SizedMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).output();
            self.mounted = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_moments_are_sorted_within_the_window_and_reproducible() {
        let a = random_moments(
            &mut Rng::new(9),
            4,
            Duration::from_secs(2),
            Duration::from_secs(20),
            Duration::from_secs(1),
        );
        let b = random_moments(
            &mut Rng::new(9),
            4,
            Duration::from_secs(2),
            Duration::from_secs(20),
            Duration::from_secs(1),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        for pair in a.windows(2) {
            assert!(pair[1] >= pair[0] + Duration::from_millis(500), "{a:?}");
        }
        assert!(
            a[0] >= Duration::from_secs(2) && a[3] <= Duration::from_secs(20),
            "{a:?}"
        );
    }
}
