//! Crash safety: an idempotent acks=all producer writes numbered messages while the broker
//! (`--fsync always`) is SIGKILLed at random moments (seeded, the seed is printed) and
//! restarted on the same data dir. Afterwards the broker is stopped cleanly, `strait log
//! verify` must accept the data dir, and a consumer reading everything back must find every
//! acknowledged message exactly at its acknowledged offset, no message twice, no message that
//! was never sent, and dense offsets.
//!
//! `STRAIT_CRASH_KILLS` overrides the number of kills (default 4).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    client_config, consumer_config, create_topic, wait_until, Broker, BrokerOptions, Rng,
};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;

/// What the producer side learnt, shared with the test thread.
#[derive(Default)]
struct Outcome {
    /// seq -> (partition, offset) of every acknowledged message.
    acked: Mutex<HashMap<u64, (i32, i64)>>,
    /// seq -> error of every message whose delivery failed.
    failed: Mutex<HashMap<u64, String>>,
    /// Client-level errors (first few kept), and whether one was fatal.
    errors: Mutex<Vec<String>>,
    fatal: AtomicBool,
    acked_count: AtomicU64,
    /// Messages that got a second successful delivery report (must stay empty).
    duplicate_reports: Mutex<Vec<(u64, (i32, i64))>>,
}

struct Ctx(Arc<Outcome>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.0.fatal.store(true, Ordering::SeqCst);
        }
        let mut e = self.0.errors.lock().unwrap();
        if e.len() < 50 {
            e.push(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, seq: usize) {
        let seq = seq as u64;
        match r {
            Ok(m) => {
                // No panics here: this runs inside a librdkafka callback.
                let prev = self
                    .0
                    .acked
                    .lock()
                    .unwrap()
                    .insert(seq, (m.partition(), m.offset()));
                if let Some(prev) = prev {
                    self.0.duplicate_reports.lock().unwrap().push((seq, prev));
                }
                self.0.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, _)) => {
                self.0.failed.lock().unwrap().insert(seq, e.to_string());
            }
        }
    }
}

fn new_producer(bootstrap: &str, outcome: &Arc<Outcome>) -> ThreadedProducer<Ctx> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500")
        .create_with_context(Ctx(outcome.clone()))
        .expect("create producer")
}

