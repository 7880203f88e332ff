//! The sans-IO impairment model: given a direction's settings, the current time and a packet
//! length, decide whether the packet is dropped (and why) or when it is delivered (and how
//! many copies). No sockets here, so the statistics can be tested exactly and the relays stay
//! thin.
//!
//! Order of decisions per datagram: partition, independent loss, Gilbert-Elliott burst loss,
//! bottleneck queue (drop-tail), then departure time = end of serialisation at the bottleneck
//! + one-way delay + jitter, then reordering (extra hold) and duplication.
//!
//! For byte streams ([`StreamModel`]) nothing is dropped: TCP would retransmit. Each
//! 1448-byte segment of a chunk is "lost" with the loss / burst probabilities and every loss
//! adds a retransmission stall of `max(200 ms, RTT)` (Linux's minimum RTO) to that chunk; as
//! the stream keeps order, everything behind it on the connection waits too. This is a model,
//! not real TCP: it ignores congestion-window reduction, SACK recovering several losses in one
//! round trip, and exponential RTO backoff.

use std::time::{Duration, Instant};

use super::DirectionSettings;
use crate::rng::Rng;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    Partition,
    Loss,
    Burst,
    Queue,
}

/// When and how a datagram is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Delivery time.
    pub at: Instant,
    /// 1, or 2 when duplicated (both copies at `at`).
    pub copies: u8,
    /// Held back so that later packets overtake it.
    pub reordered: bool,
}

/// The fate of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Drop(DropCause),
    Deliver(Delivery),
}

/// Maximum TCP segment payload assumed by the stream loss model (Ethernet MTU 1500 minus IP,
/// TCP and timestamp-option headers).
pub const TCP_SEGMENT_BYTES: usize = 1448;
/// Linux's minimum retransmission timeout.
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// Time to serialise `len` bytes at `rate_bps` bits per second.
pub fn serialization_time(len: usize, rate_bps: u64) -> Duration {
    if rate_bps == 0 {
        return Duration::ZERO;
    }
    let nanos = (len as u128 * 8 * 1_000_000_000) / rate_bps as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64((ms.max(0.0)) / 1000.0)
}

/// One-way delay plus jitter, never negative.
fn sample_delay(rng: &mut Rng, settings: &DirectionSettings) -> Duration {
    let jitter = if settings.jitter_ms > 0.0 {
        match settings.jitter_distribution {
            super::JitterDistribution::Uniform => (rng.next_f64() * 2.0 - 1.0) * settings.jitter_ms,
            super::JitterDistribution::Normal => rng.standard_normal() * settings.jitter_ms,
        }
    } else {
        0.0
    };
    millis(settings.delay_ms + jitter)
}

/// Per-direction state of the datagram model.
#[derive(Debug, Clone)]
pub struct PacketModel {
    rng: Rng,
    in_bad_state: bool,
    link_free_at: Option<Instant>,
    last_in_order_delivery: Option<Instant>,
}

impl PacketModel {
    /// A model whose random decisions follow `seed`.
    pub fn new(seed: u64) -> PacketModel {
        PacketModel {
            rng: Rng::new(seed),
            in_bad_state: false,
            link_free_at: None,
            last_in_order_delivery: None,
        }
    }

    /// Bytes waiting at the bottleneck at `now` (including the one being serialised).
    pub fn queued_bytes(&self, settings: &DirectionSettings, now: Instant) -> u64 {
        match self.link_free_at {
            Some(free_at) if settings.rate_bps > 0 => {
                let backlog = free_at.saturating_duration_since(now);
                (backlog.as_secs_f64() * settings.rate_bps as f64 / 8.0) as u64
            }
            _ => 0,
        }
    }

