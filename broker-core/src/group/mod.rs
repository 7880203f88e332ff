//! The group coordinator: consumer-group membership ([`state`], a sans-IO state machine) and
//! committed offsets ([`offsets`], durable in sled), joined to the async world here.
//!
//! JoinGroup and SyncGroup park until the state machine answers them; this module keeps the
//! oneshot channel of every parked request and runs the timer that expires sessions and
//! rebalance timeouts, and the sweep that expires offsets of long-empty groups.

pub mod offsets;
pub mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::broker::now_ms;
use offsets::{CommittedOffset, OffsetStore, OffsetStoreError};
use state::{Answer, Delivery, Groups, JoinRequest, JoinResult, SyncResult, Token};

/// Default `offsets.retention.minutes` (7 days), as in Kafka.
pub const DEFAULT_OFFSETS_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const TICK: Duration = Duration::from_millis(50);

enum Parked {
    Join(oneshot::Sender<JoinResult>),
    Sync(oneshot::Sender<SyncResult>),
}

pub struct GroupCoordinator {
    groups: Mutex<Groups>,
    parked: Mutex<HashMap<Token, Parked>>,
    next_token: AtomicU64,
    pub offsets: OffsetStore,
    offsets_retention: Duration,
}

impl GroupCoordinator {
    pub fn open(dir: &Path, offsets_retention: Duration) -> Result<Self, OffsetStoreError> {
        Ok(GroupCoordinator {
            groups: Mutex::new(Groups::default()),
            parked: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            offsets: OffsetStore::open(dir)?,
            offsets_retention,
        })
    }

    pub fn groups(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn parked(&self) -> MutexGuard<'_, HashMap<Token, Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deliver(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut parked = self.parked();
        for d in deliveries {
            match d {
                Delivery::Join(t, r) => {
                    if let Some(Parked::Join(tx)) = parked.remove(&t) {
                        let _ = tx.send(r);
                    }
                }
                Delivery::Sync(t, r) => {
                    if let Some(Parked::Sync(tx)) = parked.remove(&t) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }

    fn token(&self) -> Token {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// JoinGroup: answers when the rebalance completes (or at once when it need not wait).
    pub async fn join(&self, req: JoinRequest) -> JoinResult {
        let token = self.token();
        let (tx, rx) = oneshot::channel();
        self.parked().insert(token, Parked::Join(tx));
        let member_id = req.member_id.clone();
        let (answer, deliveries) = self.groups().join(now_ms(), req, token);
        self.deliver(deliveries);
        match answer {
            Answer::Now(r) => {
                self.parked().remove(&token);
                r
            }
            Answer::Parked => rx.await.unwrap_or_else(|_| JoinResult {
                error: state::code::REBALANCE_IN_PROGRESS,
                generation: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id,
                members: Vec::new(),
            }),
        }
    }

    /// SyncGroup: answers when the leader has sent the assignment.
    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let token = self.token();
        let (tx, rx) = oneshot::channel();
        self.parked().insert(token, Parked::Sync(tx));
        let (answer, deliveries) = self.groups().sync(
            now_ms(),
            group_id,
            member_id,
            instance_id,
            generation,
            assignments,
            token,
        );
        self.deliver(deliveries);
        match answer {
            Answer::Now(r) => {
                self.parked().remove(&token);
                r
            }
            Answer::Parked => rx.await.unwrap_or_else(|_| SyncResult {
                error: state::code::REBALANCE_IN_PROGRESS,
                protocol_type: None,
                protocol_name: None,
                assignment: Bytes::new(),
            }),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        self.groups()
            .heartbeat(now_ms(), group_id, member_id, instance_id, generation)
    }

    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let (codes, deliveries) = self.groups().leave(now_ms(), group_id, members);
        self.deliver(deliveries);
        codes
    }

    /// Validates and durably stores a group's commits.
    pub fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        entries: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CommitError> {
        self.groups()
            .check_commit(group_id, member_id, instance_id, generation)
            .map_err(CommitError::Group)?;
        self.offsets
            .commit(group_id, entries)
            .map_err(CommitError::Store)
    }

    /// Deletes an empty group and its offsets.
    pub fn delete_group(&self, group_id: &str) -> Result<(), CommitError> {
        let has_offsets = !self
            .offsets
            .group_offsets(group_id)
            .map_err(CommitError::Store)?
            .is_empty();
        match self.groups().delete(group_id) {
            Ok(()) => {}
            Err(state::code::GROUP_ID_NOT_FOUND) if has_offsets => {}
            Err(code) => return Err(CommitError::Group(code)),
        }
        self.offsets
            .delete_group(group_id)
            .map_err(CommitError::Store)?;
        Ok(())
    }

    /// One timer step: sessions, rebalance timeouts.
    pub fn tick(&self) {
        let deliveries = self.groups().tick(now_ms());
        self.deliver(deliveries);
    }

    /// Removes offsets of groups that have had no members for `offsets_retention` since their
    /// last commit (Kafka's `offsets.retention.minutes`).
    pub fn expire_offsets(&self) {
        let now = now_ms();
        let Ok(names) = self.offsets.groups() else {
            return;
        };
        for name in names {
            if self
                .groups()
                .get(&name)
                .is_some_and(|g| g.member_count() > 0)
            {
                continue;
            }
            let Ok(entries) = self.offsets.group_offsets(&name) else {
                continue;
            };
            let last = entries
                .iter()
                .map(|(_, _, o)| o.commit_time_ms)
                .max()
                .unwrap_or(0);
            if now - last > self.offsets_retention.as_millis() as i64 {
                match self.offsets.delete_group(&name) {
                    Ok(n) => {
                        tracing::info!(group = %name, offsets = n, "expired offsets of an empty group")
                    }
                    Err(e) => tracing::error!(group = %name, error = %e, "offset expiry failed"),
                }
            }
        }
    }

    /// Runs the timers until the process ends.
    pub fn spawn_timers(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                me.tick();
                n += 1;
                if n.is_multiple_of(600) {
                    let c = me.clone();
                    let _ = tokio::task::spawn_blocking(move || c.expire_offsets()).await;
                }
            }
        });
    }
}

/// Why a commit or group deletion was refused.
#[derive(Debug)]
pub enum CommitError {
    /// A Kafka error code from the membership checks.
    Group(i16),
    Store(OffsetStoreError),
}
