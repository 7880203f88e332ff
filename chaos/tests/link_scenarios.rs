//! Chaos scenarios against Strait's cluster link (issue 7): two `strait broker` processes,
//! "east" (source) and "west" (destination), a link `east-to-west` defined on west through its
//! admin API, and a userspace UDP relay between west's link agent and east's link port (the
//! emulated WAN), all from [`chaos::cluster::LinkPair`].
//!
//! Each scenario produces numbered records to east (acks=all, idempotent; one scenario
//! transactional) while its fault happens, stops the producer, waits (bounded) until west's end
//! offsets equal east's, then reads both sides back and checks west with the checker with
//! `offsets_preserved` (the link mirrors every record at its source offset): nothing lost,
//! duplicated, reordered or shifted. West must also hold exactly what east holds, record for
//! record at the same offsets, and east itself must pass the same check.
//!
//! 1. kill-source: SIGKILL east at 2 seeded moments, restart it.
//! 2. kill-destination: SIGKILL west at 2 seeded moments, restart it (the link is persisted).
//! 3. kill during a transaction: transactional workload (commits and aborts), east SIGKILLed
//!    mid-transaction; west read with read_committed shows every committed record and no
//!    aborted one.
//! 4. WAN partition of 8 s (30 s in the long form) between the agents, then heal.
//! 5. 5 % datagram loss both ways for the whole run.
//! 6. 200 ms RTT (100 ms each way) with normal jitter of 20 ms each way.
//! 7. 5 % duplicated and 5 % reordered datagrams both ways.
//! 8. clock jumps: east's clock one hour forward, west's one hour back, east two hours back,
//!    then both right again, while producing (`strait broker --debug-clock-file`).
//!
//! Recovery time = fault end → west holds every offset east held at that moment. Final
//! catch-up = producer stopped → west's end offsets equal east's (the fault of scenarios 5-7
//! is still on then).
//!
//! Short form (CI): 15-20 s of load each. Long form by hand:
//! `STRAIT_CHAOS_DURATION=300 cargo test -p strait-chaos --test link_scenarios -- --nocapture`.
//! Seeds: `$STRAIT_CHAOS_SEED`. Each scenario prints a `LINK-RESULT |...|` markdown row (also
//! appended to `$STRAIT_CHAOS_RESULTS` if set) for RESULTS.md. Needs the `strait` binary
//! (`$STRAIT_BIN` or `target/release/strait`).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chaos::checker::{self, CheckOptions, Observed, Report, TransactionOutcomes};
use chaos::cluster::{self, LinkPair, LinkPairOptions};
use chaos::faults;
use chaos::rng::Rng;
use chaos::wan::{DirectionSettings, JitterDistribution, Settings};
use chaos::workload::{self, Progress, WorkloadConfig, WorkloadOutcome};

/// Partitions of every scenario topic.
const PARTITIONS: i32 = 3;
/// Longest wait for west to reach east's offsets after one fault.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for west to equal east once the producer stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of each broker's stderr shown in a failure report.
const TAIL_LINES: usize = 30;

