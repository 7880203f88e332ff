//! Live figures of one link, updated by its tasks and read by `strait link status` and
//! `/metrics`: state, errors, byte counters, and per-partition source/destination offsets,
//! lag and throughput.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::mpsc;

use super::divergence::LinkRequest;
use super::AgentShared;
use crate::model::{LinkSpec, LinkState, LinkStatus, PartitionStatus};

/// Requests (verify) waiting for the link task at most; more are refused as busy.
const MAX_PENDING_REQUESTS: usize = 4;

/// Per-partition figures the destination keeps.
#[derive(Debug, Default)]
struct PartitionFigures {
    source_high_watermark: i64,
    /// Since when the destination has been behind the source (None: caught up).
    behind_since: Option<Instant>,
    bytes: u64,
    records: u64,
    /// Throughput over the last rate window.
    bytes_per_sec: f64,
    records_per_sec: f64,
    window_bytes: u64,
    window_records: u64,
    failure: Option<String>,
}

/// Everything a link's status shows; shared by its tasks (interior mutability, short locks).
#[derive(Debug)]
pub struct LinkShared {
    state: Mutex<LinkState>,
    last_error: Mutex<Option<String>>,
    source_cluster_id: Mutex<Option<String>>,
    pub connects: AtomicU64,
    pub source_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub records: AtomicU64,
    partitions: Mutex<BTreeMap<(String, i32), PartitionFigures>>,
    mirror_topics: Mutex<Vec<String>>,
    rate: Mutex<(Instant, u64, f64)>,
    /// Where the admin API sends work for the live connection; `None` while disconnected.
    requests: Mutex<Option<mpsc::Sender<LinkRequest>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LinkShared {
    pub fn new(paused: bool) -> Self {
        LinkShared {
            state: Mutex::new(if paused {
                LinkState::Paused
            } else {
                LinkState::Connecting(None)
            }),
            last_error: Mutex::new(None),
            source_cluster_id: Mutex::new(None),
            connects: AtomicU64::new(0),
            source_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
            mirror_topics: Mutex::new(Vec::new()),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
            requests: Mutex::new(None),
        }
    }

    /// Opens the request channel of a new connection (replacing any earlier one).
    pub fn open_requests(&self) -> mpsc::Receiver<LinkRequest> {
        let (tx, rx) = mpsc::channel(MAX_PENDING_REQUESTS);
        *lock(&self.requests) = Some(tx);
        rx
    }

    /// Closes the request channel (the connection ended).
    pub fn close_requests(&self) {
        *lock(&self.requests) = None;
    }

    /// A sender to the live connection's task, if connected.
    pub fn request_sender(&self) -> Option<mpsc::Sender<LinkRequest>> {
        lock(&self.requests).clone()
    }

    pub fn set_state(&self, state: LinkState) {
        *lock(&self.state) = state;
    }

    pub fn state(&self) -> LinkState {
        lock(&self.state).clone()
    }

    pub fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub fn connected(&self, source_cluster_id: String) {
        *lock(&self.source_cluster_id) = Some(source_cluster_id);
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.set_state(LinkState::Active);
    }

    pub fn set_mirror_topics(&self, topics: Vec<String>) {
        *lock(&self.mirror_topics) = topics;
    }

    /// Marks a partition (or with `None` clears it) as failing, with the reason.
    pub fn partition_failure(&self, topic: &str, partition: i32, failure: Option<String>) {
        lock(&self.partitions)
            .entry((topic.to_string(), partition))
            .or_default()
            .failure = failure;
    }

    /// Records a data entry applied on the destination.
    pub fn observe(
        &self,
        topic: &str,
        partition: i32,
        source_high_watermark: i64,
        destination_end: i64,
        bytes: u64,
        records: u64,
    ) {
        let mut parts = lock(&self.partitions);
        let f = parts.entry((topic.to_string(), partition)).or_default();
        f.source_high_watermark = f.source_high_watermark.max(source_high_watermark);
        f.bytes += bytes;
        f.records += records;
        f.window_bytes += bytes;
        f.window_records += records;
        f.failure = None;
        if destination_end >= f.source_high_watermark {
            f.behind_since = None;
        } else if f.behind_since.is_none() {
            f.behind_since = Some(Instant::now());
        }
    }

    /// Called about once a second: turns the counters of the last window into rates.
    pub fn tick_rates(&self) {
        let now = Instant::now();
        let mut rate = lock(&self.rate);
        let dt = now.duration_since(rate.0).as_secs_f64();
        if dt < 0.5 {
            return;
        }
        let total = self.source_bytes.load(Ordering::Relaxed);
        rate.2 = total.saturating_sub(rate.1) as f64 / dt;
        rate.0 = now;
        rate.1 = total;
        for f in lock(&self.partitions).values_mut() {
            f.bytes_per_sec = f.window_bytes as f64 / dt;
            f.records_per_sec = f.window_records as f64 / dt;
            f.window_bytes = 0;
            f.window_records = 0;
        }
    }

    /// The status as the admin API shows it; destination offsets are read live from the log,
    /// divergences and gaps from the persisted mirror states (also for partitions this
    /// connection has not subscribed, e.g. diverged ones after a restart).
    pub fn status(&self, spec: &LinkSpec, agent: &AgentShared) -> LinkStatus {
        let broker = &agent.broker;
        let state = self.state();
        let paused = matches!(state, LinkState::Paused);
        let mut figures = lock(&self.partitions);
        for topic in broker.topics() {
            if topic.mirror_link().as_deref() != Some(spec.name.as_str()) {
                continue;
            }
            let id = topic.id.to_string();
            for p in 0..topic.partition_count() {
                let persisted = agent.mirror_states.get(&topic.name, p, &id);
                if persisted.divergence.is_some() || persisted.gap_offsets > 0 {
                    figures.entry((topic.name.clone(), p)).or_default();
                }
            }
        }
        let partitions = figures
            .iter()
            .map(|((topic, partition), f)| {
                let persisted = broker
                    .topic(topic)
                    .map(|t| {
                        agent
                            .mirror_states
                            .get(topic, *partition, &t.id.to_string())
                    })
                    .unwrap_or_default();
                let destination_end = broker
                    .partition(topic, *partition)
                    .map(|p| p.offsets().log_end_offset)
                    .unwrap_or(0);
                let lag_records = (f.source_high_watermark - destination_end).max(0);
                let mean = if f.records > 0 {
                    f.bytes as f64 / f.records as f64
                } else {
                    0.0
                };
                PartitionStatus {
                    topic: topic.clone(),
                    partition: *partition,
                    source_end_offset: f.source_high_watermark,
                    destination_end_offset: destination_end,
                    lag_records,
                    lag_bytes: (lag_records as f64 * mean) as u64,
                    lag_ms: if lag_records == 0 {
                        0
                    } else {
                        f.behind_since.map_or(0, |t| t.elapsed().as_millis() as u64)
                    },
                    state: match (&persisted.divergence, &f.failure, paused) {
                        (Some(d), _, _) => format!("diverged: {}", d.kind),
                        (None, Some(reason), _) => format!("failed: {reason}"),
                        (None, None, true) => "paused".into(),
                        (None, None, false) => "active".into(),
                    },
                    bytes_per_sec: f.bytes_per_sec,
                    records_per_sec: f.records_per_sec,
                    divergence: persisted.divergence,
                    gap_offsets: persisted.gap_offsets,
                }
            })
            .collect();
        drop(figures);
        LinkStatus {
            spec: spec.clone(),
            state,
            source_cluster_id: lock(&self.source_cluster_id).clone(),
            last_error: lock(&self.last_error).clone(),
            connects: self.connects.load(Ordering::Relaxed),
            source_bytes: self.source_bytes.load(Ordering::Relaxed),
            wire_bytes: self.wire_bytes.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            bytes_per_sec: lock(&self.rate).2,
            mirror_topics: lock(&self.mirror_topics).clone(),
            partitions,
        }
    }
}
