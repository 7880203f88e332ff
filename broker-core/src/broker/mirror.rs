//! What a mirror partition needs beyond appending (`Partition::append_mirrored`): the identity
//! of its batches (to prove, on resubscribing, that the source still holds the same history),
//! batch digests over a range (`strait mirror verify`), and the operator's ways out of a
//! divergence: copy records to a quarantine file, truncate to a common offset, or restart the
//! log empty at any offset (re-seed). Also the identity of the source topic a mirror topic
//! follows ([`MirrorSource`], persisted in `topic.properties`).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use uuid::Uuid;

use super::{BrokerError, Partition};
use crate::batch::{self, BatchHeader};
use crate::producer_state::ProducerStateTable;

/// Which source topic a mirror topic follows: the source cluster and the source topic's id.
/// A topic deleted and created again on the source under the same name has another id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSource {
    pub cluster_id: String,
    pub topic_id: Uuid,
}

/// One batch's offsets and the CRC-32C of all its bytes (header included): equal digests at
/// equal offsets mean equal batches on two logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDigest {
    pub base_offset: i64,
    pub last_offset: i64,
    pub checksum: u32,
}

/// What [`Partition::quarantine_from`] copied out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuarantineReport {
    pub first_offset: i64,
    pub end_offset: i64,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

/// Most bytes read at once while scanning a range.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

impl Partition {
    /// The header of the last batch in the log (`None` if the log is empty).
    pub fn last_batch(&self) -> Result<Option<BatchHeader>, BrokerError> {
        self.check_online()?;
        let state = self.lock();
        let end = state.log.log_end_offset();
        if end <= state.log.log_start_offset() {
            return Ok(None);
        }
        state
            .log
            .header_at(end - 1)
            .map(Some)
            .map_err(|e| BrokerError::Log(self.name(), e))
    }

    /// The header of the batch holding `offset`, if `offset` is in the log.
    pub fn batch_at(&self, offset: i64) -> Result<Option<BatchHeader>, BrokerError> {
        self.check_online()?;
        let state = self.lock();
        if offset < state.log.log_start_offset() || offset >= state.log.log_end_offset() {
            return Ok(None);
        }
        state
            .log
            .header_at(offset)
            .map(Some)
            .map_err(|e| BrokerError::Log(self.name(), e))
    }

    /// Digests of the batches from the one holding `from` (or the log start, if later) that
    /// start below `to` and below the high watermark, at most `max_batches` of them. Every
    /// batch is read back and CRC-checked: a damaged batch is an error naming its place (with
    /// `max_batches == 1`, an error is about the batch holding `from` itself).
    pub fn batch_digests(
        &self,
        from: i64,
        to: i64,
        max_batches: usize,
    ) -> Result<Vec<BatchDigest>, BrokerError> {
        self.check_online()?;
        let mut out = Vec::new();
        let mut next = from.max(self.offsets().log_start_offset);
        let limit = to.min(self.high_watermark());
        // One batch at a time when asked for one (a read checks every batch it returns, so
        // this names the damaged batch exactly).
        let chunk = if max_batches == 1 {
            1
        } else {
            SCAN_CHUNK_BYTES
        };
        while next < limit && out.len() < max_batches {
            let data = {
                let state = self.lock();
                state
                    .log
                    .read(next, limit, chunk)
                    .map_err(|e| BrokerError::Log(self.name(), e))?
            };
            if data.is_empty() {
                break;
            }
            for bytes in batch::Batches::new(&data) {
                let bytes = bytes?;
                let header = BatchHeader::parse(bytes)?;
                if out.len() >= max_batches || header.base_offset >= limit {
                    return Ok(out);
                }
                out.push(BatchDigest {
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                    checksum: crc32c::crc32c(bytes),
                });
                next = header.last_offset() + 1;
            }
        }
        Ok(out)
    }