/// `$STRAIT_CHAOS_DURATION` if set (the long form).
fn long_form_secs() -> Option<u64> {
    std::env::var("STRAIT_CHAOS_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// Load duration of a scenario: `$STRAIT_CHAOS_DURATION` seconds, else `short`.
fn load_duration(short: u64) -> Duration {
    Duration::from_secs(long_form_secs().unwrap_or(short))
}

/// Two seeded fault moments in the short form; one per minute of load in the long form.
fn fault_count(duration: Duration) -> usize {
    (duration.as_secs() / 60).max(2) as usize
}

fn producer_config(bootstrap: &str, topic: &str, duration: Duration, seed: u64) -> WorkloadConfig {
    let mut config = WorkloadConfig::new(bootstrap, topic);
    config.partitions = PARTITIONS;
    config.max_records = u64::MAX;
    config.max_duration = duration;
    config.max_in_flight = 2000;
    config.max_records_per_second = Some(5_000);
    config.seed = seed;
    config
}

/// How often pending recoveries are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A fault that ended: west must reach `target`, east's end offsets at `ended`.
struct PendingRecovery {
    what: String,
    ended: Instant,
    target: Vec<i64>,
}

/// A link scenario in progress.
struct LinkScenario {
    name: &'static str,
    topic: String,
    seed: u64,
    rng: Rng,
    started: Instant,
    /// Fault end → west at east's offsets of that moment.
    recoveries: Vec<Duration>,
    /// Faults whose recovery is not settled yet.
    pending: Vec<PendingRecovery>,
    /// Faults after which west did not catch up in time.
    stuck: Vec<String>,
    notes: Vec<String>,
}

impl LinkScenario {
    fn new(name: &'static str, topic_suffix: &str) -> LinkScenario {
        let seed = Rng::seed_from_env();
        println!("[{name}] seed {seed} (rerun with STRAIT_CHAOS_SEED={seed})");
        LinkScenario {
            name,
            topic: format!("chaos.{topic_suffix}"),
            seed,
            rng: Rng::new(seed),
            started: Instant::now(),
            recoveries: Vec::new(),
            pending: Vec::new(),
            stuck: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Starts east and west with `wan` between them, creates the topic on east and the link
    /// on west, and waits until the link is active and the mirror topic exists.
    fn start_pair(&mut self, wan: Settings, rtt_ms: u64) -> LinkPair {
        self.start_pair_with(wan, rtt_ms, Vec::new(), Vec::new())
    }

    /// [`Self::start_pair`] with further `strait broker` arguments for east and west.
    fn start_pair_with(
        &mut self,
        wan: Settings,
        rtt_ms: u64,
        east_extra: Vec<String>,
        west_extra: Vec<String>,
    ) -> LinkPair {
        let mut options = LinkPairOptions::new(self.seed);
        options.wan = wan;
        options.rtt_ms = rtt_ms;
        options.east_extra = east_extra;
        options.west_extra = west_extra;
        let pair = LinkPair::start(options).expect("start east and west");
        cluster::create_topic(&pair.east.bootstrap(), &self.topic, PARTITIONS)
            .expect("create the topic on east");
        pair.create_link().expect("create the link on west");
        let active = pair.wait_link_active(Duration::from_secs(30));
        let mirrored = pair.wait_west_reaches(
            &self.topic,
            &[0; PARTITIONS as usize],
            Duration::from_secs(30),
        );
        if let Err(e) = active.as_ref().and(mirrored.as_ref()) {
            panic!(
                "[{}] link not up: {e}\n{}",
                self.name,
                pair.diagnostics(TAIL_LINES)
            );
        }
        self.notes.push(format!(
            "link active after {} ms",
            active.map(|d| d.as_millis()).unwrap_or_default()
        ));
        self.started = Instant::now();
        pair
    }

    fn start_producer(
        &self,
        config: WorkloadConfig,
    ) -> (JoinHandle<Result<WorkloadOutcome, String>>, Arc<Progress>) {
        let progress = Progress::new();
        let handle = {
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || {
                workload::produce(&config, progress).map_err(|e| e.to_string())
            })
        };
        (handle, progress)
    }

    /// The fault `what` just ended: samples east's end offsets now; the recovery completes
    /// when west holds them (checked by [`LinkScenario::poll_recoveries`] while the load and
    /// the next faults go on).
    fn fault_ended(&mut self, pair: &LinkPair, what: &str) {
        let ended = Instant::now();
        while ended.elapsed() < RECOVERY_TIMEOUT {
            if let Ok(target) = pair.east_end_offsets(&self.topic, PARTITIONS) {
                self.pending.push(PendingRecovery {
                    what: what.to_string(),
                    ended,
                    target,
                });
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stuck
            .push(format!("{what}: east's end offsets unreadable"));
    }

    /// Reads west's end offsets once and settles the pending recoveries it completes (or that
    /// ran out of time).
    fn poll_recoveries(&mut self, pair: &LinkPair) {
        if self.pending.is_empty() {
            return;
        }
        let west = pair.west_end_offsets(&self.topic, PARTITIONS).ok();
        let now = Instant::now();
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let reached = west
                .as_ref()
                .is_some_and(|w| w.iter().zip(&p.target).all(|(w, t)| w >= t));
            if reached {
                let took = now - p.ended;
                println!(
                    "[{}] {}: west reached east's {:?} {} ms after the fault ended",
                    self.name,
                    p.what,
                    p.target,
                    took.as_millis()
                );
                self.recoveries.push(took);
            } else if now - p.ended > RECOVERY_TIMEOUT {
                println!(
                    "[{}] {}: LINK STUCK: west {west:?} did not reach {:?} within {RECOVERY_TIMEOUT:?}\n{}",
                    self.name,
                    p.what,
                    p.target,
                    pair.diagnostics(TAIL_LINES)
                );
                self.stuck.push(format!(
                    "{}: west {west:?} short of {:?} after {RECOVERY_TIMEOUT:?}",
                    p.what, p.target
                ));
            } else {
                still.push(p);
            }
        }
        self.pending = still;
    }

    /// Sleeps until `offset` after the start, settling recoveries meanwhile.
    fn wait_until(&mut self, pair: &LinkPair, offset: Duration) {
        let target = self.started + offset;
        while Instant::now() < target {
            self.poll_recoveries(pair);
            let left = target.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(POLL_INTERVAL));
        }
    }

    /// Waits (each bounded by [`RECOVERY_TIMEOUT`]) until every pending recovery settled.
    fn drain_recoveries(&mut self, pair: &LinkPair) {
        while !self.pending.is_empty() {
            self.poll_recoveries(pair);
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the final catch-up, reads west and east back, checks both, compares them,
    /// prints and records the result row, and panics on any anomaly.
    fn finish(
        &mut self,
        pair: &LinkPair,
        outcomes: &[WorkloadOutcome],
        read_committed: bool,
    ) -> Report {
        let load_secs = self.started.elapsed().as_secs_f64();
        let caught_up = pair.wait_caught_up(&self.topic, PARTITIONS, CATCH_UP_TIMEOUT);
        let catch_up = match &caught_up {
            Ok((took, offsets)) => {
                println!(
                    "[{}] west equals east at {offsets:?} {} ms after the producer stopped",
                    self.name,
                    took.as_millis()
                );
                format!("{} ms", took.as_millis())
            }
            Err(e) => {
                println!(
                    "[{}] LINK DID NOT CATCH UP: {e}\n{}",
                    self.name,
                    pair.diagnostics(TAIL_LINES)
                );
                format!("NOT within {} s", CATCH_UP_TIMEOUT.as_secs())
            }
        };
        let read = |bootstrap: &str| -> Vec<Observed> {
            let (observed, unparseable) = workload::read_all(
                bootstrap,
                &self.topic,
                PARTITIONS,
                read_committed,
                Duration::from_secs(60),
            )
            .expect("read the topic back");
            assert_eq!(unparseable, 0, "foreign records in {}", self.topic);
            observed
        };
        let west = read(&pair.west.bootstrap());
        let east = read(&pair.east.bootstrap());

        let acked: Vec<_> = outcomes
            .iter()
            .flat_map(|o| o.acked.iter().copied())
            .collect();
        let mut transactions = TransactionOutcomes::default();
        for o in outcomes {
            transactions.committed.extend(&o.transactions.committed);
            transactions.aborted.extend(&o.transactions.aborted);
        }
        let options = CheckOptions {
            offsets_preserved: true,
            read_committed,
        };
        let report = checker::check(&acked, &west, &transactions, options);
        let east_report = checker::check(&acked, &east, &transactions, options);
        let diff = SideDiff::new(&east, &west);
        let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
        let first_error = outcomes.iter().find_map(|o| o.first_error.clone());
        println!("[{}] west: {report}", self.name);
        println!("[{}] east: {}", self.name, east_report.summary());
        println!("[{}] west vs east: {diff}", self.name);
        println!(
            "[{}] producer failures (never acknowledged): {failed} {first_error:?}",
            self.name
        );
        match pair.link_status() {
            Ok(status) => self.notes.push(format!(
                "link connects {}, last error {:?}",
                status.connects, status.last_error
            )),
            Err(e) => self.notes.push(format!("link status unavailable: {e}")),
        }
        let stats = pair.wan().stats().snapshot();
        self.notes.push(format!(
            "relay: {} / {} datagrams forwarded, {} dropped (loss {}, partition {}), {} duplicated, {} reordered",
            stats.forward.packets_forwarded,
            stats.backward.packets_forwarded,
            stats.forward.dropped_loss
                + stats.backward.dropped_loss
                + stats.forward.dropped_partition
                + stats.backward.dropped_partition
                + stats.forward.dropped_queue
                + stats.backward.dropped_queue
                + stats.forward.dropped_overload
                + stats.backward.dropped_overload,
            stats.forward.dropped_loss + stats.backward.dropped_loss,
            stats.forward.dropped_partition + stats.backward.dropped_partition,
            stats.forward.duplicated + stats.backward.duplicated,
            stats.forward.reordered + stats.backward.reordered,
        ));
        let mut recovery: Vec<String> = self
            .recoveries
            .iter()
            .map(|d| format!("{}", d.as_millis()))
            .collect();
        recovery.extend(self.stuck.iter().map(|_| "STUCK".to_string()));
        let recovery = if recovery.is_empty() {
            "-".to_string()
        } else {
            format!("{} ms", recovery.join(" / "))
        };
        let row = format!(
            "LINK-RESULT | {} | {:.0} s | {} acked ({} unacked failures) | {} | {} | {} | {} | {} | {} | {} | seed {}; {}",
            self.name,
            load_secs,
            report.acknowledged,
            failed,
            report.lost.len() + report.committed_missing.len(),
            report.duplicated.len(),
            report.out_of_order.len(),
            report.offset_mismatches.len() + report.aborted_visible.len(),
            diff.count(),
            recovery,
            catch_up,
            self.seed,
            self.notes.join("; "),
        );
        println!("{row}");
        if let Some(path) = std::env::var_os("STRAIT_CHAOS_RESULTS") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{row}");
            }
        }
        assert!(
            report.required > 0,
            "[{}] nothing to check: no record acknowledged",
            self.name
        );
        assert!(report.is_clean(), "[{}] west: {report}", self.name);
        assert!(
            east_report.is_clean(),
            "[{}] east: {east_report}",
            self.name
        );
        assert_eq!(
            diff.count(),
            0,
            "[{}] west differs from east: {diff}",
            self.name
        );
        assert!(
            caught_up.is_ok(),
            "[{}] west did not catch up: {caught_up:?}",
            self.name
        );
        assert!(
            self.stuck.is_empty(),
            "[{}] link stuck after a fault: {:?}",
            self.name,
            self.stuck
        );
        report
    }
}

/// Records one side holds and the other does not, by (partition, offset, record).
struct SideDiff {
    only_east: Vec<Observed>,
    only_west: Vec<Observed>,
}

impl SideDiff {
    fn new(east: &[Observed], west: &[Observed]) -> SideDiff {
        let key = |o: &Observed| (o.partition, o.offset, o.id.writer, o.id.seq);
        let east_set: BTreeSet<_> = east.iter().map(key).collect();
        let west_set: BTreeSet<_> = west.iter().map(key).collect();
        let mut only_east: Vec<Observed> = east
            .iter()
            .filter(|o| !west_set.contains(&key(o)))
            .copied()
            .collect();
        let mut only_west: Vec<Observed> = west
            .iter()
            .filter(|o| !east_set.contains(&key(o)))
            .copied()
            .collect();
        only_east.sort_by_key(key);
        only_west.sort_by_key(key);
        SideDiff {
            only_east,
            only_west,
        }
    }

    fn count(&self) -> usize {
        self.only_east.len() + self.only_west.len()
    }
}

impl std::fmt::Display for SideDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} only on east (first {:?}), {} only on west (first {:?})",
            self.only_east.len(),
            self.only_east.first(),
            self.only_west.len(),
            self.only_west.first()
        )
    }
}

