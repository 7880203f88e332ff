//! The broker's state: its identity, the topic registry, partitions with their logs, producer
//! ids, and the background work (retention, interval fsync).
//!
//! Protocol handlers call into this module; it knows nothing of the wire format. Everything
//! here is synchronous except waiting for durability, so tests can drive it directly.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::batch::{self, BatchError, BatchHeader, ControlType};
use crate::config::{ConfigError, TopicConfig};
use crate::durability::FsyncPolicy;
use crate::fsutil::{parse_properties, sync_dir, write_atomic};
use crate::group::GroupCoordinator;
use crate::log::{LogError, PartitionLog};
use crate::producer_state::{
    AbortedTxn, ProducerInfo, ProducerStateTable, SequenceError, SequenceVerdict,
};
use crate::records::{self, BatchOrigin, RecordsError, DEFAULT_MAX_DECOMPRESSED};
use crate::txn::TxnCoordinator;

mod mirror;
pub use mirror::{BatchDigest, MirrorSource, QuarantineReport};

/// Largest partition count one request may create, to keep a typo from opening a million files.
pub const MAX_PARTITIONS: i32 = 10_000;
/// The leader epoch of every partition: a single broker never changes leader.
pub const LEADER_EPOCH: i32 = 0;
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Settings of one broker process.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub node_id: i32,
    /// None: reuse the one stored in the data dir, or generate one.
    pub cluster_id: Option<String>,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub fsync: FsyncPolicy,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub retention_check_interval: Duration,
    /// Offsets of a group with no members expire this long after its last commit.
    pub offsets_retention: Duration,
}

impl BrokerConfig {
    pub fn new(data_dir: PathBuf, advertised_host: String, advertised_port: i32) -> Self {
        BrokerConfig {
            data_dir,
            node_id: 1,
            cluster_id: None,
            advertised_host,
            advertised_port,
            fsync: FsyncPolicy::Always,
            auto_create_topics: true,
            default_partitions: 1,
            retention_check_interval: Duration::from_secs(30),
            offsets_retention: crate::group::DEFAULT_OFFSETS_RETENTION,
        }
    }
}

/// Failures of broker operations, each mapped to a Kafka error code by the protocol layer.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, String),
    #[error("partition log {0}: {1}")]
    Log(String, #[source] LogError),
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("partition {1} of topic `{0}` does not exist")]
    UnknownPartition(String, i32),
    #[error("invalid topic name `{0}`: {1}")]
    InvalidTopic(String, &'static str),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("replication factor {0} is impossible on a single-broker cluster (use 1 or -1)")]
    InvalidReplicationFactor(i16),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The records inside a batch are malformed (or do not decompress); nothing was stored.
    #[error("invalid record batch: {0}")]
    InvalidRecords(#[from] RecordsError),
    #[error("record batch of {size} bytes exceeds max.message.bytes={max}")]
    BatchTooLarge { size: usize, max: usize },
    #[error("producers may not write control batches")]
    ControlBatchFromClient,
    #[error("transaction check failed with Kafka error code {0}")]
    Transaction(i16),
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrderSequence { expected: i32, got: i32 },
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch { current: i16, got: i16 },
    #[error("partition is offline after a storage failure: {0}")]
    StorageFailed(String),
    #[error("topic `{topic}` is a mirror topic of link `{link}`: it is read-only (records arrive from the source cluster) until it is promoted")]
    MirrorTopicReadOnly { topic: String, link: String },
    #[error("topic `{0}` is not a mirror topic")]
    NotAMirror(String),
}

impl BrokerError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
        let context = context.into();
        move |source| BrokerError::Io { context, source }
    }
}

