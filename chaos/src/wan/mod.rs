//! A userspace WAN emulator: UDP and TCP relays that impose delay, jitter, random and burst
//! loss, reordering, duplication, a bandwidth cap with a drop-tail queue, and partitions, with
//! settings that can be changed while traffic flows (HTTP control endpoint, schedule file).
//!
//! Layout:
//! * [`Settings`] / [`DirectionSettings`]: what to impose, per direction (`forward` is
//!   client → target, `backward` is target → client). Changed through [`WanControl`], which
//!   also holds the [`Stats`] counters. One control may serve several relays.
//! * [`model`]: the sans-IO impairment model (decides each packet's fate from the settings, a
//!   seeded RNG and the time).
//! * [`udp::UdpRelay`]: datagram relay for QUIC; [`tcp::TcpRelay`]: byte-stream relay for
//!   Kafka-protocol baselines (loss is modelled as a retransmission stall, see [`tcp`]).
//! * [`http`]: the control endpoint and a small client; [`schedule`]: timed setting changes.

pub mod http;
pub mod model;
pub mod schedule;
pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Errors of the WAN emulator.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A settings value is out of range or a patch names an unknown field.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    /// A schedule file line could not be parsed.
    #[error("schedule line {line}: {message}")]
    Schedule { line: usize, message: String },
    /// The control endpoint answered with an error or could not be reached.
    #[error("control endpoint: {0}")]
    Control(String),
}