fn join(producer: JoinHandle<Result<WorkloadOutcome, String>>, name: &str) -> WorkloadOutcome {
    match producer.join() {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => panic!("[{name}] producer run failed: {e}"),
        Err(_) => panic!("[{name}] producer thread panicked"),
    }
}

/// Joins the producer while still timing pending recoveries, so the last fault's recovery is
/// measured when it happens, not when the load ends.
fn join_polling(
    s: &mut LinkScenario,
    pair: &LinkPair,
    producer: JoinHandle<Result<WorkloadOutcome, String>>,
    name: &str,
) -> WorkloadOutcome {
    while !producer.is_finished() {
        s.poll_recoveries(pair);
        std::thread::sleep(POLL_INTERVAL);
    }
    join(producer, name)
}

/// Scenarios 1 and 2: SIGKILL one side at seeded moments while producing, restart it.
fn kill_scenario(name: &'static str, topic: &str, kill_east: bool) {
    let mut s = LinkScenario::new(name, topic);
    let duration = load_duration(15);
    let mut pair = s.start_pair(Settings::default(), 10);
    let (producer, progress) = s.start_producer(producer_config(
        &pair.east.bootstrap(),
        &s.topic,
        duration,
        s.seed,
    ));
    let moments = faults::random_moments(
        &mut s.rng,
        fault_count(duration),
        Duration::from_secs(2),
        duration.saturating_sub(Duration::from_secs(2)),
        Duration::from_secs(3),
    );
    for (i, at) in moments.into_iter().enumerate() {
        s.wait_until(&pair, at);
        let acked = progress.acked.load(Ordering::Acquire);
        let node = if kill_east {
            &mut pair.east
        } else {
            &mut pair.west
        };
        node.kill9().expect("SIGKILL");
        let restart = node.restart().expect("restart");
        println!(
            "[{name}] killed {} at {:?} ({acked} acked); restart took {} ms",
            node.name(),
            s.started.elapsed(),
            restart.as_millis()
        );
        s.fault_ended(&pair, &format!("kill {}", i + 1));
    }
    let outcome = join_polling(&mut s, &pair, producer, name);
    s.drain_recoveries(&pair);
    s.finish(&pair, &[outcome], false);
}