    /// Copies every batch from `from` (a batch boundary) to the log end into the new file
    /// `path`, unchanged and back to back (a segment-like file `strait` tools can read), and
    /// fsyncs it. The log is not changed.
    pub fn quarantine_from(&self, from: i64, path: &Path) -> Result<QuarantineReport, BrokerError> {
        self.check_online()?;
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .map_err(BrokerError::io(format!("creating {}", path.display())))?;
        let mut report = QuarantineReport {
            first_offset: from,
            end_offset: from,
            ..QuarantineReport::default()
        };
        loop {
            let data = {
                let state = self.lock();
                let end = state.log.log_end_offset();
                let at = report.end_offset.max(state.log.log_start_offset());
                if at >= end {
                    break;
                }
                state
                    .log
                    .read(at, end, SCAN_CHUNK_BYTES)
                    .map_err(|e| BrokerError::Log(self.name(), e))?
            };
            if data.is_empty() {
                break;
            }
            for bytes in batch::Batches::new(&data) {
                let header = BatchHeader::parse(bytes?)?;
                report.batches += 1;
                report.records += u64::try_from(header.last_offset_delta).unwrap_or(0) + 1;
                report.end_offset = header.last_offset() + 1;
            }
            report.bytes += data.len() as u64;
            file.write_all(&data)
                .map_err(BrokerError::io(format!("writing {}", path.display())))?;
        }
        file.sync_all()
            .map_err(BrokerError::io(format!("fsyncing {}", path.display())))?;
        if let Some(dir) = path.parent() {
            crate::fsutil::sync_dir(dir)
                .map_err(BrokerError::io(format!("fsyncing {}", dir.display())))?;
        }
        Ok(report)
    }

    /// Mirror path: cuts the log to `[log start, offset)` (`offset` a batch boundary), e.g. to
    /// the last offset a diverged source still agrees on. Producer state is rebuilt from what
    /// is left; the high watermark moves back to `offset` (the kept prefix is durable).
    pub fn truncate_mirror_to(&self, offset: i64, notify: &Notify) -> Result<(), BrokerError> {
        self.check_online()?;
        let mut state = self.lock();
        state
            .log
            .truncate_to(offset)
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        // Snapshots above the new end are removed by the rebuild (they describe cut batches).
        state.producers = Self::rebuild_producer_state(&state.log)
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        drop(state);
        self.after_rewind(offset, notify);
        Ok(())
    }

