//! The transaction coordinator: transactional ids, producer fencing, the two-phase end of a
//! transaction (prepare durably, write a marker into every partition, complete), transactional
//! offset commits, and timeouts.
//!
//! State is kept in memory and written to a sled tree (with fsync) at every transition that
//! matters for recovery. Marker writing goes through the partitions' normal append path, and
//! a transaction counts as complete only once every marker is durable.

pub mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;

use crate::batch::ControlType;
use crate::broker::{now_ms, Broker, BrokerError};
use crate::group::offsets::CommittedOffset;
use state::{PendingOffset, TxnMeta, TxnStatus};

/// Kafka's `transaction.max.timeout.ms`.
pub const MAX_TRANSACTION_TIMEOUT_MS: i32 = 900_000;
const TICK: Duration = Duration::from_millis(500);

/// Kafka error codes of the transaction APIs.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
}

#[derive(Debug, Error)]
pub enum TxnStoreError {
    #[error("transaction store: {0}")]
    Sled(#[from] sled::Error),
    #[error("transaction store entry `{0}` is corrupt")]
    Corrupt(String),
}

/// The work of ending a transaction: markers to write and offsets to apply.
#[derive(Debug, Clone)]
pub struct EndPlan {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub commit: bool,
    pub partitions: Vec<(String, i32)>,
    pub pending_offsets: Vec<PendingOffset>,
}

/// What InitProducerId needs to do.
pub enum InitOutcome {
    Ready {
        producer_id: i64,
        epoch: i16,
    },
    Error(i16),
    /// An open transaction must be aborted (with the new epoch) before answering.
    AbortFirst(EndPlan),
}

pub struct TxnCoordinator {
    metas: Mutex<HashMap<String, TxnMeta>>,
    db: sled::Db,
    tree: sled::Tree,
}

impl TxnCoordinator {
    pub fn open(dir: &Path) -> Result<Self, TxnStoreError> {
        let db = crate::fsutil::open_sled(&sled::Config::new().path(dir).cache_capacity(16 << 20))?;
        let tree = db.open_tree("transactions")?;
        let mut metas = HashMap::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let meta = TxnMeta::decode(&v).ok_or_else(|| TxnStoreError::Corrupt(id.clone()))?;
            metas.insert(id, meta);
        }
        Ok(TxnCoordinator {
            metas: Mutex::new(metas),
            db,
            tree,
        })
    }

    fn metas(&self) -> MutexGuard<'_, HashMap<String, TxnMeta>> {
        self.metas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durably stores one record (called with the lock held, so transitions are ordered).
    fn persist(&self, meta: &TxnMeta) -> Result<(), i16> {
        self.store(meta, true)
    }

    /// Stores one record; `fsync` false leaves it to sled's background flush (used only where
    /// losing the write is harmless: a lost "complete" just makes a restart rewrite markers).
    fn store(&self, meta: &TxnMeta, fsync: bool) -> Result<(), i16> {
        let result = self
            .tree
            .insert(meta.transactional_id.as_bytes(), meta.encode())
            .and_then(|_| {
                if fsync {
                    self.db.flush().map(|_| ())
                } else {
                    Ok(())
                }
            });
        result.map_err(|e| {
            tracing::error!(error = %e, "transaction store write failed");
            code::COORDINATOR_NOT_AVAILABLE
        })
    }