#[test]
fn link_1_kill_source_twice_loses_nothing() {
    kill_scenario("link: kill -9 source (east) x2", "kill-source", true);
}

#[test]
fn link_2_kill_destination_twice_resumes_and_loses_nothing() {
    kill_scenario(
        "link: kill -9 destination (west) x2",
        "kill-destination",
        false,
    );
}

#[test]
fn link_3_kill_source_mid_transaction_mirrors_exactly_the_committed() {
    let name = "link: kill -9 east mid-transaction";
    let mut s = LinkScenario::new(name, "kill-txn");
    let duration = load_duration(15);
    let mut pair = s.start_pair(Settings::default(), 10);
    let mut config = producer_config(&pair.east.bootstrap(), &s.topic, duration, s.seed);
    // Transactions of 100 records at 2 000 records/s: a transaction is open almost always, so a
    // kill lands inside one.
    config.records_per_transaction = Some(100);
    config.abort_probability = 0.3;
    config.max_records_per_second = Some(2_000);
    config.message_timeout = Duration::from_secs(60);
    let (producer, progress) = s.start_producer(config);
    let moments = faults::random_moments(
        &mut s.rng,
        fault_count(duration),
        Duration::from_secs(2),
        duration.saturating_sub(Duration::from_secs(2)),
        Duration::from_secs(3),
    );
    for (i, at) in moments.into_iter().enumerate() {
        s.wait_until(&pair, at);
        let acked = progress.acked.load(Ordering::Acquire);
        pair.east.kill9().expect("SIGKILL east");
        let restart = pair.east.restart().expect("restart east");
        println!(
            "[{name}] killed east at {:?} ({acked} acked); restart took {} ms",
            s.started.elapsed(),
            restart.as_millis()
        );
        s.fault_ended(&pair, &format!("kill {}", i + 1));
    }
    let outcome = join_polling(&mut s, &pair, producer, name);
    s.drain_recoveries(&pair);
    println!(
        "[{name}] {} committed, {} aborted transactions",
        outcome.transactions.committed.len(),
        outcome.transactions.aborted.len()
    );
    s.notes.push(format!(
        "{} committed / {} aborted transactions",
        outcome.transactions.committed.len(),
        outcome.transactions.aborted.len()
    ));
    assert!(!outcome.transactions.committed.is_empty());
    let report = s.finish(&pair, std::slice::from_ref(&outcome), true);
    // Aborted records reached the logs (acknowledged) and stayed invisible on west.
    assert!(outcome.transactions.aborted.is_empty() || report.required < outcome.acked.len());
}

