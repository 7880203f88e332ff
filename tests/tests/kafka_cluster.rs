//! Real Apache Kafka in the test kit: a 3-node Apache Kafka 4.1 KRaft cluster (combined
//! broker+controller nodes on loopback) started through `scripts/kafka.sh`, which fetches Kafka
//! from Maven Central once per machine.
//!
//! The test creates a 6-partition topic with replication factor 3 (min.insync.replicas 2),
//! produces 20 000 records with an idempotent rdkafka producer (acks=all), and consumes them all
//! back: every record exactly once, at the partition and offset its delivery report named. Then
//! it SIGKILLs the node leading partition 0 (by the PID the script recorded), waits (bounded)
//! until every partition has a live leader again, and checks that the same producer keeps
//! producing (5 000 more records, all acknowledged) and that a fresh consumer reads all 25 000
//! records exactly once. The cluster is stopped by `scripts/kafka.sh stop` when the guard drops,
//! also on panic.
//!
//! This is the foundation of issue 12 (any Kafka cluster as a link source); it checks the kit
//! itself against real Kafka, not Strait.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin, block_on, client_config, consumer_config, KafkaCluster};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "kc-events";
const PARTITIONS: i32 = 6;
const BEFORE_KILL: usize = 20_000;
const AFTER_KILL: usize = 5_000;

/// Delivery reports by record value: (partition, offset), or the error.
#[derive(Default)]
struct Reports {
    acked: Mutex<HashMap<String, (i32, i64)>>,
    failed: Mutex<Vec<(String, String)>>,
    twice: Mutex<Vec<String>>,
}

#[derive(Clone, Default)]
struct Ctx(Arc<Reports>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, r: &DeliveryResult<'_>, value: Box<String>) {
        match r {
            Ok(m) => {
                let prev = self
                    .0
                    .acked
                    .lock()
                    .unwrap()
                    .insert((*value).clone(), (m.partition(), m.offset()));
                if prev.is_some() {
                    self.0.twice.lock().unwrap().push(*value);
                }
            }
            Err((e, _)) => self.0.failed.lock().unwrap().push((*value, e.to_string())),
        }
    }
}

/// Sends `values` (key = value) and flushes; every wait is bounded.
fn produce_all(p: &ThreadedProducer<Ctx>, values: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    for v in values {
        let mut opaque = Box::new(v.clone());
        loop {
            let rec = BaseRecord::with_opaque_to(TOPIC, opaque)
                .key(v.as_str())
                .payload(v.as_str());
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                    assert!(
                        Instant::now() < deadline,
                        "producer queue still full after 180 s"
                    );
                    opaque = rec.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("send {v}: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(180))
        .expect("flush: every record acknowledged or failed within 180 s");
}

/// Reads every partition of TOPIC from the beginning until `expected` records arrived (or
/// 120 s passed); returns (value, partition, offset) in arrival order.
fn consume_all(bootstrap: &str, expected: usize) -> Vec<(String, i32, i64)> {
    let c: BaseConsumer = consumer_config(bootstrap, "earliest")
        .set("group.id", "kc-verify")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("add partition");
    }
    c.assign(&tpl).expect("assign");
    let mut got = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < expected && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => eprintln!("consumer: {e} (retrying)"),
            Some(Ok(m)) => {
                let v = String::from_utf8(m.payload().expect("payload").to_vec()).expect("utf8");
                let k = m.key().map(|k| String::from_utf8_lossy(k).to_string());
                assert_eq!(k.as_deref(), Some(v.as_str()), "key of record {v}");
                got.push((v, m.partition(), m.offset()));
            }
        }
    }
    // Anything beyond `expected` would be a duplicate or a stray: read a little longer.
    let extra_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            got.push((v, m.partition(), m.offset()));
        }
    }
    got
}

/// Every value in `values` consumed exactly once, at its acknowledged (partition, offset), and
/// nothing else consumed.
fn check_exactly_once(values: &[String], reports: &Reports, got: &[(String, i32, i64)]) {
    let acked = reports.acked.lock().unwrap();
    let mut seen: HashMap<&str, (i32, i64)> = HashMap::new();
    let mut dups = Vec::new();
    for (v, p, o) in got {
        if seen.insert(v.as_str(), (*p, *o)).is_some() {
            dups.push(v.clone());
        }
    }
    assert!(
        dups.is_empty(),
        "{} records consumed more than once, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let missing: Vec<&String> = values
        .iter()
        .filter(|v| !seen.contains_key(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never consumed, e.g. {:?}",
        missing.len(),
        values.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        got.len(),
        values.len(),
        "consumed {} records, produced {}",
        got.len(),
        values.len()
    );
    for v in values {
        assert_eq!(
            seen.get(v.as_str()),
            acked.get(v),
            "record {v}: consumed at (partition, offset) != acknowledged"
        );
    }
}

/// (partition -> leader node id) for TOPIC, and the partitions without a leader.
fn leaders(bootstrap: &str) -> HashMap<i32, i32> {
    let c: BaseConsumer = client_config(bootstrap).create().expect("metadata client");
    let md = match c.fetch_metadata(Some(TOPIC), Duration::from_secs(10)) {
        Ok(md) => md,
        Err(_) => return HashMap::new(),
    };
    let mut out = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            if p.error().is_none() && p.leader() >= 0 {
                out.insert(p.id(), p.leader());
            }
        }
    }
    out
}