    /// Checks that `producer_id`/`epoch` own `meta`.
    fn check_owner(meta: &TxnMeta, producer_id: i64, epoch: i16, fenced: i16) -> Result<(), i16> {
        if meta.producer_id != producer_id {
            return Err(code::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch < meta.epoch {
            return Err(fenced);
        }
        if epoch > meta.epoch {
            return Err(code::INVALID_PRODUCER_EPOCH);
        }
        Ok(())
    }

    /// InitProducerId with a transactional id. `expected` is the (producer id, epoch) a KIP-360
    /// client sends to resume, or None.
    pub fn init_producer_id(
        &self,
        broker: &Broker,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fenced: i16,
    ) -> InitOutcome {
        if timeout_ms <= 0 || timeout_ms > MAX_TRANSACTION_TIMEOUT_MS {
            return InitOutcome::Error(code::INVALID_TRANSACTION_TIMEOUT);
        }
        let now = now_ms();
        let mut metas = self.metas();
        let Some(meta) = metas.get_mut(transactional_id) else {
            let producer_id = match broker.allocate_producer_id() {
                Ok(id) => id,
                Err(_) => return InitOutcome::Error(code::COORDINATOR_NOT_AVAILABLE),
            };
            let meta = TxnMeta::new(transactional_id, producer_id, timeout_ms, now);
            if let Err(c) = self.persist(&meta) {
                return InitOutcome::Error(c);
            }
            metas.insert(transactional_id.to_string(), meta);
            return InitOutcome::Ready {
                producer_id,
                epoch: 0,
            };
        };
        if let Some((pid, epoch)) = expected {
            if pid != meta.producer_id || epoch != meta.epoch {
                return InitOutcome::Error(fenced);
            }
        }
        if meta.status.is_prepare() {
            return InitOutcome::Error(code::CONCURRENT_TRANSACTIONS);
        }
        // Bump the epoch: every older producer with this id is fenced from now on.
        if meta.epoch >= i16::MAX - 1 {
            match broker.allocate_producer_id() {
                Ok(id) => {
                    meta.producer_id = id;
                    meta.epoch = 0;
                }
                Err(_) => return InitOutcome::Error(code::COORDINATOR_NOT_AVAILABLE),
            }
        } else {
            meta.epoch += 1;
        }
        meta.timeout_ms = timeout_ms;
        meta.last_update_ms = now;
        let outcome = if meta.status == TxnStatus::Ongoing {
            meta.status = TxnStatus::PrepareAbort;
            InitOutcome::AbortFirst(plan_of(meta, false))
        } else {
            meta.status = TxnStatus::Empty;
            InitOutcome::Ready {
                producer_id: meta.producer_id,
                epoch: meta.epoch,
            }
        };
        if let Err(c) = self.persist(meta) {
            return InitOutcome::Error(c);
        }
        outcome
    }

    /// AddPartitionsToTxn: per-partition error codes, in order.
    pub fn add_partitions(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        fenced: i16,
    ) -> Vec<i16> {
        let all = |c: i16| vec![c; partitions.len()];
        let unknown: Vec<bool> = partitions
            .iter()
            .map(|(t, p)| broker.partition(t, *p).is_err())
            .collect();
        if unknown.iter().any(|u| *u) {
            return unknown
                .iter()
                .map(|u| {
                    if *u {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code::OPERATION_NOT_ATTEMPTED
                    }
                })
                .collect();
        }
        let code = self.join_transaction(transactional_id, producer_id, epoch, fenced, |meta| {
            meta.partitions.extend(partitions.iter().cloned())
        });
        all(code)
    }

    /// Adds to the producer's transaction (starting it if none is open) and stores it durably.
    fn join_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        fenced: i16,
        add: impl FnOnce(&mut TxnMeta),
    ) -> i16 {
        let mut metas = self.metas();
        let Some(meta) = metas.get_mut(transactional_id) else {
            return code::INVALID_PRODUCER_ID_MAPPING;
        };
        if let Err(c) = Self::check_owner(meta, producer_id, epoch, fenced) {
            return c;
        }
        if meta.status.is_prepare() {
            return code::CONCURRENT_TRANSACTIONS;
        }
        let now = now_ms();
        if meta.status != TxnStatus::Ongoing {
            meta.status = TxnStatus::Ongoing;
            meta.start_ms = now;
        }
        meta.last_update_ms = now;
        add(meta);
        match self.persist(meta) {
            Ok(()) => code::NONE,
            Err(c) => c,
        }
    }

    /// AddOffsetsToTxn: the group's offsets will be committed with the transaction.
    pub fn add_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        fenced: i16,
    ) -> i16 {
        self.join_transaction(transactional_id, producer_id, epoch, fenced, |meta| {
            meta.groups.insert(group.to_string());
        })
    }