#[test]
fn link_4_wan_partition_then_heal_loses_nothing() {
    let name = "link: WAN partition, heal";
    let mut s = LinkScenario::new(name, "partition");
    let long = long_form_secs().is_some();
    let cut = Duration::from_secs(if long { 30 } else { 8 });
    let duration = load_duration(20).max(cut + Duration::from_secs(8));
    let pair = s.start_pair(Settings::default(), 10);
    let (producer, _progress) = s.start_producer(producer_config(
        &pair.east.bootstrap(),
        &s.topic,
        duration,
        s.seed,
    ));
    let at = faults::random_moments(
        &mut s.rng,
        1,
        Duration::from_secs(2),
        duration.saturating_sub(cut + Duration::from_secs(2)),
        Duration::ZERO,
    )[0];
    s.wait_until(&pair, at);
    pair.wan().partition();
    println!(
        "[{name}] partitioned at {:?} for {cut:?}",
        s.started.elapsed()
    );
    std::thread::sleep(cut);
    pair.wan().heal();
    s.fault_ended(&pair, &format!("partition {} s", cut.as_secs()));
    s.notes.push(format!("partition {} s", cut.as_secs()));
    let outcome = join_polling(&mut s, &pair, producer, name);
    s.drain_recoveries(&pair);
    s.finish(&pair, &[outcome], false);
}