#[test]
fn three_node_kafka_cluster_produce_consume_and_survive_a_sigkilled_node() {
    let t0 = Instant::now();
    let name = format!("kc{}", std::process::id());
    let cluster = KafkaCluster::start(&name, 3);
    let bootstrap = cluster.bootstrap().to_string();

    // Topic: 6 partitions, replication factor 3, min.insync.replicas 2.
    let a = admin(&bootstrap);
    let t = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    let res = block_on(a.create_topics(
        [&t],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("CreateTopics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("CreateTopics {t}: {e:?}"));
    }
    let mut lead = HashMap::new();
    let ok = common::poll_until(Duration::from_secs(60), Duration::from_millis(250), || {
        lead = leaders(&bootstrap);
        lead.len() == PARTITIONS as usize
    });
    assert!(ok, "not every partition had a leader within 60 s: {lead:?}");
    // Replication factor 3 for real: every partition has 3 replicas and 3 in sync.
    {
        let c: BaseConsumer = client_config(&bootstrap).create().unwrap();
        let md = c
            .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
            .expect("metadata");
        let parts = md.topics()[0].partitions();
        assert_eq!(parts.len(), PARTITIONS as usize);
        for p in parts {
            assert_eq!(p.replicas().len(), 3, "replicas of partition {}", p.id());
        }
    }

    let ctx = Ctx::default();
    let producer: ThreadedProducer<Ctx> = client_config(&bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create_with_context(ctx.clone())
        .expect("create idempotent producer");

    // Phase 1: 20 000 records, all acknowledged, all consumed exactly once.
    let before: Vec<String> = (0..BEFORE_KILL).map(|i| format!("a-{i:06}")).collect();
    let tp = Instant::now();
    produce_all(&producer, &before);
    let failed = ctx.0.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} records failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(ctx.0.acked.lock().unwrap().len(), BEFORE_KILL);
    eprintln!(
        "produced {BEFORE_KILL} records in {:.1} s",
        tp.elapsed().as_secs_f64()
    );
    let got = consume_all(&bootstrap, BEFORE_KILL);
    check_exactly_once(&before, &ctx.0, &got);
    let per_partition = got.iter().fold(HashMap::<i32, usize>::new(), |mut m, r| {
        *m.entry(r.1).or_default() += 1;
        m
    });
    assert_eq!(
        per_partition.len(),
        PARTITIONS as usize,
        "records should spread over every partition: {per_partition:?}"
    );

    // SIGKILL the node leading partition 0 (node.id == the script's node number).
    let victim = lead[&0] as usize;
    assert!((1..=3).contains(&victim), "leader {victim} of partition 0");
    eprintln!(
        "SIGKILL node {victim} (PID {}), leader of partitions {:?}",
        cluster.pid(victim),
        lead.iter()
            .filter(|(_, l)| **l as usize == victim)
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
    );
    let tk = Instant::now();
    cluster.kill9(victim);
    let ok = common::poll_until(Duration::from_secs(90), Duration::from_millis(500), || {
        lead = leaders(&bootstrap);
        lead.len() == PARTITIONS as usize && lead.values().all(|l| *l as usize != victim)
    });
    assert!(
        ok,
        "partitions still led by the killed node {victim} (or leaderless) after 90 s: {lead:?}"
    );
    eprintln!(
        "every partition has a live leader {:.1} s after the kill",
        tk.elapsed().as_secs_f64()
    );

    // Phase 2: the same idempotent producer keeps going; everything is read exactly once.
    let after: Vec<String> = (0..AFTER_KILL).map(|i| format!("b-{i:06}")).collect();
    produce_all(&producer, &after);
    let failed = ctx.0.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} records failed after the kill, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let twice = ctx.0.twice.lock().unwrap().clone();
    assert!(twice.is_empty(), "delivery reported twice: {twice:?}");
    drop(producer);
    let all: Vec<String> = before.iter().chain(after.iter()).cloned().collect();
    let got = consume_all(&bootstrap, all.len());
    check_exactly_once(&all, &ctx.0, &got);

    drop(cluster);
    eprintln!("test done in {:.1} s", t0.elapsed().as_secs_f64());
}