/// Added to the system clock by [`now_ms`]: fault injection (clock jumps) for tests, always
/// 0 in normal operation.
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts the broker's clock by `offset_ms` from the system clock (fault injection: the chaos
/// suite's clock jumps; `strait broker --debug-clock-file`).
pub fn set_clock_offset_ms(offset_ms: i64) {
    CLOCK_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch (the broker's clock for timestamps, retention, and group
/// and transaction timeouts, as Kafka's wall-clock `Time.milliseconds()`).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .saturating_add(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// Kafka's legal topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let invalid = |why| Err(BrokerError::InvalidTopic(name.to_string(), why));
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name == "." || name == ".." {
        return invalid("`.` and `..` are not allowed");
    }
    if name.len() > 249 {
        return invalid("it is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
    {
        return invalid("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// The log and the producer table of a partition change together, under one lock.
struct PartitionState {
    log: PartitionLog,
    producers: ProducerStateTable,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    /// One past the last offset of the batch: acks=-1 waits until this is durable.
    pub end_offset: i64,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub duplicate: bool,
}

/// What a mirrored append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorAppend {
    pub appended_batches: usize,
    /// Batches already present (resent after a reconnect) and skipped.
    pub skipped_batches: usize,
    pub appended_bytes: u64,
    pub appended_records: i64,
    /// The log end offset afterwards.
    pub end_offset: i64,
    /// A batch that failed validation: it and everything after it in the call were not
    /// written (the batches before it were). The caller must not go on past it.
    pub refused: Option<RefusedBatch>,
}

/// A batch the mirror path refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBatch {
    /// Where the refused bytes start: the batch's base offset, or the log end offset when its
    /// header cannot be read.
    pub offset: i64,
    pub reason: String,
}

/// Offsets of a partition as ListOffsets/Fetch report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// Below the first open transaction and the high watermark: what read_committed sees.
    pub last_stable_offset: i64,
    pub log_end_offset: i64,
}

/// Clears a partition's fsync-in-flight flag when dropped: also when the future running the
/// fsync is cancelled mid-await (e.g. a link lane's ack task aborted while it waited in
/// `wait_durable`), which would otherwise leave the flag set and no fsync could ever start
/// again for that partition (its high watermark would stop).
struct SyncInFlight<'a>(&'a Mutex<bool>);

impl Drop for SyncInFlight<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// One partition: its log, the durable high watermark, and group-commit state.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    state: Mutex<PartitionState>,
    /// Offset below which every record is durable under the fsync policy; what consumers see.
    high_watermark: AtomicI64,
    hw_tx: watch::Sender<i64>,
    sync_in_flight: Mutex<bool>,
    failure: Mutex<Option<String>>,
    /// Log end offset of the last producer-state snapshot written.
    last_snapshot: Mutex<Option<i64>>,
}

impl Partition {
    fn open(
        topic: &str,
        index: i32,
        dir: &Path,
        config: &TopicConfig,
    ) -> Result<Self, BrokerError> {
        let (log, report) = PartitionLog::open(dir, config.log_config())
            .map_err(|e| BrokerError::Log(format!("{topic}-{index}"), e))?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                topic,
                partition = index,
                truncated_bytes = report.truncated_bytes,
                quarantine = ?report.quarantine_file,
                "recovered partition log: truncated an invalid tail"
            );
        }
        let producers = Self::rebuild_producer_state(&log)
            .map_err(|e| BrokerError::Log(format!("{topic}-{index}"), e))?;
        // Everything that survived recovery is on disk; after a crash the tail that was not
        // fsynced may be gone, but what is here now is what we serve.
        let end = log.log_end_offset();
        let (hw_tx, _) = watch::channel(end);
        Ok(Partition {
            topic: topic.to_string(),
            index,
            state: Mutex::new(PartitionState { log, producers }),
            high_watermark: AtomicI64::new(end),
            hw_tx,
            sync_in_flight: Mutex::new(false),
            failure: Mutex::new(None),
            last_snapshot: Mutex::new(None),
        })
    }

    /// Loads the newest usable producer-state snapshot (`{offset:020}.snapshot`, taken at a
    /// durable log end offset); stale snapshots above the log end are removed.
    fn load_snapshot(log: &PartitionLog) -> Option<(ProducerStateTable, i64)> {
        let leo = log.log_end_offset();
        let mut found: Vec<(i64, PathBuf)> = fs::read_dir(log.dir())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let offset = name.strip_suffix(".snapshot")?.parse::<i64>().ok()?;
                Some((offset, p))
            })
            .collect();
        found.sort();
        while let Some((offset, path)) = found.pop() {
            if offset > leo {
                // Taken before a crash truncated the log below it: useless now.
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path)
                .ok()
                .and_then(|b| ProducerStateTable::decode_snapshot(&b))
            {
                Some((table, at)) if at == offset => return Some((table, offset)),
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a corrupt producer-state snapshot")
                }
            }
        }
        None
    }

    /// Rebuilds idempotence and transaction state: the newest snapshot, then the log's batch
    /// headers after it (and the records of control batches, to tell commits from aborts).
    fn rebuild_producer_state(log: &PartitionLog) -> Result<ProducerStateTable, LogError> {
        let (mut producers, from) = match Self::load_snapshot(log) {
            Some((table, offset)) => (table, offset),
            None => (ProducerStateTable::default(), log.log_start_offset()),
        };
        let mut result = Ok(());
        log.scan_headers(from.max(log.log_start_offset()), &mut |h| {
            if h.is_control() {
                match log.read(h.base_offset, h.base_offset + 1, 1) {
                    Ok(bytes) => {
                        if let Some(kind) = batch::control_type(&bytes) {
                            producers.record_marker(h, kind);
                        }
                    }
                    Err(e) => {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
            } else {
                producers.record(h);
            }
        })?;
        result.map(|()| producers)
    }

    fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // A panic while holding the lock is a bug; the state itself stays consistent because
        // every mutation is a single log call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_online(&self) -> Result<(), BrokerError> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(BrokerError::StorageFailed(reason.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(topic = %self.topic, partition = self.index, %reason, "partition taken offline");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        // Wake waiters so they see the failure.
        self.hw_tx.send_modify(|_| {});
    }

    fn name(&self) -> String {
        format!("{}-{}", self.topic, self.index)
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn offsets(&self) -> PartitionOffsets {
        let state = self.lock();
        let hw = self.high_watermark();
        PartitionOffsets {
            log_start_offset: state.log.log_start_offset(),
            high_watermark: hw,
            last_stable_offset: state
                .producers
                .first_unstable_offset()
                .map_or(hw, |first| first.min(hw)),
            log_end_offset: state.log.log_end_offset(),
        }
    }

    fn advance_high_watermark(&self, to: i64, notify: &Notify) {
        let prev = self.high_watermark.fetch_max(to, Ordering::AcqRel);
        if to > prev {
            self.hw_tx.send_replace(to);
            notify.notify_waiters();
        }
    }

    /// Validates and appends one batch sent by a producer.
    pub fn append_produced(
        &self,
        mut batch: Vec<u8>,
        config: &TopicConfig,
        fsync: FsyncPolicy,
        notify: &Notify,
    ) -> Result<AppendOutcome, BrokerError> {
        self.check_online()?;
        let max = config.max_message_bytes();
        if batch.len() > max {
            return Err(BrokerError::BatchTooLarge {
                size: batch.len(),
                max,
            });
        }
        let header = batch::validate_produced(&batch)?;
        if header.is_control() {
            return Err(BrokerError::ControlBatchFromClient);
        }
        // Every record, before the lock (decompression must not hold up other producers).
        // Kafka sets no limit; the cap bounds the work (nothing holds the output).
        let cap = DEFAULT_MAX_DECOMPRESSED.max(max);
        records::validate_records(&batch, BatchOrigin::Producer, cap)?;
        let now = now_ms();
        let mut state = self.lock();
        match state.producers.check(&header) {
            Ok(SequenceVerdict::Append) => {}
            Ok(SequenceVerdict::Duplicate { base_offset }) => {
                return Ok(AppendOutcome {
                    base_offset,
                    end_offset: base_offset + header.last_offset_delta as i64 + 1,
                    log_append_time_ms: -1,
                    log_start_offset: state.log.log_start_offset(),
                    duplicate: true,
                })
            }
            Err(SequenceError::OutOfOrder { expected, got }) => {
                return Err(BrokerError::OutOfOrderSequence { expected, got })
            }
            Err(SequenceError::InvalidEpoch { current, got }) => {
                return Err(BrokerError::InvalidProducerEpoch { current, got })
            }
        }
        let log_append_time_ms = if config.log_append_time() {
            batch::stamp_log_append_time(&mut batch, now);
            now
        } else {
            -1
        };
        let info = match state.log.append(&mut batch, LEADER_EPOCH, now) {
            Ok(info) => info,
            Err(e) => {
                drop(state);
                let reason = format!("append failed: {e}");
                self.fail(reason.clone());
                return Err(BrokerError::StorageFailed(reason));
            }
        };
        let stamped = BatchHeader {
            base_offset: info.base_offset,
            ..header
        };
        state.producers.record(&stamped);
        let outcome = AppendOutcome {
            base_offset: info.base_offset,
            end_offset: info.last_offset + 1,
            log_append_time_ms,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        };
        drop(state);
        if !fsync.syncs() {
            self.advance_high_watermark(outcome.end_offset, notify);
        }
        Ok(outcome)
    }

    /// Mirror path: appends record batches copied from a source partition at their own (source)
    /// offsets, bytes unchanged. Each batch's CRC is checked again; batches wholly below the log
    /// end are already here (a resend after a reconnect) and are skipped; a batch that does not
    /// continue the log is an error (the caller resets or resubscribes). Producer state (for
    /// idempotence, the last stable offset and aborted transactions) follows the batches, so
    /// read_committed consumers of the mirror see what they would see on the source. Returns the
    /// log end offset afterwards; durability is the caller's: `wait_durable(end)`.
    pub fn append_mirrored(
        &self,
        batches: &[u8],
        fsync: FsyncPolicy,
        notify: &Notify,
    ) -> Result<MirrorAppend, BrokerError> {
        self.check_online()?;
        let (valid, refusal) = check_mirrored_records(batches);
        let now = now_ms();
        let mut state = self.lock();
        let mut result = MirrorAppend {
            end_offset: state.log.log_end_offset(),
            ..MirrorAppend::default()
        };
        for batch in batch::Batches::new(&batches[..valid]) {
            let batch = batch?;
            let header = BatchHeader::parse(batch)?; // validated whole above
            let end = state.log.log_end_offset();
            if header.last_offset() < end {
                result.skipped_batches += 1;
                continue;
            }
            if header.base_offset != end {
                return Err(BrokerError::Log(
                    self.name(),
                    LogError::NonContiguous {
                        expected: end,
                        got: header.base_offset,
                    },
                ));
            }
            if let Err(e) = state.log.append_at_offset(batch, now) {
                drop(state);
                let reason = format!("mirrored append failed: {e}");
                self.fail(reason.clone());
                return Err(BrokerError::StorageFailed(reason));
            }
            if header.is_control() {
                if let Some(kind) = batch::control_type(batch) {
                    state.producers.record_marker(&header, kind);
                }
            } else {
                state.producers.record(&header);
            }
            result.appended_batches += 1;
            result.appended_bytes += batch.len() as u64;
            result.appended_records += i64::from(header.last_offset_delta) + 1;
            result.end_offset = header.last_offset() + 1;
        }
        result.refused = refusal.map(|(offset, e)| RefusedBatch {
            offset: offset.unwrap_or(result.end_offset),
            reason: e.to_string(),
        });
        drop(state);
        if !fsync.syncs() && result.appended_batches > 0 {
            self.advance_high_watermark(result.end_offset, notify);
        }
        Ok(result)
    }

    /// Mirror path: the source's log start moved past this partition's log end (retention on
    /// the source deleted records never copied), so the log restarts, empty, at `offset`.
    pub fn reset_for_mirror(&self, offset: i64, notify: &Notify) -> Result<(), BrokerError> {
        self.restart_mirror_at(offset, notify)
    }

    /// Waits until every offset below `end_offset` is durable (and visible to consumers).
    pub async fn wait_durable(
        &self,
        end_offset: i64,
        fsync: FsyncPolicy,
        notify: &Notify,
    ) -> Result<(), BrokerError> {
        let mut rx = self.hw_tx.subscribe();
        loop {
            self.check_online()?;
            if *rx.borrow_and_update() >= end_offset || self.high_watermark() >= end_offset {
                return Ok(());
            }
            if fsync == FsyncPolicy::Always && self.try_start_sync() {
                self.sync_now(notify).await;
                continue;
            }
            // Another task's fsync (or the interval task) will move the watermark.
            if rx.changed().await.is_err() {
                return Err(BrokerError::StorageFailed("partition closed".into()));
            }
        }
    }

    /// With `--fsync always`: starts an fsync in the background if data is waiting for one and
    /// none is running, so the fsyncs of several partitions of one request overlap.
    pub fn start_sync(self: &Arc<Self>, fsync: FsyncPolicy, notify: &Arc<Notify>) {
        if fsync != FsyncPolicy::Always {
            return;
        }
        let leo = self.lock().log.log_end_offset();
        if leo > self.high_watermark() && self.try_start_sync() {
            let me = self.clone();
            let notify = notify.clone();
            tokio::spawn(async move { me.sync_now(&notify).await });
        }
    }

    fn try_start_sync(&self) -> bool {
        let mut in_flight = self
            .sync_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *in_flight {
            false
        } else {
            *in_flight = true;
            true
        }
    }

    /// Runs one fsync of the active segment (the caller won `try_start_sync`) and advances the
    /// high watermark to what it covered.
    async fn sync_now(&self, notify: &Notify) {
        let in_flight = SyncInFlight(&self.sync_in_flight);
        let target = self.lock().log.sync_target();
        let file = target.file.clone();
        let result = tokio::task::spawn_blocking(move || file.sync_data()).await;
        drop(in_flight);
        match result {
            Ok(Ok(())) => self.advance_high_watermark(target.end_offset, notify),
            Ok(Err(e)) => self.fail(format!("fsync failed: {e}")),
            Err(e) => self.fail(format!("fsync task failed: {e}")),
        }
        // Wake any waiter whose offset this fsync did not cover, so one of them runs the next.
        self.hw_tx.send_modify(|_| {});
    }

    /// Interval policy: fsync if there is unsynced data.
    async fn sync_if_dirty(&self, notify: &Notify) {
        let leo = self.lock().log.log_end_offset();
        if leo > self.high_watermark() && self.try_start_sync() {
            self.sync_now(notify).await;
        }
    }

    /// Reads whole batches from `offset`, never past the high watermark, nor, for
    /// read_committed, past the last stable offset. Also returns, for read_committed, the
    /// aborted transactions overlapping what was read.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        read_committed: bool,
    ) -> Result<(Vec<u8>, Vec<AbortedTxn>), BrokerError> {
        self.check_online()?;
        let mut hw = self.high_watermark();
        let state = self.lock();
        if read_committed {
            if let Some(first) = state.producers.first_unstable_offset() {
                hw = hw.min(first);
            }
        }
        // Offsets at or past `hw` but within the log (written, not yet durable or stable) read
        // as empty; offsets outside the log are OFFSET_OUT_OF_RANGE.
        let data = state
            .log
            .read(offset, hw, max_bytes)
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        let aborted = if read_committed && !data.is_empty() {
            let end = batch::end_offset(&data).unwrap_or(offset);
            state.producers.aborted_overlapping(offset, end)
        } else {
            Vec::new()
        };
        Ok((data, aborted))
    }

    /// Writes a transaction marker (commit or abort) for `producer_id` into this partition.
    /// The caller waits for `end_offset` to be durable.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        kind: ControlType,
        notify: &Notify,
        fsync: FsyncPolicy,
    ) -> Result<AppendOutcome, BrokerError> {
        self.check_online()?;
        let now = now_ms();
        let mut state = self.lock();
        if let Err(SequenceError::InvalidEpoch { current, got }) =
            state.producers.check_marker(producer_id, producer_epoch)
        {
            return Err(BrokerError::InvalidProducerEpoch { current, got });
        }
        let mut marker = batch::build_control_batch(producer_id, producer_epoch, kind, 0, now);
        let info = match state.log.append(&mut marker, LEADER_EPOCH, now) {
            Ok(info) => info,
            Err(e) => {
                drop(state);
                let reason = format!("marker append failed: {e}");
                self.fail(reason.clone());
                return Err(BrokerError::StorageFailed(reason));
            }
        };
        if let Ok(h) = BatchHeader::parse(&marker) {
            state.producers.record_marker(
                &BatchHeader {
                    base_offset: info.base_offset,
                    ..h
                },
                kind,
            );
        }
        let outcome = AppendOutcome {
            base_offset: info.base_offset,
            end_offset: info.last_offset + 1,
            log_append_time_ms: -1,
            log_start_offset: state.log.log_start_offset(),
            duplicate: false,
        };
        drop(state);
        if !fsync.syncs() {
            self.advance_high_watermark(outcome.end_offset, notify);
        } else {
            // The last stable offset may move once the marker is durable; wake fetchers then.
            notify.notify_waiters();
        }
        Ok(outcome)
    }

    /// Producers and open transactions of this partition (DescribeProducers).
    pub fn producer_summary(&self) -> Vec<ProducerInfo> {
        self.lock().producers.describe()
    }

    /// The first batch with max timestamp >= ts, below the high watermark.
    pub fn find_batch_by_timestamp(&self, ts: i64) -> Result<Option<Vec<u8>>, BrokerError> {
        let hw = self.high_watermark();
        let state = self.lock();
        let found = state
            .log
            .find_batch_by_timestamp(ts)
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        Ok(found.filter(|b| BatchHeader::parse(b).is_ok_and(|h| h.base_offset < hw)))
    }

    pub fn batch_with_max_timestamp(&self) -> Result<Option<Vec<u8>>, BrokerError> {
        let hw = self.high_watermark();
        let state = self.lock();
        let found = state
            .log
            .batch_with_max_timestamp()
            .map_err(|e| BrokerError::Log(self.name(), e))?;
        Ok(found.filter(|b| BatchHeader::parse(b).is_ok_and(|h| h.base_offset < hw)))
    }

    /// DeleteRecords: offset -1 means the high watermark. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, BrokerError> {
        self.check_online()?;
        let hw = self.high_watermark();
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            let state = self.lock();
            return Err(BrokerError::Log(
                self.name(),
                LogError::OffsetOutOfRange {
                    offset: target,
                    log_start: state.log.log_start_offset(),
                    log_end: hw,
                },
            ));
        }
        let mut state = self.lock();
        state
            .log
            .delete_records_before(target)
            .map_err(|e| BrokerError::Log(self.name(), e))
    }

    fn enforce_retention(&self, now: i64) {
        let mut state = self.lock();
        let result = state.log.enforce_retention(now);
        let start = state.log.log_start_offset();
        state.producers.prune_aborted(start);
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                partition = %self.name(),
                segments = n,
                log_start_offset = state.log.log_start_offset(),
                "retention deleted segments"
            ),
            Err(e) => tracing::error!(partition = %self.name(), error = %e, "retention failed"),
        }
    }

    /// Writes a producer-state snapshot at the log end, after an fsync that makes every
    /// batch it describes durable; keeps the two newest snapshots.
    fn write_snapshot(&self) -> Result<(), BrokerError> {
        let (bytes, leo, target, dir) = {
            let state = self.lock();
            let leo = state.log.log_end_offset();
            (
                state.producers.encode_snapshot(leo),
                leo,
                state.log.sync_target(),
                state.log.dir().to_path_buf(),
            )
        };
        let last = *self.last_snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if last == Some(leo) || leo == 0 {
            return Ok(());
        }
        let io = |what: &str| BrokerError::io(format!("{}: {what}", self.name()));
        target
            .file
            .sync_data()
            .map_err(io("fsync before snapshot"))?;
        let path = dir.join(format!("{leo:020}.snapshot"));
        write_atomic(&path, &bytes).map_err(io("writing producer-state snapshot"))?;
        *self.last_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(leo);
        let mut old: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io("listing snapshots"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
            .collect();
        old.sort();
        for p in old.iter().rev().skip(2) {
            let _ = fs::remove_file(p);
        }
        Ok(())
    }

    fn set_config(&self, config: &TopicConfig) {
        self.lock().log.set_config(config.log_config());
    }

    fn close(&self) -> Result<(), BrokerError> {
        if self.check_online().is_ok() {
            self.write_snapshot()?;
        }
        self.lock()
            .log
            .close()
            .map_err(|e| BrokerError::Log(self.name(), e))
    }

    /// Full CRC and contiguity check of the log (tests and operators).
    pub fn verify(&self) -> Result<crate::log::VerifyReport, BrokerError> {
        self.lock()
            .log
            .verify()
            .map_err(|e| BrokerError::Log(self.name(), e))
    }
}

