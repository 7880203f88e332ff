//! Consumer groups with real librdkafka: three consumers in one group share a 6-partition
//! topic; one leaves and the other two take over its partitions; every message is consumed
//! and the committed offsets equal what was consumed. Then the broker is SIGKILLed and
//! restarted, more messages arrive, and a new member of the group resumes exactly at the
//! committed offsets: nothing skipped, nothing consumed before is delivered again.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{client_config, create_topic, Broker, BrokerOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "groups";
const PARTITIONS: i32 = 6;
const GROUP: &str = "g-three";

/// Produces `n` keyed messages starting at key `first` and waits until all are acknowledged.
fn produce(bootstrap: &str, first: u64, n: u64) {
    let producer: BaseProducer = client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in first..first + n {
        let key = format!("k{i}");
        let value = format!("v{i}");
        loop {
            match producer.send(BaseRecord::to(TOPIC).key(&key).payload(&value)) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(format!("{e}").contains("Queue full"), "produce failed: {e}");
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    assert_eq!(producer.in_flight_count(), 0);
}

fn member(bootstrap: &str) -> BaseConsumer {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).expect("subscribe");
    c
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|l| l.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// What the consumers saw: (partition, offset) -> value, plus how often each was delivered.
#[derive(Default)]
struct Seen {
    values: BTreeMap<(i32, i64), String>,
    deliveries: HashMap<(i32, i64), u32>,
}

impl Seen {
    /// One poll on each consumer; commits what was consumed (synchronously).
    fn poll_round(&mut self, consumers: &[&BaseConsumer]) {
        for c in consumers {
            let mut got = false;
            while let Some(r) = c.poll(Duration::from_millis(50)) {
                let m = r.expect("consume error");
                let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
                self.values.insert((m.partition(), m.offset()), value);
                *self
                    .deliveries
                    .entry((m.partition(), m.offset()))
                    .or_default() += 1;
                got = true;
            }
            if got {
                c.commit_consumer_state(CommitMode::Sync)
                    .expect("commit consumed offsets");
            }
        }
    }
}

fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

fn end_offsets(c: &BaseConsumer) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

fn committed(c: &BaseConsumer) -> Vec<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("OffsetFetch");
    (0..PARTITIONS)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            other => panic!("partition {p}: no committed offset ({other:?})"),
        })
        .collect()
}

#[test]
fn three_members_share_rebalance_commit_and_resume_after_sigkill() {
    let mut broker = Broker::start("groups", BrokerOptions::default());
    let b = broker.bootstrap().to_string();
    create_topic(&b, TOPIC, PARTITIONS, &[]);
    const N: u64 = 30_000;
    produce(&b, 0, N);

    let c1 = member(&b);
    let c2 = member(&b);
    let c3 = member(&b);
    let mut seen = Seen::default();

    // 1. The three members split the six partitions.
    let t0 = Instant::now();
    wait_for(
        "three members to share the partitions",
        Duration::from_secs(60),
        || {
            seen.poll_round(&[&c1, &c2, &c3]);
            let (a1, a2, a3) = (assigned(&c1), assigned(&c2), assigned(&c3));
            let all: BTreeSet<i32> = a1.iter().chain(&a2).chain(&a3).copied().collect();
            !a1.is_empty()
                && !a2.is_empty()
                && !a3.is_empty()
                && a1.len() + a2.len() + a3.len() == PARTITIONS as usize
                && all.len() == PARTITIONS as usize
        },
    );
    println!("three-way split after {:?}", t0.elapsed());

    // 2. Consume part of the stream with all three.
    wait_for("half of the messages", Duration::from_secs(60), || {
        seen.poll_round(&[&c1, &c2, &c3]);
        seen.values.len() as u64 >= N / 2
    });

    // 3. c3 leaves (LeaveGroup on close); the others take over its partitions.
    let c3_partitions = assigned(&c3);
    c3.commit_consumer_state(CommitMode::Sync).ok();
    drop(c3);
    let t1 = Instant::now();
    wait_for(
        "two members to cover all partitions",
        Duration::from_secs(60),
        || {
            seen.poll_round(&[&c1, &c2]);
            let (a1, a2) = (assigned(&c1), assigned(&c2));
            a1.len() + a2.len() == PARTITIONS as usize
                && a1.union(&a2).count() == PARTITIONS as usize
        },
    );
    println!(
        "after c3 left ({c3_partitions:?}), two members cover all partitions in {:?}",
        t1.elapsed()
    );

    // 4. Everything is consumed.
    wait_for("every message", Duration::from_secs(90), || {
        seen.poll_round(&[&c1, &c2]);
        seen.values.len() as u64 >= N
    });
    let keys: BTreeSet<String> = seen.values.values().cloned().collect();
    assert_eq!(
        seen.values.len() as u64,
        N,
        "distinct (partition, offset) consumed"
    );
    assert_eq!(keys.len() as u64, N, "distinct messages consumed");
    for i in 0..N {
        assert!(
            keys.contains(&format!("v{i}")),
            "message {i} was never consumed"
        );
    }
    let redelivered = seen.deliveries.values().filter(|n| **n > 1).count();
    println!("{redelivered} messages delivered more than once around the rebalance");

    // 5. Committed offsets equal what was consumed: the end of every partition.
    let ends = end_offsets(&c1);
    assert_eq!(ends.iter().sum::<i64>() as u64, N);
    for (p, end) in ends.iter().enumerate() {
        let max_seen = seen
            .values
            .keys()
            .filter(|(sp, _)| *sp == p as i32)
            .map(|(_, o)| *o)
            .max()
            .unwrap_or(-1);
        assert_eq!(max_seen + 1, *end, "partition {p} consumed up to its end");
    }
    assert_eq!(
        committed(&c1),
        ends,
        "committed offsets = consumed positions"
    );
    drop(c1);
    drop(c2);

    // 6. SIGKILL the broker; committed offsets survive; a new member resumes from them.
    broker.kill9();
    broker.restart();
    const M: u64 = 1_000;
    produce(&b, N, M);
    let c4 = member(&b);
    assert_eq!(
        committed(&c4),
        ends,
        "committed offsets after SIGKILL + restart"
    );
    let mut after = Seen::default();
    wait_for("the new messages", Duration::from_secs(60), || {
        after.poll_round(&[&c4]);
        after.values.len() as u64 >= M
    });
    // drain a little longer to catch anything delivered twice or from before the commit
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        after.poll_round(&[&c4]);
    }
    assert_eq!(after.values.len() as u64, M, "exactly the new messages");
    for ((p, o), v) in &after.values {
        assert!(
            *o >= ends[*p as usize],
            "offset {p}/{o} was consumed before the restart"
        );
        let i: u64 = v[1..].parse().unwrap();
        assert!((N..N + M).contains(&i), "unexpected message {v}");
    }
    drop(c4);
    broker.stop();
}