/// Produces seq 0, 1, 2, ... (value = decimal seq) until `stop`, ~20k msg/s at most, then
/// flushes. Recreates the producer if librdkafka reports a fatal (idempotence) error.
/// Returns the number of messages sent and of producers used.
fn produce_loop(bootstrap: String, outcome: Arc<Outcome>, stop: Arc<AtomicBool>) -> (u64, u32) {
    let mut producer = new_producer(&bootstrap, &outcome);
    let mut producers = 1;
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if outcome.fatal.swap(false, Ordering::SeqCst) {
            println!(
                "[crash] fatal producer error at seq {seq}: {:?}; recreating the producer",
                producer.client().fatal_error()
            );
            let _ = producer.flush(Duration::from_secs(5));
            producer = new_producer(&bootstrap, &outcome);
            producers += 1;
        }
        for _ in 0..40 {
            let value = seq.to_string();
            let key = format!("k{}", seq % 97);
            let mut rec = BaseRecord::with_opaque_to(TOPIC, seq as usize)
                .key(key.as_bytes())
                .payload(value.as_bytes());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("send of message {seq}: {e}"),
                }
            }
            seq += 1;
        }
        // Pace the producer (~20k msg/s): the point is to be mid-write when the broker dies,
        // not to build an enormous backlog.
        std::thread::sleep(Duration::from_millis(2));
    }
    let flush = producer.flush(Duration::from_secs(40));
    println!(
        "[crash] producer flush: {flush:?}; in flight {}",
        producer.in_flight_count()
    );
    (seq, producers)
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let t0 = Instant::now();
    let kills: usize = std::env::var("STRAIT_CRASH_KILLS")
        .ok()
        .map(|s| s.parse().expect("STRAIT_CRASH_KILLS must be a number"))
        .unwrap_or(4);
    let mut rng = Rng::from_env("crash");
    let mut broker = Broker::start(
        "crash",
        BrokerOptions {
            fsync: Some("always".into()),
            ..Default::default()
        },
    );
    let boot = broker.bootstrap().to_string();
    create_topic(&boot, TOPIC, PARTITIONS, &[]);

    let outcome = Arc::new(Outcome::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let (b, o, s) = (boot.clone(), outcome.clone(), stop.clone());
        std::thread::spawn(move || produce_loop(b, o, s))
    };

    // Acknowledgements must keep coming: before the first kill and after every restart.
    let progress = |what: &str, outcome: &Outcome| {
        let before = outcome.acked_count.load(Ordering::SeqCst);
        let ok = wait_until(Duration::from_secs(30), || {
            outcome.acked_count.load(Ordering::SeqCst) >= before + 200
        });
        assert!(
            ok,
            "no producer progress {what} within 30 s ({before} acked so far); client errors: {:#?}",
            outcome.errors.lock().unwrap()
        );
    };
    progress("before the first kill", &outcome);
    for k in 1..=kills {
        let delay = Duration::from_millis(rng.range(300, 1500));
        std::thread::sleep(delay);
        broker.assert_running("before a kill");
        let acked = outcome.acked_count.load(Ordering::SeqCst);
        broker.kill9();
        println!("[crash] kill #{k} after {delay:?}; {acked} messages acknowledged so far");
        broker.restart();
        progress(&format!("after restart #{k}"), &outcome);
    }
    stop.store(true, Ordering::SeqCst);
    let (sent, producers) = producer_thread.join().expect("producer thread panicked");
    broker.assert_running("after producing");

    let acked = std::mem::take(&mut *outcome.acked.lock().unwrap());
    let failed = std::mem::take(&mut *outcome.failed.lock().unwrap());
    println!(
        "[crash] sent {sent}, acknowledged {}, failed {} (first: {:?}), producers {producers}, client errors {}",
        acked.len(),
        failed.len(),
        failed.iter().next(),
        outcome.errors.lock().unwrap().len()
    );
    assert!(!acked.is_empty(), "nothing was acknowledged");
    let dup_reports = outcome.duplicate_reports.lock().unwrap().clone();
    assert!(
        dup_reports.is_empty(),
        "messages acknowledged twice: {dup_reports:?}"
    );

    // Clean stop, then the on-disk log must verify.
    broker.stop();
    let v = broker.log_verify();
    let verify_out = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    println!("[crash] strait log verify ({}):\n{verify_out}", v.status);
    assert!(v.status.success(), "strait log verify failed: {verify_out}");

    // Restart and read everything back.
    broker.restart();
    let boot = broker.bootstrap().to_string();
    let consumer: BaseConsumer = consumer_config(&boot, "error")
        .create()
        .expect("create consumer");
    let mut high = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (lo, hi) = consumer
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("fetch_watermarks");
        assert_eq!(lo, 0, "partition {p} log start offset");
        high.insert(p, hi);
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(0))
            .expect("tpl");
    }
    let total: i64 = high.values().sum();
    println!("[crash] high watermarks after restart: {high:?} (total {total})");
    consumer.assign(&tpl).expect("assign");
    let mut consumed: HashMap<(i32, i64), u64> = HashMap::new();
    let mut seq_at: HashMap<u64, (i32, i64)> = HashMap::new();
    let mut next: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut problems: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (consumed.len() as i64) < total && Instant::now() < deadline {
        let m = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(r) => r.expect("consumer error"),
        };
        let (p, o) = (m.partition(), m.offset());
        let n = next.get_mut(&p).unwrap();
        if o != *n {
            problems.push(format!("partition {p}: offset {o} follows {}", *n - 1));
        }
        *n = o + 1;
        let seq: u64 = match m.payload().and_then(|v| std::str::from_utf8(v).ok()) {
            Some(s) => s.parse().unwrap_or(u64::MAX),
            None => u64::MAX,
        };
        if seq >= sent {
            problems.push(format!("{p}/{o}: value {:?} was never sent", m.payload()));
        } else if let Some(prev) = seq_at.insert(seq, (p, o)) {
            problems.push(format!(
                "message {seq} stored twice: at {prev:?} and {p}/{o}"
            ));
        }
        consumed.insert((p, o), seq);
    }
    assert_eq!(
        consumed.len() as i64,
        total,
        "consumed {} of {total} messages below the high watermarks",
        consumed.len()
    );
    for (seq, (p, o)) in &acked {
        match consumed.get(&(*p, *o)) {
            Some(s) if s == seq => {}
            other => problems.push(format!(
                "acknowledged message {seq} at {p}/{o}: found {other:?}"
            )),
        }
    }
    let failed_present = failed.keys().filter(|s| seq_at.contains_key(s)).count();
    println!(
        "[crash] consumed {total}; {} acknowledged all found; {failed_present} of {} failed deliveries present anyway; total {:?}",
        acked.len(),
        failed.len(),
        t0.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    broker.stop();
}