impl WanError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> WanError {
        WanError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How jitter is distributed around the configured one-way delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JitterDistribution {
    /// Uniform in `[-jitter, +jitter]`.
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter` (clipped so that the delay stays >= 0).
    Normal,
}

/// Gilbert-Elliott burst loss: a two-state Markov chain evaluated once per packet. In the bad
/// state a packet is lost with probability `loss_in_bad`. All zero means off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BurstLoss {
    /// Probability of moving from the good to the bad state (per packet).
    pub p_enter_bad: f64,
    /// Probability of moving from the bad to the good state (per packet).
    pub p_leave_bad: f64,
    /// Loss probability while in the bad state.
    pub loss_in_bad: f64,
}

/// Impairments of one direction. Probabilities are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectionSettings {
    /// One-way propagation delay.
    pub delay_ms: f64,
    /// Jitter amplitude (uniform half-width or normal standard deviation).
    pub jitter_ms: f64,
    pub jitter_distribution: JitterDistribution,
    /// If true (default), jitter never lets a packet overtake an earlier one (a single path);
    /// only `reorder` reorders. If false, jitter reorders too (like netem without rate).
    pub jitter_preserves_order: bool,
    /// Independent random loss.
    pub loss: f64,
    pub burst: BurstLoss,
    /// Probability that a packet is held back `reorder_delay_ms` extra, so later packets
    /// overtake it.
    pub reorder: f64,
    pub reorder_delay_ms: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second; 0 = unlimited.
    pub rate_bps: u64,
    /// Bottleneck queue limit in bytes (drop-tail beyond it); only used when `rate_bps > 0`.
    pub queue_limit_bytes: u64,
    /// Drop everything (a network partition).
    pub partitioned: bool,
}

impl Default for DirectionSettings {
    fn default() -> Self {
        DirectionSettings {
            delay_ms: 0.0,
            jitter_ms: 0.0,
            jitter_distribution: JitterDistribution::Uniform,
            jitter_preserves_order: true,
            loss: 0.0,
            burst: BurstLoss::default(),
            reorder: 0.0,
            reorder_delay_ms: 10.0,
            duplicate: 0.0,
            rate_bps: 0,
            queue_limit_bytes: 1 << 20,
            partitioned: false,
        }
    }
}

/// Largest delay accepted for any delay-like setting (one minute).
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Largest bottleneck queue accepted (1 GiB).
pub const MAX_QUEUE_LIMIT_BYTES: u64 = 1 << 30;

impl DirectionSettings {
    /// Checks every value is in range.
    pub fn validate(&self, direction: &str) -> Result<(), WanError> {
        let probabilities = [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("burst.p_enter_bad", self.burst.p_enter_bad),
            ("burst.p_leave_bad", self.burst.p_leave_bad),
            ("burst.loss_in_bad", self.burst.loss_in_bad),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(WanError::InvalidSettings(format!(
                    "{direction}.{name} = {p} is not a probability in [0, 1]"
                )));
            }
        }
        let delays = [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("reorder_delay_ms", self.reorder_delay_ms),
        ];
        for (name, ms) in delays {
            if !(0.0..=MAX_DELAY_MS).contains(&ms) {
                return Err(WanError::InvalidSettings(format!(
                    "{direction}.{name} = {ms} is outside [0, {MAX_DELAY_MS}]"
                )));
            }
        }
        if self.queue_limit_bytes > MAX_QUEUE_LIMIT_BYTES {
            return Err(WanError::InvalidSettings(format!(
                "{direction}.queue_limit_bytes = {} exceeds {MAX_QUEUE_LIMIT_BYTES}",
                self.queue_limit_bytes
            )));
        }
        Ok(())
    }
}

/// Which way a packet travels through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → target.
    Forward,
    /// Target → client.
    Backward,
}

/// Settings of both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub forward: DirectionSettings,
    pub backward: DirectionSettings,
}

impl Settings {
    /// The same impairments both ways.
    pub fn symmetric(direction: DirectionSettings) -> Settings {
        Settings {
            forward: direction.clone(),
            backward: direction,
        }
    }

    /// The settings of one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionSettings {
        match direction {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    /// Checks both directions.
    pub fn validate(&self) -> Result<(), WanError> {
        self.forward.validate("forward")?;
        self.backward.validate("backward")
    }

    /// Applies a partial JSON update (RFC 7386 merge-patch semantics per object). Top-level
    /// keys `forward`, `backward` patch one direction, `both` patches both, and any other
    /// top-level key is a direction field applied to both: `{"delay_ms": 40}` sets a 40 ms
    /// one-way delay each way. Unknown fields and out-of-range values are errors; on error
    /// nothing changes.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Settings, WanError> {
        let serde_json::Value::Object(entries) = patch else {
            return Err(WanError::InvalidSettings(
                "a settings patch must be a JSON object".to_string(),
            ));
        };
        let to_value = |d: &DirectionSettings| {
            serde_json::to_value(d).map_err(|e| WanError::InvalidSettings(e.to_string()))
        };
        let mut forward = to_value(&self.forward)?;
        let mut backward = to_value(&self.backward)?;
        for (key, value) in entries {
            match key.as_str() {
                "forward" => merge_patch(&mut forward, value),
                "backward" => merge_patch(&mut backward, value),
                "both" => {
                    merge_patch(&mut forward, value);
                    merge_patch(&mut backward, value);
                }
                field => {
                    let single = serde_json::json!({ field: value });
                    merge_patch(&mut forward, &single);
                    merge_patch(&mut backward, &single);
                }
            }
        }
        let parse = |v: serde_json::Value, name: &str| {
            serde_json::from_value::<DirectionSettings>(v)
                .map_err(|e| WanError::InvalidSettings(format!("{name}: {e}")))
        };
        let next = Settings {
            forward: parse(forward, "forward")?,
            backward: parse(backward, "backward")?,
        };
        next.validate()?;
        Ok(next)
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes (here: resets to the
/// default on deserialisation), anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    let slot = t.entry(k.clone()).or_insert(serde_json::Value::Null);
                    merge_patch(slot, v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Counters of one direction (monotonic, relaxed atomics).
#[derive(Debug, Default)]
pub struct DirectionStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub dropped_partition: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_burst: AtomicU64,
    pub dropped_queue: AtomicU64,
    /// Dropped because the relay itself was overloaded (its internal queue was full).
    pub dropped_overload: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    /// TCP relay: segments that suffered a modelled retransmission stall.
    pub stalled_segments: AtomicU64,
}

/// A point-in-time copy of [`DirectionStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DirectionStatsSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub dropped_partition: u64,
    pub dropped_loss: u64,
    pub dropped_burst: u64,
    pub dropped_queue: u64,
    pub dropped_overload: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub stalled_segments: u64,
}

impl DirectionStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> DirectionStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStatsSnapshot {
            packets_in: r(&self.packets_in),
            bytes_in: r(&self.bytes_in),
            packets_forwarded: r(&self.packets_forwarded),
            bytes_forwarded: r(&self.bytes_forwarded),
            dropped_partition: r(&self.dropped_partition),
            dropped_loss: r(&self.dropped_loss),
            dropped_burst: r(&self.dropped_burst),
            dropped_queue: r(&self.dropped_queue),
            dropped_overload: r(&self.dropped_overload),
            duplicated: r(&self.duplicated),
            reordered: r(&self.reordered),
            stalled_segments: r(&self.stalled_segments),
        }
    }
}