    /// TxnOffsetCommit: offsets that become visible only if the transaction commits.
    pub fn add_pending_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        entries: Vec<(String, i32, CommittedOffset)>,
        fenced: i16,
    ) -> i16 {
        let mut metas = self.metas();
        let Some(meta) = metas.get_mut(transactional_id) else {
            return code::INVALID_PRODUCER_ID_MAPPING;
        };
        if let Err(c) = Self::check_owner(meta, producer_id, epoch, fenced) {
            return c;
        }
        if meta.status != TxnStatus::Ongoing || !meta.groups.contains(group) {
            return code::INVALID_TXN_STATE;
        }
        for (topic, partition, offset) in entries {
            meta.pending_offsets
                .retain(|p| !(p.group == group && p.topic == topic && p.partition == partition));
            meta.pending_offsets.push(PendingOffset {
                group: group.to_string(),
                topic,
                partition,
                offset,
            });
        }
        meta.last_update_ms = now_ms();
        match self.persist(meta) {
            Ok(()) => code::NONE,
            Err(c) => c,
        }
    }

    /// Whether an open transaction holds uncommitted offsets for this group partition.
    pub fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.metas().values().any(|m| {
            m.status == TxnStatus::Ongoing
                && m.pending_offsets
                    .iter()
                    .any(|p| p.group == group && p.topic == topic && p.partition == partition)
        })
    }

    /// Checks that a transactional batch belongs to an open transaction that added this
    /// partition (so no marker can be missing for it later).
    pub fn check_produce(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), i16> {
        let metas = self.metas();
        let meta = metas
            .get(transactional_id)
            .ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        Self::check_owner(meta, producer_id, epoch, code::INVALID_PRODUCER_EPOCH)?;
        if meta.status != TxnStatus::Ongoing
            || !meta.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(code::INVALID_TXN_STATE);
        }
        Ok(())
    }

    /// EndTxn, phase one: durably move to PrepareCommit/PrepareAbort. Ok(None) means the
    /// transaction already ended that way (a retried EndTxn).
    pub fn prepare_end(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        fenced: i16,
    ) -> Result<Option<EndPlan>, i16> {
        let mut metas = self.metas();
        let meta = metas
            .get_mut(transactional_id)
            .ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        Self::check_owner(meta, producer_id, epoch, fenced)?;
        match (meta.status, commit) {
            (TxnStatus::Ongoing, _) => {}
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                return Ok(None)
            }
            (TxnStatus::PrepareCommit, _) | (TxnStatus::PrepareAbort, _) => {
                return Err(code::CONCURRENT_TRANSACTIONS)
            }
            _ => return Err(code::INVALID_TXN_STATE),
        }
        meta.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        meta.last_update_ms = now_ms();
        self.persist(meta)?;
        Ok(Some(plan_of(meta, commit)))
    }

    /// EndTxn, phase two done: every marker is durable.
    fn complete_end(&self, transactional_id: &str, commit: bool) {
        let mut metas = self.metas();
        if let Some(meta) = metas.get_mut(transactional_id) {
            meta.status = if commit {
                TxnStatus::CompleteCommit
            } else {
                TxnStatus::CompleteAbort
            };
            meta.partitions.clear();
            meta.groups.clear();
            meta.pending_offsets.clear();
            meta.start_ms = -1;
            meta.last_update_ms = now_ms();
            let _ = self.store(meta, false);
        }
    }

    /// Transactions that ran past their timeout: their epoch is bumped (fencing the producer)
    /// and they are moved to PrepareAbort.
    fn expire(&self, now: i64) -> Vec<EndPlan> {
        let mut plans = Vec::new();
        let mut metas = self.metas();
        for meta in metas.values_mut() {
            if meta.status == TxnStatus::Ongoing
                && meta.start_ms >= 0
                && now - meta.start_ms > meta.timeout_ms as i64
            {
                tracing::warn!(
                    transactional_id = %meta.transactional_id,
                    timeout_ms = meta.timeout_ms,
                    "transaction timed out: aborting and fencing its producer"
                );
                meta.epoch = meta.epoch.saturating_add(1);
                meta.status = TxnStatus::PrepareAbort;
                meta.last_update_ms = now;
                if self.persist(meta).is_ok() {
                    plans.push(plan_of(meta, false));
                }
            }
        }
        plans
    }

    /// Transactions a crash left between prepare and complete.
    fn unfinished(&self) -> Vec<EndPlan> {
        self.metas()
            .values()
            .filter(|m| m.status.is_prepare())
            .map(|m| plan_of(m, m.status == TxnStatus::PrepareCommit))
            .collect()
    }

    /// A snapshot of every transaction (ListTransactions, DescribeTransactions).
    pub fn snapshot(&self) -> Vec<TxnMeta> {
        let mut v: Vec<TxnMeta> = self.metas().values().cloned().collect();
        v.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        v
    }

    pub fn flush(&self) -> Result<(), TxnStoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn plan_of(meta: &TxnMeta, commit: bool) -> EndPlan {
    EndPlan {
        transactional_id: meta.transactional_id.clone(),
        producer_id: meta.producer_id,
        epoch: meta.epoch,
        commit,
        partitions: meta.partitions.iter().cloned().collect(),
        pending_offsets: meta.pending_offsets.clone(),
    }
}