/// A topic: its id, config overrides and partitions.
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    dir: PathBuf,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Vec<Arc<Partition>>>,
    /// The link that mirrors this topic from a source cluster, if any: a mirror topic takes
    /// records only from that link (at the source's offsets), never from producers.
    mirror_link: RwLock<Option<String>>,
    /// For a mirror topic, the source cluster and source topic it follows (see `mirror.rs`).
    mirror_source: RwLock<Option<MirrorSource>>,
}

impl Topic {
    /// The source topic a mirror topic follows, once the link recorded it.
    pub fn mirror_source(&self) -> Option<MirrorSource> {
        self.mirror_source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The link mirroring this topic, if it is a mirror topic.
    pub fn mirror_link(&self) -> Option<String> {
        self.mirror_link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Errors if producers may not write to this topic (it is a mirror topic).
    pub fn check_writable(&self) -> Result<(), BrokerError> {
        match self.mirror_link() {
            Some(link) => Err(BrokerError::MirrorTopicReadOnly {
                topic: self.name.clone(),
                link,
            }),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> TopicConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i).cloned())
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as i32
    }

    fn properties(&self) -> String {
        let mut out = format!(
            "# Strait topic metadata\nname={}\ntopic.id={}\npartitions={}\n",
            self.name,
            self.id,
            self.partition_count()
        );
        if let Some(link) = self.mirror_link() {
            out.push_str(&format!("mirror.link={link}\n"));
        }
        if let Some(source) = self.mirror_source() {
            out.push_str(&format!(
                "mirror.source.cluster.id={}\nmirror.source.topic.id={}\n",
                source.cluster_id, source.topic_id
            ));
        }
        for (k, v) in self.config().overrides() {
            out.push_str(&format!("config.{k}={v}\n"));
        }
        out
    }

    fn persist(&self) -> Result<(), BrokerError> {
        let path = self.dir.join("topic.properties");
        write_atomic(&path, self.properties().as_bytes())
            .map_err(BrokerError::io(format!("writing {}", path.display())))
    }
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub config: TopicConfig,
}

/// The broker: identity, topics and background tasks.
pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and partition changes (not the data path).
    admin_lock: Mutex<()>,
    /// Signalled whenever a high watermark advances: wakes long-polling fetches.
    pub data_arrived: Arc<Notify>,
    producer_ids: Mutex<ProducerIdBlock>,
    /// The group coordinator: this broker coordinates every group.
    pub groups: Arc<GroupCoordinator>,
    /// The transaction coordinator: this broker coordinates every transactional id.
    pub txns: TxnCoordinator,
    _lock_file: fs::File,
}

