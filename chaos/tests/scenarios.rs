//! Chaos scenarios against a single `strait broker` (broker-core): SIGKILL + restart at random
//! moments, SIGSTOP/SIGCONT, a 5 s network partition between producer and broker (TCP relay),
//! disk full (size-limited tmpfs), and a transactional workload. Each scenario produces
//! numbered records with acks=all + idempotence, applies its faults, reads the topic back and
//! runs the checker; it fails if anything acknowledged is lost, doubled, reordered or moved.
//!
//! Short form (CI): each scenario about 15-20 s of load. Long form by hand:
//! `STRAIT_CHAOS_DURATION=300 cargo test -p strait-chaos --test scenarios -- --nocapture`.
//! Seeds: `$STRAIT_CHAOS_SEED`. Each scenario prints a `RESULT |...|` markdown row (also
//! appended to `$STRAIT_CHAOS_RESULTS` if set) for RESULTS.md.
//!
//! Link scenarios (kill source / destination, 30 s partition, 5 % loss, 200 ms RTT with
//! jitter, duplicated and reordered datagrams) are in `link_scenarios.rs`: two `Node`s, a
//! `UdpRelay` between the link agents, and the same workload and checker.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chaos::checker::{self, CheckOptions, Report};
use chaos::cluster::{self, Node, NodeOptions};
use chaos::faults::{self, SizedMount};
use chaos::rng::Rng;
use chaos::wan::tcp::{TcpRelay, TcpRelayConfig};
use chaos::wan::{Settings, WanControl};
use chaos::workload::{self, Progress, WorkloadConfig, WorkloadOutcome};