/// EndTxn, phase two: write a marker into every partition of the transaction, wait until all
/// are durable, apply the transaction's offsets if it commits, then mark it complete.
/// Returns a Kafka error code (0 on success).
pub async fn execute_end(broker: &Arc<Broker>, plan: EndPlan) -> i16 {
    let kind = if plan.commit {
        ControlType::Commit
    } else {
        ControlType::Abort
    };
    let fsync = broker.config.fsync;
    // Append every marker first, then wait for all of them: the fsyncs run in parallel.
    let mut written = Vec::with_capacity(plan.partitions.len());
    for (topic, index) in &plan.partitions {
        let partition = match broker.partition(topic, *index) {
            Ok(p) => p,
            Err(BrokerError::UnknownTopic(_)) | Err(BrokerError::UnknownPartition(..)) => {
                continue; // deleted since: nothing left to mark
            }
            Err(_) => return code::COORDINATOR_NOT_AVAILABLE,
        };
        let outcome = match partition.append_marker(
            plan.producer_id,
            plan.epoch,
            kind,
            &broker.data_arrived,
            fsync,
        ) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(topic = %topic, partition = index, error = %e, "writing a transaction marker failed");
                return code::COORDINATOR_NOT_AVAILABLE;
            }
        };
        partition.start_sync(fsync, &broker.data_arrived);
        written.push((partition, outcome.end_offset));
    }
    for (partition, end_offset) in written {
        if let Err(e) = partition
            .wait_durable(end_offset, fsync, &broker.data_arrived)
            .await
        {
            tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "transaction marker not durable");
            return code::COORDINATOR_NOT_AVAILABLE;
        }
    }
    if plan.commit && !plan.pending_offsets.is_empty() {
        let b = broker.clone();
        let offsets = plan.pending_offsets.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut by_group: HashMap<String, Vec<(String, i32, CommittedOffset)>> = HashMap::new();
            for p in offsets {
                by_group
                    .entry(p.group)
                    .or_default()
                    .push((p.topic, p.partition, p.offset));
            }
            by_group
                .iter()
                .try_for_each(|(g, entries)| b.groups.offsets.commit(g, entries))
        })
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::error!("applying transactional offsets failed");
            return code::COORDINATOR_NOT_AVAILABLE;
        }
    }
    broker
        .txns
        .complete_end(&plan.transactional_id, plan.commit);
    code::NONE
}

/// Finishes transactions a crash interrupted, then aborts timed-out ones every tick.
pub fn spawn_timers(broker: &Arc<Broker>) {
    let broker = broker.clone();
    tokio::spawn(async move {
        for plan in broker.txns.unfinished() {
            tracing::info!(transactional_id = %plan.transactional_id, commit = plan.commit, "finishing a transaction interrupted by a restart");
            execute_end(&broker, plan).await;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for plan in broker.txns.expire(now_ms()) {
                execute_end(&broker, plan).await;
            }
        }
    });
}