struct ProducerIdBlock {
    next: i64,
    end: i64,
}

impl Broker {
    /// Opens the data directory (creating it if needed), recovers every partition log and
    /// returns the broker. Fails clearly if the directory is unusable or already in use.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        let dir = config.data_dir.clone();
        let dir_err = |msg: String| BrokerError::DataDir(dir.clone(), msg);
        fs::create_dir_all(&dir).map_err(|e| dir_err(format!("cannot create it: {e}")))?;
        if !dir.is_dir() {
            return Err(dir_err("is not a directory".into()));
        }
        let lock_path = dir.join(".lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| dir_err(format!("cannot write in it: {e}")))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(dir_err(
                    "is in use by another strait process (lock held on .lock)".into(),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(format!("cannot lock it: {e}"))),
        }
        let cluster_id = Self::load_identity(&config)?;
        let producer_ids = Self::load_producer_ids(&dir)?;
        fs::create_dir_all(dir.join("topics"))
            .map_err(BrokerError::io("creating topics directory"))?;
        Self::purge_deleted(&dir);
        let groups = GroupCoordinator::open(&dir.join("groups"), config.offsets_retention)
            .map_err(|e| BrokerError::DataDir(dir.clone(), format!("group offsets: {e}")))?;
        let txns = TxnCoordinator::open(&dir.join("transactions"))
            .map_err(|e| BrokerError::DataDir(dir.clone(), format!("transactions: {e}")))?;

        let broker = Broker {
            config,
            cluster_id,
            topics: RwLock::new(BTreeMap::new()),
            admin_lock: Mutex::new(()),
            data_arrived: Arc::new(Notify::new()),
            producer_ids: Mutex::new(producer_ids),
            groups: Arc::new(groups),
            txns,
            _lock_file: lock_file,
        };
        broker.load_topics()?;
        Ok(Arc::new(broker))
    }

    fn load_identity(config: &BrokerConfig) -> Result<String, BrokerError> {
        let path = config.data_dir.join("meta.properties");
        let dir_err = |msg: String| BrokerError::DataDir(config.data_dir.clone(), msg);
        if path.exists() {
            let text = fs::read_to_string(&path)
                .map_err(|e| dir_err(format!("cannot read meta.properties: {e}")))?;
            let props = parse_properties(&text);
            let get = |k: &str| props.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
            let stored_cluster = get("cluster.id")
                .ok_or_else(|| dir_err("meta.properties has no cluster.id".into()))?;
            let stored_node: i32 = get("node.id")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| dir_err("meta.properties has no valid node.id".into()))?;
            if let Some(wanted) = &config.cluster_id {
                if *wanted != stored_cluster {
                    return Err(dir_err(format!(
                        "belongs to cluster `{stored_cluster}`, not `{wanted}`"
                    )));
                }
            }
            if stored_node != config.node_id {
                return Err(dir_err(format!(
                    "belongs to node {stored_node}, not node {}",
                    config.node_id
                )));
            }
            Ok(stored_cluster)
        } else {
            let cluster_id = config
                .cluster_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
            let text = format!(
                "# Strait broker identity\nversion=1\ncluster.id={cluster_id}\nnode.id={}\n",
                config.node_id
            );
            write_atomic(&path, text.as_bytes())
                .map_err(|e| dir_err(format!("cannot write meta.properties: {e}")))?;
            Ok(cluster_id)
        }
    }

    fn load_producer_ids(dir: &Path) -> Result<ProducerIdBlock, BrokerError> {
        let path = dir.join("producer-ids");
        let next = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|_| {
                BrokerError::DataDir(dir.to_path_buf(), "producer-ids is corrupt".into())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(BrokerError::io("reading producer-ids")(e)),
        };
        // The stored value is the end of the last block handed out: start a fresh block there.
        Ok(ProducerIdBlock { next, end: next })
    }

    /// A new producer id, unique across restarts: blocks of ids are reserved on disk first.
    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let mut block = self.producer_ids.lock().unwrap_or_else(|p| p.into_inner());
        if block.next >= block.end {
            let end = block.end + PRODUCER_ID_BLOCK;
            write_atomic(
                &self.config.data_dir.join("producer-ids"),
                format!("{end}\n").as_bytes(),
            )
            .map_err(BrokerError::io("reserving producer ids"))?;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    fn purge_deleted(dir: &Path) {
        let deleted = dir.join("deleted");
        if deleted.exists() {
            if let Err(e) = fs::remove_dir_all(&deleted) {
                tracing::warn!(error = %e, "could not purge deleted topics");
            }
        }
    }

    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }

    fn load_topics(&self) -> Result<(), BrokerError> {
        let topics_dir = self.topics_dir();
        let entries = fs::read_dir(&topics_dir).map_err(BrokerError::io("listing topics"))?;
        let mut loaded = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(BrokerError::io("listing topics"))?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let props_path = dir.join("topic.properties");
            if !props_path.exists() {
                // A creation that crashed (or failed) before its commit point: never visible
                // to clients, so it is set aside rather than served or treated as fatal.
                let graveyard = self.config.data_dir.join("deleted");
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target =
                    graveyard.join(format!("{name}-incomplete-{}", Uuid::new_v4().simple()));
                tracing::warn!(path = %dir.display(), "topic directory without topic.properties (an interrupted creation): removing it");
                fs::create_dir_all(&graveyard)
                    .and_then(|_| fs::rename(&dir, &target))
                    .map_err(BrokerError::io(format!("setting aside {}", dir.display())))?;
                continue;
            }
            let text = fs::read_to_string(&props_path).map_err(|e| {
                BrokerError::DataDir(
                    self.config.data_dir.clone(),
                    format!("cannot read {}: {e}", props_path.display()),
                )
            })?;
            let props = parse_properties(&text);
            let corrupt = |what: &str| {
                BrokerError::DataDir(
                    self.config.data_dir.clone(),
                    format!("{}: {what}", props_path.display()),
                )
            };
            let mut name = None;
            let mut id = None;
            let mut count = None;
            let mut config = TopicConfig::default();
            let mut mirror_link = None;
            let mut source_cluster = None;
            let mut source_topic = None;
            for (k, v) in &props {
                match k.as_str() {
                    "name" => name = Some(v.clone()),
                    "mirror.link" => mirror_link = Some(v.clone()),
                    "mirror.source.cluster.id" => source_cluster = Some(v.clone()),
                    "mirror.source.topic.id" => {
                        source_topic = Some(
                            Uuid::parse_str(v)
                                .map_err(|_| corrupt("bad mirror.source.topic.id"))?,
                        )
                    }
                    "topic.id" => id = Uuid::parse_str(v).ok(),
                    "partitions" => count = v.parse::<i32>().ok(),
                    _ => {
                        if let Some(cfg) = k.strip_prefix("config.") {
                            config
                                .set(cfg, v)
                                .map_err(|e| corrupt(&format!("bad config: {e}")))?;
                        }
                    }
                }
            }
            let name = name.ok_or_else(|| corrupt("no name"))?;
            let id = id.ok_or_else(|| corrupt("no valid topic.id"))?;
            let count = count
                .filter(|c| *c >= 1)
                .ok_or_else(|| corrupt("no valid partitions"))?;
            let mut partitions = Vec::with_capacity(count as usize);
            for index in 0..count {
                let p = Partition::open(&name, index, &dir.join(index.to_string()), &config)?;
                partitions.push(Arc::new(p));
            }
            loaded.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    id,
                    dir,
                    config: RwLock::new(config),
                    partitions: RwLock::new(partitions),
                    mirror_link: RwLock::new(mirror_link),
                    mirror_source: RwLock::new(source_cluster.zip(source_topic).map(
                        |(cluster_id, topic_id)| MirrorSource {
                            cluster_id,
                            topic_id,
                        },
                    )),
                }),
            );
        }
        *self.topics.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, BrokerError> {
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        t.partition(index)
            .ok_or_else(|| BrokerError::UnknownPartition(topic.to_string(), index))
    }

    /// Checks a creation request without creating anything.
    pub fn validate_new_topic(&self, t: &NewTopic) -> Result<(), BrokerError> {
        validate_topic_name(&t.name)?;
        if t.partitions < 1 || t.partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                t.partitions
            )));
        }
        if self.topic(&t.name).is_some() {
            return Err(BrokerError::TopicExists(t.name.clone()));
        }
        Ok(())
    }

    /// Creates a topic: directories, partition logs, then the metadata file (the commit point).
    pub fn create_topic(&self, t: NewTopic) -> Result<Arc<Topic>, BrokerError> {
        self.create_topic_inner(t, None)
    }

    /// Creates a mirror topic of `link`: read-only to producers, filled by the link.
    pub fn create_mirror_topic(&self, t: NewTopic, link: &str) -> Result<Arc<Topic>, BrokerError> {
        self.create_topic_inner(t, Some(link))
    }

    /// Makes a mirror topic an ordinary, writable topic (the link stops feeding it) or, with
    /// `Some(link)`, marks a topic as a mirror of `link`. Persisted before it returns.
    pub fn set_mirror_link(&self, name: &str, link: Option<&str>) -> Result<(), BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let previous = std::mem::replace(
            &mut *topic.mirror_link.write().unwrap_or_else(|p| p.into_inner()),
            link.map(str::to_string),
        );
        if let Err(e) = topic.persist() {
            *topic.mirror_link.write().unwrap_or_else(|p| p.into_inner()) = previous;
            return Err(e);
        }
        Ok(())
    }

    /// Records (or with `None` forgets) the source topic a mirror topic follows. Persisted
    /// before it returns.
    pub fn set_mirror_source(
        &self,
        name: &str,
        source: Option<MirrorSource>,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let previous = std::mem::replace(
            &mut *topic
                .mirror_source
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            source,
        );
        if let Err(e) = topic.persist() {
            *topic
                .mirror_source
                .write()
                .unwrap_or_else(|p| p.into_inner()) = previous;
            return Err(e);
        }
        Ok(())
    }

    fn create_topic_inner(
        &self,
        t: NewTopic,
        mirror_link: Option<&str>,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.validate_new_topic(&t)?;
        let dir = self.topics_dir().join(&t.name);
        if dir.exists() {
            // Left over from a creation that crashed before its metadata file was written.
            fs::remove_dir_all(&dir).map_err(BrokerError::io("removing stale topic dir"))?;
        }
        let built = (|| {
            fs::create_dir_all(&dir).map_err(BrokerError::io("creating topic dir"))?;
            let mut partitions = Vec::with_capacity(t.partitions as usize);
            for index in 0..t.partitions {
                let p = Partition::open(&t.name, index, &dir.join(index.to_string()), &t.config)?;
                partitions.push(Arc::new(p));
            }
            let topic = Arc::new(Topic {
                name: t.name.clone(),
                id: Uuid::new_v4(),
                dir: dir.clone(),
                config: RwLock::new(t.config.clone()),
                partitions: RwLock::new(partitions),
                mirror_link: RwLock::new(mirror_link.map(str::to_string)),
                mirror_source: RwLock::new(None),
            });
            topic.persist()?;
            sync_dir(&self.topics_dir()).map_err(BrokerError::io("syncing topics dir"))?;
            Ok(topic)
        })();
        let topic = match built {
            Ok(topic) => topic,
            Err(e) => {
                // Nothing was committed (topic.properties is the commit point): undo it all.
                tracing::warn!(topic = %t.name, error = %e, "topic creation failed; removing its files");
                if let Err(rm) = fs::remove_dir_all(&dir) {
                    tracing::warn!(path = %dir.display(), error = %rm, "could not remove a failed topic's files");
                }
                return Err(e);
            }
        };
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t.name.clone(), topic.clone());
        tracing::info!(topic = %t.name, partitions = t.partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic: it disappears at once; its files are removed in the background.
    pub fn delete_topic(&self, name: &str) -> Result<Uuid, BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        for p in topic.partitions() {
            p.fail("topic deleted".into());
        }
        let graveyard = self.config.data_dir.join("deleted");
        fs::create_dir_all(&graveyard).map_err(BrokerError::io("creating deleted dir"))?;
        let target = graveyard.join(format!("{}-{}", name, topic.id.simple()));
        fs::rename(&topic.dir, &target).map_err(BrokerError::io("moving deleted topic"))?;
        sync_dir(&self.topics_dir()).map_err(BrokerError::io("syncing topics dir"))?;
        match self.groups.offsets.delete_topic(name) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(topic = %name, offsets = n, "removed committed offsets of the deleted topic")
            }
            Err(e) => {
                tracing::error!(topic = %name, error = %e, "could not remove committed offsets")
            }
        }
        std::thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&target) {
                tracing::warn!(error = %e, path = %target.display(), "could not remove deleted topic files");
            }
        });
        tracing::info!(topic = %name, "deleted topic");
        Ok(topic.id)
    }

    /// Grows a topic to `count` partitions.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic `{name}` has {current} partitions; the new count {count} must be larger"
            )));
        }
        if count > MAX_PARTITIONS {
            return Err(BrokerError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS} partitions per topic"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let config = topic.config();
        let mut added = Vec::new();
        for index in current..count {
            let p = Partition::open(name, index, &topic.dir.join(index.to_string()), &config)?;
            added.push(Arc::new(p));
        }
        topic
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(added);
        topic.persist()?;
        tracing::info!(topic = %name, from = current, to = count, "added partitions");
        Ok(())
    }

    /// Replaces a topic's config (already validated) and applies it to every partition log.
    pub fn set_topic_config(&self, name: &str, config: TopicConfig) -> Result<(), BrokerError> {
        let _admin = self.admin_lock.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        *topic.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        for p in topic.partitions() {
            p.set_config(&config);
        }
        topic.persist()
    }

    /// One pass of retention (and producer-state snapshots) over every partition.
    pub fn enforce_retention(&self) {
        let now = now_ms();
        for topic in self.topics() {
            for p in topic.partitions() {
                p.enforce_retention(now);
                if p.check_online().is_ok() {
                    if let Err(e) = p.write_snapshot() {
                        tracing::warn!(partition = %p.name(), error = %e, "producer-state snapshot failed");
                    }
                }
            }
        }
    }

    /// Starts retention and (for `interval:MS`) the periodic fsync. Runs until the process ends.
    pub fn spawn_background_tasks(self: &Arc<Self>) {
        self.groups.spawn_timers();
        crate::txn::spawn_timers(self);
        let broker = self.clone();
        let every = self.config.retention_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let b = broker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || b.enforce_retention()).await {
                    tracing::error!(error = %e, "retention task failed");
                }
            }
        });
        if let FsyncPolicy::Interval(every) = self.config.fsync {
            let broker = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    broker.sync_all_dirty().await;
                }
            });
        }
    }

    async fn sync_all_dirty(&self) {
        for topic in self.topics() {
            for p in topic.partitions() {
                p.sync_if_dirty(&self.data_arrived).await;
            }
        }
    }

    /// Clean shutdown: fsync and close every partition log.
    pub fn shutdown(&self) -> Result<(), BrokerError> {
        // Partitions close independently (each fsyncs its own files): do it on a few threads,
        // so a broker with thousands of partitions stops in about a second.
        let partitions: Vec<Arc<Partition>> =
            self.topics().iter().flat_map(|t| t.partitions()).collect();
        let workers = 8.min(partitions.len().max(1));
        let chunk = partitions.len().div_ceil(workers).max(1);
        let errors: Vec<BrokerError> = std::thread::scope(|scope| {
            let handles: Vec<_> = partitions
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .filter_map(|p| p.close().err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for e in &errors {
            tracing::error!(error = %e, "closing partition failed");
        }
        let first_error = errors.into_iter().next();
        if let Err(e) = self.txns.flush() {
            tracing::error!(error = %e, "flushing transaction state failed");
        }
        if let Err(e) = self.groups.offsets.flush() {
            tracing::error!(error = %e, "flushing group offsets failed");
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Mirror path, before anything is stored: every batch copied from a source must be as sound
/// as a produced batch (header, CRC, and every record, with the offset rules of a log that
/// compaction may have thinned). This is the destination's half of a pair assertion: the
/// source checked its producers' batches the same way, and a source that did not (a foreign
/// Kafka cluster, a bug) cannot write a broken batch here.
///
/// Returns the length of the valid prefix of `batches` and, if a batch failed, its base
/// offset (when its header could be read) and why.
fn check_mirrored_records(batches: &[u8]) -> (usize, Option<(Option<i64>, BrokerError)>) {
    let mut valid = 0;
    let mut iter = batch::Batches::new(batches);
    for batch in &mut iter {
        let checked = batch.map_err(BrokerError::from).and_then(|batch| {
            batch::validate(batch)?;
            records::validate_records(batch, BatchOrigin::Mirror, DEFAULT_MAX_DECOMPRESSED)?;
            Ok(batch.len())
        });
        match checked {
            Ok(len) => valid += len,
            Err(e) => {
                let offset = batches
                    .get(valid..)
                    .and_then(|rest| batch::BatchHeader::parse(rest).ok())
                    .map(|h| h.base_offset);
                return (valid, Some((offset, e)));
            }
        }
    }
    (valid, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_batches::build;

    /// A broker on `dir` (also used by the tests of `broker::mirror`).
    pub(super) fn open(dir: &Path) -> Arc<Broker> {
        Broker::open(BrokerConfig::new(
            dir.to_path_buf(),
            "127.0.0.1".into(),
            9092,
        ))
        .unwrap()
    }

    /// An idempotent batch of one record from producer `pid` with sequence `seq`.
    fn idempotent_batch(pid: i64, seq: i32) -> Vec<u8> {
        let plain = build(&[b"v"], 1);
        let mut h = BatchHeader::parse(&plain).unwrap();
        h.producer_id = pid;
        h.producer_epoch = 0;
        h.base_sequence = seq;
        batch::assemble(&h, &plain[batch::HEADER_LEN..])
    }

    #[tokio::test]
    async fn dedup_survives_restart_with_and_without_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TopicConfig::default();
        for round in 0..3 {
            let b = open(dir.path());
            if round == 0 {
                b.create_topic(NewTopic {
                    name: "t".into(),
                    partitions: 1,
                    config: cfg.clone(),
                })
                .unwrap();
            }
            let p = b.partition("t", 0).unwrap();
            // round r appends sequences 2r, 2r+1; then retries 2r (a duplicate)
            for seq in [2 * round, 2 * round + 1] {
                let out = p
                    .append_produced(
                        idempotent_batch(7, seq),
                        &cfg,
                        FsyncPolicy::Always,
                        &b.data_arrived,
                    )
                    .unwrap();
                assert!(!out.duplicate);
                assert_eq!(out.base_offset, seq as i64);
            }
            let retry = p
                .append_produced(
                    idempotent_batch(7, 2 * round),
                    &cfg,
                    FsyncPolicy::Always,
                    &b.data_arrived,
                )
                .unwrap();
            assert!(retry.duplicate);
            assert_eq!(retry.base_offset, 2 * round as i64);
            if round == 1 {
                // a corrupt snapshot is ignored (state comes from the log)
                b.shutdown().unwrap();
                let snaps: Vec<_> = std::fs::read_dir(p.lock().log.dir())
                    .unwrap()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
                    .collect();
                assert!(!snaps.is_empty(), "clean shutdown writes a snapshot");
                for s in snaps {
                    std::fs::write(s, b"garbage").unwrap();
                }
            } else {
                b.shutdown().unwrap();
            }
            drop(p);
            drop(b);
        }
        // after the restarts, a retry of an old batch is still a duplicate, a gap is refused
        let b = open(dir.path());
        let p = b.partition("t", 0).unwrap();
        let retry = p
            .append_produced(
                idempotent_batch(7, 5),
                &cfg,
                FsyncPolicy::Always,
                &b.data_arrived,
            )
            .unwrap();
        assert!(retry.duplicate);
        assert!(matches!(
            p.append_produced(
                idempotent_batch(7, 9),
                &cfg,
                FsyncPolicy::Always,
                &b.data_arrived
            ),
            Err(BrokerError::OutOfOrderSequence {
                expected: 6,
                got: 9
            })
        ));
    }

    #[test]
    fn an_interrupted_topic_creation_does_not_block_start() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        // partition dirs exist, the commit point (topic.properties) was never written
        std::fs::create_dir_all(dir.path().join("topics/half/0")).unwrap();
        let b = open(dir.path());
        assert!(b.topic("half").is_none());
        assert!(!dir.path().join("topics/half").exists());
        b.create_topic(NewTopic {
            name: "half".into(),
            partitions: 1,
            config: TopicConfig::default(),
        })
        .unwrap();
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a/b", "ä", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn create_append_restart_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        let cluster = b.cluster_id.clone();
        b.create_topic(NewTopic {
            name: "t".into(),
            partitions: 2,
            config: TopicConfig::default(),
        })
        .unwrap();
        assert!(matches!(
            b.create_topic(NewTopic {
                name: "t".into(),
                partitions: 1,
                config: TopicConfig::default()
            }),
            Err(BrokerError::TopicExists(_))
        ));
        let p = b.partition("t", 1).unwrap();
        let cfg = TopicConfig::default();
        let out = p
            .append_produced(
                build(&[b"a", b"b"], 1),
                &cfg,
                FsyncPolicy::Always,
                &b.data_arrived,
            )
            .unwrap();
        assert_eq!((out.base_offset, out.end_offset), (0, 2));
        assert_eq!(p.high_watermark(), 0, "not visible before it is durable");
        p.wait_durable(out.end_offset, FsyncPolicy::Always, &b.data_arrived)
            .await
            .unwrap();
        assert_eq!(p.high_watermark(), 2);
        let pid = b.allocate_producer_id().unwrap();
        b.shutdown().unwrap();
        drop(p);
        drop(b);
        let b = open(dir.path());
        assert_eq!(b.cluster_id, cluster);
        assert_eq!(b.partition("t", 1).unwrap().offsets().log_end_offset, 2);
        assert!(b.allocate_producer_id().unwrap() > pid);
        // a second broker on the same dir is refused
        assert!(matches!(
            Broker::open(BrokerConfig::new(dir.path().into(), "h".into(), 1)),
            Err(BrokerError::DataDir(..))
        ));
    }

    #[tokio::test]
    async fn mirrored_batches_keep_offsets_skip_resends_and_follow_transactions() {
        let src_dir = tempfile::tempdir().unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let cfg = TopicConfig::default();
        let src = open(src_dir.path());
        let dst = open(dst_dir.path());
        let new = || NewTopic {
            name: "m".into(),
            partitions: 1,
            config: cfg.clone(),
        };
        src.create_topic(new()).unwrap();
        dst.create_mirror_topic(new(), "east-west").unwrap();
        let sp = src.partition("m", 0).unwrap();
        for i in 0..10 {
            let v = format!("v{i}");
            sp.append_produced(
                build(&[v.as_bytes()], i),
                &cfg,
                FsyncPolicy::Never,
                &src.data_arrived,
            )
            .unwrap();
        }
        // An open transaction at the end of the source log.
        let mut h = BatchHeader::parse(&idempotent_batch(9, 0)).unwrap();
        h.attributes |= 0x10; // transactional
        let txn = batch::assemble(&h, &idempotent_batch(9, 0)[batch::HEADER_LEN..]);
        sp.append_produced(txn, &cfg, FsyncPolicy::Never, &src.data_arrived)
            .unwrap();
        let (bytes, _) = sp.read(0, 1 << 20, false).unwrap();
        let dp = dst.partition("m", 0).unwrap();
        let first = dp
            .append_mirrored(&bytes, FsyncPolicy::Never, &dst.data_arrived)
            .unwrap();
        assert_eq!(first.appended_batches, 11);
        assert_eq!(first.end_offset, 11);
        let (copied, _) = dp.read(0, 1 << 20, false).unwrap();
        assert_eq!(copied, bytes, "the mirror stores the source's bytes");
        // Resending everything (a reconnect) appends nothing.
        let again = dp
            .append_mirrored(&bytes, FsyncPolicy::Never, &dst.data_arrived)
            .unwrap();
        assert_eq!((again.appended_batches, again.skipped_batches), (0, 11));
        // The open transaction holds the last stable offset on the mirror as on the source.
        assert_eq!(dp.offsets().last_stable_offset, 10);
        assert_eq!(sp.offsets().last_stable_offset, 10);
        // A gap is refused.
        let (tail, _) = sp.read(5, 1 << 20, false).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let other = open(fresh.path());
        other.create_mirror_topic(new(), "x").unwrap();
        let op = other.partition("m", 0).unwrap();
        assert!(op
            .append_mirrored(&tail, FsyncPolicy::Never, &other.data_arrived)
            .is_err());
        // ... unless the log restarts at the source's start (retention there).
        op.reset_for_mirror(5, &other.data_arrived).unwrap();
        op.append_mirrored(&tail, FsyncPolicy::Never, &other.data_arrived)
            .unwrap();
        assert_eq!(op.offsets().log_start_offset, 5);
        assert_eq!(op.offsets().log_end_offset, 11);
    }

    /// `good` with its recordsCount raised by one and the CRC fixed: a batch that lies.
    fn lying_count(good: &[u8]) -> Vec<u8> {
        let mut h = BatchHeader::parse(good).unwrap();
        h.records_count += 1;
        h.last_offset_delta += 1;
        batch::assemble(&h, &good[batch::HEADER_LEN..])
    }

    #[tokio::test]
    async fn batches_with_malformed_records_are_refused_on_both_paths_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TopicConfig::default();
        let b = open(dir.path());
        let new = |name: &str| NewTopic {
            name: name.into(),
            partitions: 1,
            config: cfg.clone(),
        };
        b.create_topic(new("p")).unwrap();
        b.create_mirror_topic(new("m"), "east-west").unwrap();
        let p = b.partition("p", 0).unwrap();
        let good = build(&[b"a", b"bb"], 1);
        let lying = lying_count(&good);
        assert!(
            batch::validate_produced(&lying).is_ok(),
            "header and CRC are fine"
        );

        // Produce: refused with the record at fault, nothing stored, the next batch is fine.
        let e = p
            .append_produced(lying.clone(), &cfg, FsyncPolicy::Never, &b.data_arrived)
            .unwrap_err();
        match &e {
            BrokerError::InvalidRecords(r) => assert_eq!(r.record_index(), Some(2), "{e}"),
            other => panic!("want InvalidRecords, got {other:?}"),
        }
        assert_eq!(p.offsets().log_end_offset, 0);
        let out = p
            .append_produced(good.clone(), &cfg, FsyncPolicy::Never, &b.data_arrived)
            .unwrap();
        assert_eq!((out.base_offset, out.end_offset), (0, 2));

        // Mirror: of a good batch, a lying one and another good one, only the first is stored,
        // and the refusal says where and why.
        let m = b.partition("m", 0).unwrap();
        let mut second = lying.clone();
        batch::stamp_offset_and_epoch(&mut second, 2, 0);
        let mut third = good.clone();
        batch::stamp_offset_and_epoch(&mut third, 5, 0);
        let frame = [good.clone(), second, third].concat();
        let r = m
            .append_mirrored(&frame, FsyncPolicy::Never, &b.data_arrived)
            .unwrap();
        assert_eq!((r.appended_batches, r.end_offset), (1, 2), "{r:?}");
        let refused = r.refused.expect("the lying batch is refused");
        assert_eq!(refused.offset, 2, "{refused:?}");
        assert!(refused.reason.contains("record 2 of 3"), "{refused:?}");
        assert_eq!(
            m.offsets().log_end_offset,
            2,
            "nothing from the lying batch on"
        );
        // A frame that starts with the refused batch stores nothing.
        let r = m
            .append_mirrored(&frame[good.len()..], FsyncPolicy::Never, &b.data_arrived)
            .unwrap();
        assert_eq!((r.appended_batches, r.end_offset), (0, 2), "{r:?}");
        assert!(r.refused.is_some());
    }

    #[tokio::test]
    async fn mirror_topics_are_read_only_until_promoted_and_remember_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TopicConfig::default();
        {
            let b = open(dir.path());
            let t = b
                .create_mirror_topic(
                    NewTopic {
                        name: "m".into(),
                        partitions: 2,
                        config: cfg.clone(),
                    },
                    "east-west",
                )
                .unwrap();
            let err = t.check_writable().unwrap_err();
            assert!(err.to_string().contains("east-west"), "{err}");
            b.shutdown().unwrap();
        }
        let b = open(dir.path());
        let t = b.topic("m").unwrap();
        assert_eq!(t.mirror_link().as_deref(), Some("east-west"));
        b.set_mirror_link("m", None).unwrap();
        assert!(t.check_writable().is_ok());
        b.shutdown().unwrap();
        drop((t, b));
        let b = open(dir.path());
        assert!(b.topic("m").unwrap().mirror_link().is_none());
    }
}