    /// Whether the burst-loss chain is in its bad state.
    pub fn in_bad_state(&self) -> bool {
        self.in_bad_state
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now`.
    pub fn admit(&mut self, settings: &DirectionSettings, now: Instant, len: usize) -> Fate {
        if settings.partitioned {
            return Fate::Drop(DropCause::Partition);
        }
        if self.rng.chance(settings.loss) {
            return Fate::Drop(DropCause::Loss);
        }
        if step_burst(&mut self.rng, &mut self.in_bad_state, settings)
            && self.rng.chance(settings.burst.loss_in_bad)
        {
            return Fate::Drop(DropCause::Burst);
        }
        let departure = if settings.rate_bps > 0 {
            let queued = self.queued_bytes(settings, now);
            if queued + len as u64 > settings.queue_limit_bytes {
                return Fate::Drop(DropCause::Queue);
            }
            let start = self.link_free_at.map_or(now, |free| free.max(now));
            let done = start + serialization_time(len, settings.rate_bps);
            self.link_free_at = Some(done);
            done
        } else {
            now
        };
        let mut at = departure + sample_delay(&mut self.rng, settings);
        if settings.jitter_preserves_order {
            if let Some(last) = self.last_in_order_delivery {
                at = at.max(last);
            }
        }
        let reordered = self.rng.chance(settings.reorder);
        if reordered {
            at += millis(settings.reorder_delay_ms);
        } else {
            self.last_in_order_delivery = Some(at);
        }
        let copies = if self.rng.chance(settings.duplicate) {
            2
        } else {
            1
        };
        Fate::Deliver(Delivery {
            at,
            copies,
            reordered,
        })
    }
}

/// Advances the Gilbert-Elliott chain one packet; returns whether it is now in the bad state.
fn step_burst(rng: &mut Rng, in_bad_state: &mut bool, settings: &DirectionSettings) -> bool {
    let burst = &settings.burst;
    if burst.p_enter_bad <= 0.0 && !*in_bad_state {
        return false;
    }
    if *in_bad_state {
        if rng.chance(burst.p_leave_bad) {
            *in_bad_state = false;
        }
    } else if rng.chance(burst.p_enter_bad) {
        *in_bad_state = true;
    }
    *in_bad_state
}

/// When a chunk of a byte stream is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSchedule {
    /// Delivery time before per-connection ordering (the caller keeps the stream in order).
    pub at: Instant,
    /// Segments of the chunk that suffered a modelled retransmission stall.
    pub stalled_segments: u32,
}

/// Per-direction state of the byte-stream model (shared by all connections of a relay, so
/// the bandwidth cap is per direction, like a shared bottleneck).
#[derive(Debug, Clone)]
pub struct StreamModel {
    rng: Rng,
    in_bad_state: bool,
    link_free_at: Option<Instant>,
}

impl StreamModel {
    /// A model whose random decisions follow `seed`.
    pub fn new(seed: u64) -> StreamModel {
        StreamModel {
            rng: Rng::new(seed),
            in_bad_state: false,
            link_free_at: None,
        }
    }

    /// Schedules a chunk of `len` bytes read at `now`; `rtt` is the emulated round-trip time
    /// (this direction's delay plus the other's), used for the stall length.
    pub fn schedule(
        &mut self,
        settings: &DirectionSettings,
        rtt: Duration,
        now: Instant,
        len: usize,
    ) -> ChunkSchedule {
        let departure = if settings.rate_bps > 0 {
            let start = self.link_free_at.map_or(now, |free| free.max(now));
            let done = start + serialization_time(len, settings.rate_bps);
            self.link_free_at = Some(done);
            done
        } else {
            now
        };
        let mut at = departure + sample_delay(&mut self.rng, settings);
        let segments = len.div_ceil(TCP_SEGMENT_BYTES).max(1);
        let mut stalled_segments = 0u32;
        for _ in 0..segments {
            let lost = self.rng.chance(settings.loss)
                || (step_burst(&mut self.rng, &mut self.in_bad_state, settings)
                    && self.rng.chance(settings.burst.loss_in_bad));
            if lost {
                stalled_segments += 1;
            }
        }
        if stalled_segments > 0 {
            at += rtt.max(MIN_RTO) * stalled_segments;
        }
        ChunkSchedule {
            at,
            stalled_segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_burst_and_queue_follow_settings() {
        let now = Instant::now();
        let settings = DirectionSettings {
            loss: 0.05,
            ..DirectionSettings::default()
        };
        let mut model = PacketModel::new(11);
        let n = 100_000;
        let lost = (0..n)
            .filter(|_| matches!(model.admit(&settings, now, 100), Fate::Drop(_)))
            .count();
        let rate = lost as f64 / n as f64;
        assert!((rate - 0.05).abs() < 0.005, "loss rate {rate}");

        // Gilbert-Elliott: stationary bad fraction = p_enter / (p_enter + p_leave) = 1/3.
        let settings = DirectionSettings {
            burst: super::super::BurstLoss {
                p_enter_bad: 0.01,
                p_leave_bad: 0.02,
                loss_in_bad: 0.5,
            },
            ..DirectionSettings::default()
        };
        let mut model = PacketModel::new(12);
        let n = 300_000;
        let lost = (0..n)
            .filter(|_| {
                matches!(
                    model.admit(&settings, now, 100),
                    Fate::Drop(DropCause::Burst)
                )
            })
            .count();
        let rate = lost as f64 / n as f64;
        assert!((rate - 1.0 / 6.0).abs() < 0.02, "burst loss rate {rate}");

        // 1 Mbit/s with a 10 000-byte queue: 1000-byte packets arriving at once, the 11th
        // (10 000 queued + 1 000) is dropped.
        let settings = DirectionSettings {
            rate_bps: 1_000_000,
            queue_limit_bytes: 10_000,
            ..DirectionSettings::default()
        };
        let mut model = PacketModel::new(13);
        let fates: Vec<Fate> = (0..12).map(|_| model.admit(&settings, now, 1000)).collect();
        let delivered = fates
            .iter()
            .filter(|f| matches!(f, Fate::Deliver(_)))
            .count();
        assert_eq!(delivered, 10, "{fates:?}");
        let Fate::Deliver(last) = fates[9] else {
            panic!("10th packet dropped")
        };
        assert_eq!(last.at - now, Duration::from_millis(80));
    }

    #[test]
    fn jitter_preserving_order_never_reorders_and_reorder_holds_back() {
        let now = Instant::now();
        let settings = DirectionSettings {
            delay_ms: 20.0,
            jitter_ms: 10.0,
            ..DirectionSettings::default()
        };
        let mut model = PacketModel::new(3);
        let mut last = now;
        for i in 0..1000u64 {
            let t = now + Duration::from_micros(i * 100);
            let Fate::Deliver(d) = model.admit(&settings, t, 100) else {
                panic!("dropped")
            };
            assert!(d.at >= last);
            last = d.at;
        }
        let settings = DirectionSettings {
            reorder: 1.0,
            reorder_delay_ms: 50.0,
            ..DirectionSettings::default()
        };
        let Fate::Deliver(d) = PacketModel::new(4).admit(&settings, now, 10) else {
            panic!("dropped")
        };
        assert!(d.reordered);
        assert_eq!(d.at - now, Duration::from_millis(50));
    }

    #[test]
    fn stream_loss_is_a_stall_of_at_least_min_rto() {
        let now = Instant::now();
        let settings = DirectionSettings {
            loss: 1.0,
            ..DirectionSettings::default()
        };
        let mut model = StreamModel::new(5);
        let s = model.schedule(&settings, Duration::from_millis(50), now, 3000);
        assert_eq!(s.stalled_segments, 3);
        assert_eq!(s.at - now, MIN_RTO * 3);
        let s = model.schedule(&settings, Duration::from_millis(300), now, 10);
        assert_eq!(s.at - now, Duration::from_millis(300));
    }
}