    /// Mirror path: discards every record and restarts the log, empty, at `offset`: the
    /// source's log start moved past this log's end (retention on the source), or the
    /// operator re-seeds the mirror from a new source history (any offset, lower ones too).
    pub fn restart_mirror_at(&self, offset: i64, notify: &Notify) -> Result<(), BrokerError> {
        self.check_online()?;
        let mut state = self.lock();
        state
            .log
            .restart_at(offset)
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        state.producers = ProducerStateTable::default();
        if let Ok(entries) = fs::read_dir(state.log.dir()) {
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if path.extension().is_some_and(|x| x == "snapshot") {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        drop(state);
        self.after_rewind(offset, notify);
        Ok(())
    }

    fn after_rewind(&self, end: i64, notify: &Notify) {
        *self.last_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.high_watermark.store(end, Ordering::Release);
        self.hw_tx.send_replace(end);
        notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::test_batches::build;
    use crate::broker::tests::open;
    use crate::broker::{Broker, NewTopic};
    use crate::config::TopicConfig;
    use crate::durability::FsyncPolicy;

    fn topic(name: &str) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions: 1,
            config: TopicConfig::default(),
        }
    }

    /// A source partition with 10 batches of 1 record, mirrored to `dst`.
    fn source_and_mirror(src: &Broker, dst: &Broker) -> (Arc<Partition>, Arc<Partition>) {
        src.create_topic(topic("t")).unwrap();
        dst.create_mirror_topic(topic("t"), "l").unwrap();
        let sp = src.partition("t", 0).unwrap();
        for i in 0..10u8 {
            sp.append_produced(
                build(&[&[b'a' + i]], 1_000),
                &TopicConfig::default(),
                FsyncPolicy::Never,
                &src.data_arrived,
            )
            .unwrap();
        }
        let (bytes, _) = sp.read(0, 1 << 20, false).unwrap();
        let dp = dst.partition("t", 0).unwrap();
        dp.append_mirrored(&bytes, FsyncPolicy::Never, &dst.data_arrived)
            .unwrap();
        (sp, dp)
    }

    #[tokio::test]
    async fn anchors_digests_quarantine_and_rewinds() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (open(a.path()), open(b.path()));
        let (sp, dp) = source_and_mirror(&src, &dst);
        let last = dp.last_batch().unwrap().unwrap();
        assert_eq!(last.base_offset, 9);
        assert_eq!(sp.batch_at(9).unwrap().unwrap().crc, last.crc);
        assert!(sp.batch_at(10).unwrap().is_none());
        assert_eq!(
            sp.batch_digests(0, i64::MAX, 100).unwrap(),
            dp.batch_digests(0, i64::MAX, 100).unwrap()
        );
        assert_eq!(dp.batch_digests(3, 6, 100).unwrap().len(), 3);
        assert_eq!(dp.batch_digests(0, i64::MAX, 4).unwrap().len(), 4);

        let qdir = tempfile::tempdir().unwrap();
        let report = dp.quarantine_from(6, &qdir.path().join("q.log")).unwrap();
        assert_eq!((report.batches, report.records), (4, 4));
        assert_eq!((report.first_offset, report.end_offset), (6, 10));
        let (tail, _) = dp.read(6, 1 << 20, false).unwrap();
        assert_eq!(fs::read(qdir.path().join("q.log")).unwrap(), tail);
        assert!(
            dp.quarantine_from(6, &qdir.path().join("q.log")).is_err(),
            "never overwrites a quarantine file"
        );

        dp.truncate_mirror_to(6, &dst.data_arrived).unwrap();
        assert_eq!(dp.offsets().log_end_offset, 6);
        assert_eq!(dp.high_watermark(), 6);
        let (rest, _) = sp.read(6, 1 << 20, false).unwrap();
        dp.append_mirrored(&rest, FsyncPolicy::Never, &dst.data_arrived)
            .unwrap();
        assert_eq!(
            sp.batch_digests(0, i64::MAX, 100).unwrap(),
            dp.batch_digests(0, i64::MAX, 100).unwrap()
        );

        dp.restart_mirror_at(0, &dst.data_arrived).unwrap();
        let o = dp.offsets();
        assert_eq!(
            (o.log_start_offset, o.log_end_offset, o.high_watermark),
            (0, 0, 0)
        );
        assert!(dp.last_batch().unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_durability_wait_does_not_stop_later_fsyncs() {
        // A link lane's ack task is aborted (pause, reconnect) while it runs an fsync inside
        // `wait_durable`: the next waiter must still get its fsync.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (open(a.path()), open(b.path()));
        let (_, dp) = source_and_mirror(&src, &dst);
        let notify = dst.data_arrived.clone();
        for _ in 0..20 {
            let end = dp.offsets().log_end_offset;
            let more = build(&[b"x"], 2_000);
            let mut stamped = more.clone();
            crate::batch::stamp_offset_and_epoch(&mut stamped, end, 0);
            dp.append_mirrored(&stamped, FsyncPolicy::Always, &notify)
                .unwrap();
            {
                let waiting = dp.wait_durable(end + 1, FsyncPolicy::Always, &notify);
                tokio::pin!(waiting);
                tokio::select! {
                    biased;
                    _ = &mut waiting => {}
                    _ = std::future::ready(()) => {}
                }
                // Dropped here, possibly in the middle of its fsync.
            }
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                dp.wait_durable(end + 1, FsyncPolicy::Always, &notify),
            )
            .await
            .expect("a later waiter gets its fsync")
            .unwrap();
        }
    }

    #[test]
    fn the_mirror_source_is_persisted_with_the_topic() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        {
            let b = open(dir.path());
            b.create_mirror_topic(topic("m"), "l").unwrap();
            assert!(b.topic("m").unwrap().mirror_source().is_none());
            b.set_mirror_source(
                "m",
                Some(MirrorSource {
                    cluster_id: "east".into(),
                    topic_id: id,
                }),
            )
            .unwrap();
            b.shutdown().unwrap();
        }
        let b = open(dir.path());
        let source = b.topic("m").unwrap().mirror_source().unwrap();
        assert_eq!((source.cluster_id.as_str(), source.topic_id), ("east", id));
    }
}