/// Load duration of a scenario: `$STRAIT_CHAOS_DURATION` seconds, else `short`.
fn load_duration(short: u64) -> Duration {
    let secs = std::env::var("STRAIT_CHAOS_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(short);
    Duration::from_secs(secs)
}

/// A scenario in progress: its name, seed, clock and the recovery times measured.
struct Scenario {
    name: &'static str,
    seed: u64,
    rng: Rng,
    started: Instant,
    recoveries: Vec<Duration>,
    notes: Vec<String>,
}

impl Scenario {
    fn new(name: &'static str) -> Scenario {
        let seed = Rng::seed_from_env();
        println!("[{name}] seed {seed} (rerun with STRAIT_CHAOS_SEED={seed})");
        Scenario {
            name,
            seed,
            rng: Rng::new(seed),
            started: Instant::now(),
            recoveries: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Starts a producer thread.
    fn start_producer(
        &self,
        config: WorkloadConfig,
    ) -> (JoinHandle<WorkloadOutcome>, Arc<Progress>) {
        let progress = Progress::new();
        let handle = {
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || workload::produce(&config, progress).expect("producer run"))
        };
        (handle, progress)
    }

    fn sleep_until(&self, offset: Duration) {
        let target = self.started + offset;
        let now = Instant::now();
        if target > now {
            std::thread::sleep(target - now);
        }
    }

    /// Reads the topic back, checks it, prints and records the result row, and panics on
    /// any anomaly.
    fn verify(
        &self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        outcomes: &[WorkloadOutcome],
        options: CheckOptions,
    ) -> Report {
        let (observed, unparseable) = workload::read_all(
            bootstrap,
            topic,
            partitions,
            options.read_committed,
            Duration::from_secs(60),
        )
        .expect("read the topic back");
        assert_eq!(unparseable, 0, "foreign records in {topic}");
        let acked: Vec<_> = outcomes
            .iter()
            .flat_map(|o| o.acked.iter().copied())
            .collect();
        let mut transactions = checker::TransactionOutcomes::default();
        for o in outcomes {
            transactions.committed.extend(&o.transactions.committed);
            transactions.aborted.extend(&o.transactions.aborted);
        }
        let report = checker::check(&acked, &observed, &transactions, options);
        let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
        let first_error = outcomes.iter().find_map(|o| o.first_error.clone());
        println!("[{}] {report}", self.name);
        println!(
            "[{}] producer failures (never acknowledged): {failed} {first_error:?}",
            self.name
        );
        let recovery = if self.recoveries.is_empty() {
            "-".to_string()
        } else {
            let ms: Vec<String> = self
                .recoveries
                .iter()
                .map(|d| format!("{}", d.as_millis()))
                .collect();
            format!("{} ms", ms.join(" / "))
        };
        let row = format!(
            "RESULT | {} | {:.0} s | {} acked ({} unacked failures) | {} | {} | {} | {} | {} | seed {} {}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            report.acknowledged,
            failed,
            report.lost.len() + report.committed_missing.len(),
            report.duplicated.len(),
            report.out_of_order.len(),
            report.offset_mismatches.len() + report.aborted_visible.len(),
            recovery,
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
        assert!(report.is_clean(), "[{}] {report}", self.name);
        report
    }
}

fn producer_config(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    duration: Duration,
    seed: u64,
) -> WorkloadConfig {
    let mut config = WorkloadConfig::new(bootstrap, topic);
    config.partitions = partitions;
    config.max_records = u64::MAX;
    config.max_duration = duration;
    config.max_in_flight = 2000;
    // Bounded volume keeps the read-back and check short (about 150 000 records per 15 s).
    config.max_records_per_second = Some(10_000);
    config.seed = seed;
    config
}

const STRICT: CheckOptions = CheckOptions {
    offsets_preserved: true,
    read_committed: false,
};

#[test]
fn a_kill9_and_restart_at_random_moments_loses_nothing() {
    let mut s = Scenario::new("kill -9 broker (fsync always)");
    let duration = load_duration(15);
    let mut node = Node::start("kill9", NodeOptions::default()).unwrap();
    cluster::create_topic(&node.bootstrap(), "kill9", 3).unwrap();
    let (producer, progress) = s.start_producer(producer_config(
        &node.bootstrap(),
        "kill9",
        3,
        duration,
        s.seed,
    ));
    let kills = (duration.as_secs() / 5).max(2) as usize;
    let moments = faults::random_moments(
        &mut s.rng,
        kills,
        Duration::from_secs(2),
        duration.saturating_sub(Duration::from_secs(2)),
        Duration::from_secs(2),
    );
    for at in moments {
        s.sleep_until(at);
        let acked_before = progress.acked.load(Ordering::Acquire);
        node.kill9().unwrap();
        let killed = Instant::now();
        let restart = node.restart().unwrap();
        progress
            .wait_for_ack_beyond(acked_before, Duration::from_secs(30))
            .expect("acks resume after restart");
        s.recoveries.push(killed.elapsed());
        println!(
            "[{}] killed at {at:?} with {acked_before} acked; restart took {restart:?}",
            s.name
        );
    }
    let outcome = producer.join().unwrap();
    assert!(
        outcome.acked.len() > 100,
        "too few records acknowledged: {}",
        outcome.acked.len()
    );
    s.verify(&node.bootstrap(), "kill9", 3, &[outcome], STRICT);
}

#[test]
fn b_sigstop_sigcont_mid_stream_loses_nothing() {
    let mut s = Scenario::new("SIGSTOP 3 s / SIGCONT broker");
    let duration = load_duration(15);
    let node = Node::start("pause", NodeOptions::default()).unwrap();
    cluster::create_topic(&node.bootstrap(), "pause", 2).unwrap();
    let (producer, progress) = s.start_producer(producer_config(
        &node.bootstrap(),
        "pause",
        2,
        duration,
        s.seed,
    ));
    let pauses = (duration.as_secs() / 6).max(2) as usize;
    let moments = faults::random_moments(
        &mut s.rng,
        pauses,
        Duration::from_secs(1),
        duration.saturating_sub(Duration::from_secs(4)),
        Duration::from_secs(4),
    );
    for at in moments {
        s.sleep_until(at);
        node.pause().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let acked_before = progress.acked.load(Ordering::Acquire);
        node.resume().unwrap();
        let resumed = Instant::now();
        progress
            .wait_for_ack_beyond(acked_before, Duration::from_secs(30))
            .expect("acks resume after SIGCONT");
        s.recoveries.push(resumed.elapsed());
    }
    let outcome = producer.join().unwrap();
    s.verify(&node.bootstrap(), "pause", 2, &[outcome], STRICT);
}

#[test]
fn c_five_second_partition_between_producer_and_broker_loses_nothing() {
    let mut s = Scenario::new("TCP partition 5 s producer-broker");
    let duration = load_duration(15);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let broker_port = cluster::free_port().unwrap();
    let control = WanControl::new(Settings::default(), s.seed).unwrap();
    let relay = runtime
        .block_on(TcpRelay::start(
            TcpRelayConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                format!("127.0.0.1:{broker_port}").parse().unwrap(),
            ),
            Arc::clone(&control),
        ))
        .unwrap();
    let front = relay.local_addr().to_string();
    let node = Node::start(
        "partition",
        NodeOptions {
            port: Some(broker_port),
            advertise: Some(front.clone()),
            ..NodeOptions::default()
        },
    )
    .unwrap();
    cluster::create_topic(&front, "partition", 2).unwrap();
    let (producer, progress) =
        s.start_producer(producer_config(&front, "partition", 2, duration, s.seed));
    let at = faults::random_moments(
        &mut s.rng,
        1,
        Duration::from_secs(2),
        duration.saturating_sub(Duration::from_secs(6)),
        Duration::ZERO,
    )[0];
    s.sleep_until(at);
    control.partition();
    std::thread::sleep(Duration::from_secs(5));
    let acked_before = progress.acked.load(Ordering::Acquire);
    control.heal();
    let healed = Instant::now();
    progress
        .wait_for_ack_beyond(acked_before, Duration::from_secs(30))
        .expect("acks resume after heal");
    s.recoveries.push(healed.elapsed());
    let outcome = producer.join().unwrap();
    let stats = control.stats().snapshot();
    s.notes.push(format!(
        "relay forwarded {} MB",
        stats.forward.bytes_forwarded >> 20
    ));
    // Read back through the (healed) relay: the broker advertises the relay's address.
    s.verify(&front, "partition", 2, &[outcome], STRICT);
    drop(node);
    drop(relay);
}

#[test]
fn d_disk_full_refuses_writes_and_recovers_after_space_is_freed() {
    let mut s = Scenario::new("disk full (tmpfs 64 MB)");
    let mount = match SizedMount::new(64 << 20) {
        Ok(m) => m,
        Err(e) => {
            println!("[{}] SKIPPED: cannot mount a tmpfs here: {e}", s.name);
            return;
        }
    };
    let data_dir = mount.path().join("data");
    let mut node = Node::start(
        "diskfull",
        NodeOptions {
            data_dir: Some(data_dir),
            ..NodeOptions::default()
        },
    )
    .unwrap();
    cluster::create_topic(&node.bootstrap(), "diskfull", 1).unwrap();
    // Phase 1: fill the disk to 256 KiB free, then produce ~2 MB: must fail, not be acked.
    mount.fill(256 << 10).unwrap();
    let mut config = producer_config(
        &node.bootstrap(),
        "diskfull",
        1,
        Duration::from_secs(8),
        s.seed,
    );
    config.max_records = 20_000;
    config.message_timeout = Duration::from_secs(8);
    config
        .extra_config
        .push(("batch.size".into(), "16384".into()));
    let (producer, _) = s.start_producer(config.clone());
    let full = producer.join().unwrap();
    let free_after = mount.free_bytes().unwrap();
    println!(
        "[{}] disk full: {} acked, {} failed ({:?}), {} bytes free",
        s.name,
        full.acked.len(),
        full.failed,
        full.first_error,
        free_after
    );
    assert!(full.failed > 0, "a full disk must refuse some writes");
    // Phase 2: free the space; the broker must accept writes again (after a restart if the
    // partition went offline on the storage error, which is its documented policy).
    mount.free().unwrap();
    let freed = Instant::now();
    config.writer = 2;
    config.max_records = 2000;
    config.max_duration = Duration::from_secs(10);
    config.message_timeout = Duration::from_secs(10);
    let (producer, _) = s.start_producer(config.clone());
    let mut after = producer.join().unwrap();
    if after.acked.is_empty() {
        // Recovery time here: restart until the first acknowledgement.
        s.notes
            .push("partition stayed offline (KAFKA_STORAGE_ERROR) until a restart".into());
        node.kill9().unwrap();
        let restarted = Instant::now();
        node.restart().unwrap();
        config.writer = 3;
        let (producer, progress) = s.start_producer(config);
        if progress
            .wait_for_ack_beyond(0, Duration::from_secs(30))
            .is_some()
        {
            s.recoveries.push(restarted.elapsed());
        }
        after = producer.join().unwrap();
    } else {
        s.notes.push("writes resumed without restart".into());
        s.recoveries.push(freed.elapsed());
    }
    assert!(
        !after.acked.is_empty(),
        "no write accepted after space was freed: {:?}",
        after.first_error
    );
    s.verify(&node.bootstrap(), "diskfull", 1, &[full, after], STRICT);
    drop(node);
    drop(mount);
}

#[test]
fn e_transactions_commit_or_abort_and_read_committed_sees_exactly_the_committed() {
    let s = Scenario::new("transactions (30 % aborted)");
    let node = Node::start("txn", NodeOptions::default()).unwrap();
    cluster::create_topic(&node.bootstrap(), "txn", 2).unwrap();
    let mut config = producer_config(&node.bootstrap(), "txn", 2, load_duration(10), s.seed);
    config.max_records = 2000;
    config.records_per_transaction = Some(20);
    config.abort_probability = 0.3;
    let (producer, _) = s.start_producer(config);
    let outcome = producer.join().unwrap();
    println!(
        "[{}] {} committed, {} aborted transactions",
        s.name,
        outcome.transactions.committed.len(),
        outcome.transactions.aborted.len()
    );
    assert!(!outcome.transactions.committed.is_empty());
    let report = s.verify(
        &node.bootstrap(),
        "txn",
        2,
        std::slice::from_ref(&outcome),
        CheckOptions {
            offsets_preserved: true,
            read_committed: true,
        },
    );
    // Aborted records reached the log (acknowledged) and stayed invisible.
    assert!(outcome.transactions.aborted.is_empty() || report.required < outcome.acked.len());
}