/// Counters of a control (all relays sharing it).
#[derive(Debug, Default)]
pub struct Stats {
    pub forward: DirectionStats,
    pub backward: DirectionStats,
    /// UDP sessions (client addresses) or TCP connections currently open.
    pub sessions_active: AtomicU64,
    /// UDP datagrams from new clients refused because the session table was full.
    pub sessions_refused: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatsSnapshot {
    pub forward: DirectionStatsSnapshot,
    pub backward: DirectionStatsSnapshot,
    pub sessions_active: u64,
    pub sessions_refused: u64,
}

impl Stats {
    /// The counters of one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    /// Copies all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            forward: self.forward.snapshot(),
            backward: self.backward.snapshot(),
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
            sessions_refused: self.sessions_refused.load(Ordering::Relaxed),
        }
    }
}

/// Shared, run-time changeable settings plus counters. Cheap to read on the data path: a
/// relay caches the `Arc<Settings>` and reloads it only when [`WanControl::generation`]
/// changed.
#[derive(Debug)]
pub struct WanControl {
    settings: Mutex<Arc<Settings>>,
    generation: AtomicU64,
    stats: Stats,
    seed: u64,
}

impl WanControl {
    /// A control with `settings` (validated) and the RNG seed relays derive theirs from.
    pub fn new(settings: Settings, seed: u64) -> Result<Arc<WanControl>, WanError> {
        settings.validate()?;
        Ok(Arc::new(WanControl {
            settings: Mutex::new(Arc::new(settings)),
            generation: AtomicU64::new(0),
            stats: Stats::default(),
            seed,
        }))
    }

    /// The seed given at creation.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.lock() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Increases whenever the settings change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the settings (validated first).
    pub fn set_settings(&self, settings: Settings) -> Result<(), WanError> {
        settings.validate()?;
        self.replace(|_| Ok(settings)).map(|_| ())
    }

    /// Applies a partial JSON update (see [`Settings::patched`]) and returns the result.
    pub fn patch(&self, patch: &serde_json::Value) -> Result<Arc<Settings>, WanError> {
        self.replace(|current| current.patched(patch))
    }

    /// Partitions both directions (everything is dropped until [`WanControl::heal`]).
    pub fn partition(&self) {
        let _ = self.replace(|current| {
            let mut next = current.clone();
            next.forward.partitioned = true;
            next.backward.partitioned = true;
            Ok(next)
        });
    }

    /// Ends a partition of both directions.
    pub fn heal(&self) {
        let _ = self.replace(|current| {
            let mut next = current.clone();
            next.forward.partitioned = false;
            next.backward.partitioned = false;
            Ok(next)
        });
    }

    /// The live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn replace(
        &self,
        change: impl FnOnce(&Settings) -> Result<Settings, WanError>,
    ) -> Result<Arc<Settings>, WanError> {
        let mut guard = match self.settings.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = Arc::new(change(&guard)?);
        *guard = Arc::clone(&next);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(next)
    }
}

/// A cached view of a control's settings for one data-path task.
#[derive(Debug)]
pub(crate) struct SettingsCache {
    generation: u64,
    settings: Arc<Settings>,
}

impl SettingsCache {
    pub(crate) fn new(control: &WanControl) -> SettingsCache {
        SettingsCache {
            generation: control.generation(),
            settings: control.settings(),
        }
    }

    /// The current settings, reloaded only if they changed.
    pub(crate) fn get(&mut self, control: &WanControl) -> &Settings {
        let generation = control.generation();
        if generation != self.generation {
            self.generation = generation;
            self.settings = control.settings();
        }
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_applies_to_both_one_direction_and_rejects_unknown_fields() {
        let base = Settings::default();
        let s = base
            .patched(&serde_json::json!({"delay_ms": 40, "forward": {"loss": 0.02}}))
            .unwrap();
        assert_eq!(s.forward.delay_ms, 40.0);
        assert_eq!(s.backward.delay_ms, 40.0);
        assert_eq!(s.forward.loss, 0.02);
        assert_eq!(s.backward.loss, 0.0);
        let s = s
            .patched(&serde_json::json!({"both": {"burst": {"p_enter_bad": 0.1}}}))
            .unwrap();
        assert_eq!(s.backward.burst.p_enter_bad, 0.1);
        assert_eq!(s.backward.delay_ms, 40.0);
        let err = s.patched(&serde_json::json!({"dleay_ms": 1})).unwrap_err();
        assert!(err.to_string().contains("dleay_ms"), "{err}");
        let err = s.patched(&serde_json::json!({"loss": 1.5})).unwrap_err();
        assert!(err.to_string().contains("loss"), "{err}");
    }

    #[test]
    fn control_partition_and_heal_bump_generation() {
        let control = WanControl::new(Settings::default(), 1).unwrap();
        let g0 = control.generation();
        control.partition();
        assert!(control.settings().forward.partitioned);
        assert!(control.settings().backward.partitioned);
        control.heal();
        assert!(!control.settings().forward.partitioned);
        assert_eq!(control.generation(), g0 + 2);
    }
}