/// Scenarios 5-7: an impaired WAN for the whole run.
fn impaired_wan_scenario(name: &'static str, topic: &str, wan: DirectionSettings, rtt_ms: u64) {
    let mut s = LinkScenario::new(name, topic);
    let duration = load_duration(15);
    let pair = s.start_pair(Settings::symmetric(wan), rtt_ms);
    let (producer, _progress) = s.start_producer(producer_config(
        &pair.east.bootstrap(),
        &s.topic,
        duration,
        s.seed,
    ));
    let outcome = join(producer, name);
    s.finish(&pair, &[outcome], false);
}

#[test]
fn link_5_five_percent_loss_loses_nothing() {
    impaired_wan_scenario(
        "link: 5 % datagram loss",
        "loss",
        DirectionSettings {
            loss: 0.05,
            ..DirectionSettings::default()
        },
        10,
    );
}

#[test]
fn link_6_200ms_rtt_with_jitter_loses_nothing() {
    impaired_wan_scenario(
        "link: 200 ms RTT, 20 ms normal jitter",
        "rtt",
        DirectionSettings {
            delay_ms: 100.0,
            jitter_ms: 20.0,
            jitter_distribution: JitterDistribution::Normal,
            ..DirectionSettings::default()
        },
        200,
    );
}

#[test]
fn link_7_duplicated_and_reordered_datagrams_lose_nothing() {
    impaired_wan_scenario(
        "link: 5 % duplicated + 5 % reordered datagrams",
        "dup-reorder",
        DirectionSettings {
            delay_ms: 5.0,
            duplicate: 0.05,
            reorder: 0.05,
            reorder_delay_ms: 10.0,
            ..DirectionSettings::default()
        },
        10,
    );
}

#[test]
fn link_8_clock_jumps_lose_nothing() {
    let name = "link: clock jumps (east +1 h, west -1 h, east -1 h)";
    let mut s = LinkScenario::new(name, "clock");
    let duration = load_duration(15);
    let clocks = tempfile::tempdir().expect("temp dir for the clock files");
    let east_clock = clocks.path().join("east-clock-offset-ms");
    let west_clock = clocks.path().join("west-clock-offset-ms");
    let flag =
        |path: &std::path::Path| vec!["--debug-clock-file".to_string(), path.display().to_string()];
    let pair = s.start_pair_with(
        Settings::default(),
        10,
        flag(&east_clock),
        flag(&west_clock),
    );
    let (producer, _progress) = s.start_producer(producer_config(
        &pair.east.bootstrap(),
        &s.topic,
        duration,
        s.seed,
    ));
    const HOUR_MS: i64 = 3_600_000;
    let step = duration / 5;
    let jumps: [(&str, &std::path::Path, i64); 4] = [
        ("east +1 h", &east_clock, HOUR_MS),
        ("west -1 h", &west_clock, -HOUR_MS),
        ("east -1 h", &east_clock, -HOUR_MS),
        ("both back to the real time", &west_clock, 0),
    ];
    for (i, (what, file, offset)) in jumps.iter().enumerate() {
        s.wait_until(&pair, step * (i as u32 + 1));
        std::fs::write(file, offset.to_string()).expect("write the clock offset");
        if i == 3 {
            std::fs::write(&east_clock, "0").expect("write the clock offset");
        }
        // The brokers re-read the file every 100 ms.
        std::thread::sleep(Duration::from_millis(200));
        println!("[{name}] {what} at {:?}", s.started.elapsed());
        s.fault_ended(&pair, what);
    }
    // The jumps really reached both brokers' clocks.
    for (node, expected) in [
        (&pair.east, "offset_ms=3600000"),
        (&pair.west, "offset_ms=-3600000"),
    ] {
        let log = node.stderr_tail(400);
        assert!(
            log.contains("clock jump injected") && log.contains(expected),
            "[{name}] no injected clock jump ({expected}) in the broker's log:\n{log}"
        );
    }
    s.notes
        .push("clock offsets +1 h/-1 h/-1 h/0 injected".to_string());
    let outcome = join_polling(&mut s, &pair, producer, name);
    s.drain_recoveries(&pair);
    s.finish(&pair, &[outcome], false);
}
