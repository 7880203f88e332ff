//! The fsync policy and what "durable" means for an acknowledgement.
//!
//! * `always`: every append is followed by an `fdatasync` of the partition's active segment
//!   before acks=-1 is answered. Concurrent appends to one partition share one fsync (group
//!   commit): whoever finds no fsync in flight runs one covering everything appended so far.
//! * `interval:MS`: a background task fsyncs every partition with unsynced data every MS
//!   milliseconds; acks=-1 is answered after the next such fsync covers the batch.
//! * `never`: data is left to the page cache; acks=-1 is answered after the write.
//!
//! In every mode the high watermark (what consumers can read) is the durable offset, so a
//! consumer, and a mirror in particular, never sees a record that a crash could take back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// When partition data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval(Duration),
    Never,
}

impl FsyncPolicy {
    /// Whether the high watermark waits for an fsync.
    pub fn syncs(self) -> bool {
        !matches!(self, FsyncPolicy::Never)
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .ok_or_else(|| {
                        format!("unknown fsync policy `{other}`: use always, never or interval:MS")
                    })?
                    .parse::<u64>()
                    .map_err(|_| format!("`{other}`: MS must be a whole number of milliseconds"))?;
                if ms == 0 {
                    return Err("interval:0 is not allowed; use `always`".to_string());
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Never => write!(f, "never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:25".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(25)))
        );
        assert!("interval:x".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(7)).to_string(),
            "interval:7"
        );
    }
}
