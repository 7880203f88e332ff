//! Transactions with real librdkafka (and raw protocol checks of what it relies on).
//!
//! 1. Commit and abort: a transactional producer writes ten transactions over three
//!    partitions, alternately committed and aborted. A read_committed consumer sees exactly the
//!    committed records (at the exact offsets: every transaction ends with a control marker
//!    that takes one offset), a read_uncommitted consumer sees all of them. A transaction that
//!    is still open is invisible to read_committed: the last stable offset stops at its first
//!    record (ListOffsets and Fetch with isolation_level=1, and librdkafka's read_committed
//!    watermarks), and Fetch lists the aborted transactions. The broker is then SIGKILLed and
//!    restarted: all of this must be recovered from the log, and the open transaction can
//!    still be committed, after which read_committed consumers receive its records.
//! 2. A transaction left open past `transaction.timeout.ms` is aborted by the broker (its
//!    records never become visible to read_committed), the producer is fenced, and a new
//!    producer with the same transactional.id works.
//! 3. Lost responses: a transactional producer talks to the broker through a TCP proxy that
//!    swallows random (seeded) responses of Produce, AddPartitionsToTxn, AddOffsetsToTxn,
//!    TxnOffsetCommit and EndTxn and closes the connection, so librdkafka retries requests the
//!    broker already applied. Committed transactions must appear exactly once, aborted ones
//!    never, and the group's offset must be the last committed transaction's.
//! 4. Consume-transform-produce, exactly once: worker *processes* (this test binary re-run as
//!    the ignored test `ctp_worker`) consume an input topic in a consumer group (read_committed,
//!    no auto commit), and per batch begin a transaction, produce `out-<value>` to an output
//!    topic, `send_offsets_to_transaction` and commit. Scenarios: a clean run; the broker
//!    SIGKILLed mid-run and restarted (twice, or `$STRAIT_CTP_KILLS` times; workers that hit a
//!    fatal error exit and are restarted with the same transactional.id); a worker stopped
//!    (SIGSTOP) in the middle of a transaction whose records are already in the log, replaced
//!    by a new worker with the same transactional.id, then resumed: the zombie must be fenced
//!    and its records stay aborted; then the replacement is SIGKILLed mid-run and a third
//!    worker finishes. Every time a read_committed consumer of the output must see every input
//!    record transformed exactly once, and the group's committed offsets must be the input's
//!    end offsets.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    client_config, create_topic, Broker, BrokerOptions, DroppingProxy, KafkaConn, ProxyPolicy, Rng,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};

// ---------------------------------------------------------------------------------------
// Raw protocol helpers

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// ListOffsets v5 "latest" (-1) of one partition with `isolation` (0 = read_uncommitted: the
/// high watermark, 1 = read_committed: the last stable offset).
fn list_latest(c: &mut KafkaConn, topic: &str, partition: i32, isolation: i8) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let r: ListOffsetsResponse = c.request(&req, 5).expect("ListOffsets v5");
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets error: {p:?}");
    p.offset
}

/// What a Fetch v12 of one partition from `offset` answered.
#[derive(Debug)]
struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    /// (producer id, first offset) of the aborted transactions the broker listed.
    aborted: Vec<(i64, i64)>,
    /// Offsets of the data (non-control) records returned.
    data_offsets: Vec<i64>,
    /// Offsets of the control records returned.
    control_offsets: Vec<i64>,
}

fn fetch(c: &mut KafkaConn, topic: &str, partition: i32, offset: i64, isolation: i8) -> Fetched {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(50)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_isolation_level(isolation)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(8 << 20)])]);
    let r: FetchResponse = c.request(&req, 12).expect("Fetch v12");
    assert_eq!(r.error_code, 0, "Fetch error: {r:?}");
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "Fetch partition error: {p:?}");
    let mut bytes = p.records.clone().unwrap_or_default();
    let mut data_offsets = Vec::new();
    let mut control_offsets = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut bytes).expect("decode fetched batches") {
        for rec in set.records {
            if rec.offset < offset {
                continue;
            }
            if rec.control {
                control_offsets.push(rec.offset);
            } else {
                data_offsets.push(rec.offset);
            }
        }
    }
    Fetched {
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        aborted: p
            .aborted_transactions
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect(),
        data_offsets,
        control_offsets,
    }
}

// ---------------------------------------------------------------------------------------
// rdkafka helpers

fn txn_producer(
    bootstrap: &str,
    txn_id: &str,
    timeout_ms: u32,
) -> ThreadedProducer<DefaultProducerContext> {
    client_config(bootstrap)
        .set("transactional.id", txn_id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("socket.timeout.ms", timeout_ms.min(10_000).to_string())
        .set("linger.ms", "2")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500")
        .create()
        .expect("create transactional producer")
}

/// Sends one record to an explicit partition, waiting while the local queue is full.
fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    p: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
) {
    let mut rec = BaseRecord::to(topic)
        .partition(partition)
        .key(key.as_bytes())
        .payload(value.as_bytes());
    for _ in 0..10_000 {
        match p.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("send to {topic}/{partition}: {e}"),
        }
    }
    panic!("producer queue stayed full");
}

/// An assign()-only consumer of every partition of `topic` from offset 0 that reports
/// partition EOF.
fn assigned_consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> BaseConsumer {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", "strait-tests-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// Polls until every partition is at its end (EOF after the last record) and `want` records
/// were received in total (use `want = 0` to stop at the first EOF of every partition).
/// Returns the records received, as (partition, offset) -> value.
fn drain(
    c: &BaseConsumer,
    partitions: i32,
    want: usize,
    timeout: Duration,
    what: &str,
) -> BTreeMap<(i32, i64), String> {
    let mut got = BTreeMap::new();
    let mut at_end = vec![false; partitions as usize];
    let deadline = Instant::now() + timeout;
    loop {
        if at_end.iter().all(|e| *e) && got.len() >= want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: received {} records (want {want}), at end {at_end:?} after {timeout:?}",
            got.len()
        );
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            // Connection loss (the broker was restarted): librdkafka reconnects by itself.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            ))) => {}
            Some(Err(e)) => panic!("{what}: consumer error {e}"),
            Some(Ok(m)) => {
                at_end[m.partition() as usize] = false;
                let v = String::from_utf8(m.payload().unwrap_or_default().to_vec())
                    .expect("utf-8 value");
                let prev = got.insert((m.partition(), m.offset()), v);
                assert!(
                    prev.is_none(),
                    "{what}: {}/{} delivered twice",
                    m.partition(),
                    m.offset()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Commit and abort

/// Checks every partition of the commit/abort test: `txns` ended transactions of `per` records
/// per partition (odd ones aborted), each followed by its marker, then an open transaction of
/// `per` records. Returns the producer id named in the aborted-transaction lists.
fn check_stable_offsets(
    c: &mut KafkaConn,
    topic: &str,
    partitions: i32,
    txns: i64,
    per: i64,
    mut producer_id: Option<i64>,
    context: &str,
) -> i64 {
    let ended = txns * (per + 1);
    for p in 0..partitions {
        assert_eq!(
            list_latest(c, topic, p, 0),
            ended + per,
            "partition {p}{context}: ListOffsets read_uncommitted = high watermark"
        );
        assert_eq!(
            list_latest(c, topic, p, 1),
            ended,
            "partition {p}{context}: ListOffsets read_committed = last stable offset (first offset of the open transaction)"
        );
        let f = fetch(c, topic, p, 0, 1);
        assert_eq!(
            (f.high_watermark, f.last_stable_offset),
            (ended + per, ended),
            "partition {p}{context}: read_committed Fetch (high watermark, last stable offset)"
        );
        assert!(
            f.data_offsets.iter().all(|o| *o < ended),
            "partition {p}{context}: read_committed Fetch returned records of the open transaction: {:?}",
            f.data_offsets
                .iter()
                .filter(|o| **o >= ended)
                .collect::<Vec<_>>()
        );
        let want_data: Vec<i64> = (0..txns)
            .flat_map(|t| (0..per).map(move |i| t * (per + 1) + i))
            .collect();
        let want_markers: Vec<i64> = (0..txns).map(|t| t * (per + 1) + per).collect();
        assert_eq!(
            f.data_offsets, want_data,
            "partition {p}{context}: data offsets of read_committed Fetch (aborted data is returned and filtered by the client)"
        );
        assert_eq!(
            f.control_offsets, want_markers,
            "partition {p}{context}: control marker offsets"
        );
        let pid = *producer_id.get_or_insert_with(|| f.aborted.first().map(|a| a.0).unwrap_or(-1));
        let want_aborted: Vec<(i64, i64)> = (0..txns)
            .filter(|t| t % 2 == 1)
            .map(|t| (pid, t * (per + 1)))
            .collect();
        let mut got_aborted = f.aborted.clone();
        got_aborted.sort_by_key(|a| a.1);
        assert_eq!(
            got_aborted, want_aborted,
            "partition {p}{context}: aborted transactions listed by read_committed Fetch"
        );
        let f0 = fetch(c, topic, p, 0, 0);
        assert!(
            f0.aborted.is_empty(),
            "partition {p}{context}: read_uncommitted Fetch lists aborted transactions {:?}",
            f0.aborted
        );
    }

    producer_id.expect("a producer id")
}

#[test]
fn committed_and_aborted_transactions_by_isolation_level() {
    const PARTITIONS: i32 = 3;
    const TXNS: i64 = 10;
    const PER: i64 = 20; // records per partition per transaction
    let topic = "txn-ca";
    let mut broker = Broker::start("txn-ca", BrokerOptions::default());
    let boot = broker.bootstrap().to_string();
    create_topic(&boot, topic, PARTITIONS, &[]);
    let producer = txn_producer(&boot, "txn-ca-producer", 60_000);
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");

    // Transaction t occupies offsets [t*(PER+1), t*(PER+1)+PER) of every partition, its marker
    // the next offset.
    let value = |t: i64, p: i32, i: i64| format!("t{t}-p{p}-{i}");
    let mut committed: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut all: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for t in 0..TXNS {
        producer.begin_transaction().expect("begin_transaction");
        for p in 0..PARTITIONS {
            for i in 0..PER {
                send(&producer, topic, p, &format!("k{i}"), &value(t, p, i));
                let off = t * (PER + 1) + i;
                all.insert((p, off), value(t, p, i));
                if t % 2 == 0 {
                    committed.insert((p, off), value(t, p, i));
                }
            }
        }
        // Everything is in the log before the transaction ends (abort would otherwise purge
        // unsent records, and read_uncommitted could not see them).
        producer
            .flush(Duration::from_secs(30))
            .expect("flush within the transaction");
        if t % 2 == 0 {
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit_transaction");
        } else {
            producer
                .abort_transaction(Duration::from_secs(30))
                .expect("abort_transaction");
        }
    }
    let ended = TXNS * (PER + 1);

    // An open transaction on top.
    producer
        .begin_transaction()
        .expect("begin open transaction");
    let mut open: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..PER {
            let v = format!("open-p{p}-{i}");
            send(&producer, topic, p, &format!("k{i}"), &v);
            open.insert((p, ended + i), v);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush the open transaction");
    all.extend(open.clone());

    // Raw protocol: HW, LSO and the aborted transactions of every partition.
    let mut c = KafkaConn::connect(&boot).expect("connect");
    let producer_id = check_stable_offsets(&mut c, topic, PARTITIONS, TXNS, PER, None, "");
    // librdkafka, read_committed: its watermarks stop at the LSO; it receives exactly the
    // committed records.
    let rc = assigned_consumer(&boot, topic, PARTITIONS, "read_committed");
    for p in 0..PARTITIONS {
        let wm = rc
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("fetch_watermarks");
        assert_eq!(wm, (0, ended), "partition {p}: read_committed watermarks");
    }
    let got = drain(
        &rc,
        PARTITIONS,
        committed.len(),
        Duration::from_secs(30),
        "read_committed",
    );
    assert_eq!(
        got, committed,
        "read_committed consumer: exactly the committed records at their offsets"
    );

    // read_uncommitted: everything, aborted and open included.
    let ru = assigned_consumer(&boot, topic, PARTITIONS, "read_uncommitted");
    let got_all = drain(
        &ru,
        PARTITIONS,
        all.len(),
        Duration::from_secs(30),
        "read_uncommitted",
    );
    assert_eq!(
        got_all, all,
        "read_uncommitted consumer: every record, committed, aborted and open"
    );

    // SIGKILL: the open transaction, the aborted-transaction index and the coordinator's
    // state must all be recovered.
    broker.kill9();
    broker.restart();
    let mut c = KafkaConn::connect(&boot).expect("reconnect");
    check_stable_offsets(
        &mut c,
        topic,
        PARTITIONS,
        TXNS,
        PER,
        Some(producer_id),
        " after SIGKILL + restart",
    );
    let rc2 = assigned_consumer(&boot, topic, PARTITIONS, "read_committed");
    let got = drain(
        &rc2,
        PARTITIONS,
        committed.len(),
        Duration::from_secs(30),
        "read_committed after the restart",
    );
    assert_eq!(
        got, committed,
        "read_committed consumer after SIGKILL + restart: exactly the committed records"
    );

    // Commit the open transaction (the producer reconnects): the read_committed consumers,
    // the one from before the restart included, now get its records.
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit the open transaction after the broker restart");
    let got_open = drain(
        &rc,
        PARTITIONS,
        open.len(),
        Duration::from_secs(30),
        "read_committed after commit",
    );
    assert_eq!(
        got_open, open,
        "read_committed consumer after the commit: the formerly open transaction"
    );
    let got_open = drain(
        &rc2,
        PARTITIONS,
        open.len(),
        Duration::from_secs(30),
        "second read_committed consumer after commit",
    );
    assert_eq!(
        got_open, open,
        "read_committed consumer (started after the restart) after the commit"
    );
    for p in 0..PARTITIONS {
        assert_eq!(
            list_latest(&mut c, topic, p, 1),
            ended + PER + 1,
            "partition {p}: LSO after the commit = high watermark"
        );
        assert_eq!(list_latest(&mut c, topic, p, 0), ended + PER + 1);
    }
    println!(
        "[txn-ca] {} committed, {} aborted, {} committed late; producer id {producer_id:?}",
        committed.len(),
        all.len() - committed.len() - open.len(),
        open.len()
    );
    drop(rc);
    drop(rc2);
    drop(ru);
    drop(producer);
    broker.stop();
}

// ---------------------------------------------------------------------------------------
// 2. Transaction timeout

#[test]
fn transaction_timeout_aborts_and_fences() {
    let topic = "txn-timeout";
    let mut broker = Broker::start("txn-timeout", BrokerOptions::default());
    let boot = broker.bootstrap().to_string();
    create_topic(&boot, topic, 1, &[]);
    let producer = txn_producer(&boot, "txn-timeout-producer", 2_000);
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    producer.begin_transaction().expect("begin_transaction");
    for i in 0..10 {
        send(&producer, topic, 0, "k", &format!("late-{i}"));
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let mut c = KafkaConn::connect(&boot).expect("connect");
    assert_eq!(list_latest(&mut c, topic, 0, 0), 10, "high watermark");
    assert_eq!(list_latest(&mut c, topic, 0, 1), 0, "LSO while open");

    // The broker aborts the transaction on its own: a marker is written and the LSO moves up.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20);
    loop {
        let (hw, lso) = (
            list_latest(&mut c, topic, 0, 0),
            list_latest(&mut c, topic, 0, 1),
        );
        if hw == 11 && lso == 11 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transaction not aborted 20 s after a 2 s timeout (HW {hw}, LSO {lso})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "[txn-timeout] aborted by the broker after {:?}",
        t0.elapsed()
    );
    let f = fetch(&mut c, topic, 0, 0, 1);
    assert_eq!(
        f.control_offsets,
        vec![10],
        "one marker after the 10 records"
    );
    assert_eq!(f.aborted.len(), 1, "aborted transactions: {:?}", f.aborted);
    assert_eq!(
        f.aborted[0].1, 0,
        "the aborted transaction starts at offset 0"
    );

    // The producer is fenced: its commit must fail.
    let r = producer.commit_transaction(Duration::from_secs(20));
    println!(
        "[txn-timeout] commit after the timeout: {r:?}; fatal error {:?}",
        producer.client().fatal_error()
    );
    assert!(r.is_err(), "commit of a timed-out transaction succeeded");
    let fatal = producer.client().fatal_error();
    assert!(
        fatal.as_ref().is_some_and(|(code, text)| is_fencing(*code, text)),
        "the producer of a timed-out transaction must be fenced (Kafka bumps its epoch); fatal error {fatal:?}"
    );
    drop(producer);

    // Nothing is visible to read_committed; a new producer with the same id works.
    let p2 = txn_producer(&boot, "txn-timeout-producer", 60_000);
    p2.init_transactions(Duration::from_secs(30))
        .expect("init_transactions of the successor");
    p2.begin_transaction().expect("begin");
    send(&p2, topic, 0, "k", "ok");
    p2.commit_transaction(Duration::from_secs(30))
        .expect("commit of the successor");
    let rc = assigned_consumer(&boot, topic, 1, "read_committed");
    let got = drain(
        &rc,
        1,
        1,
        Duration::from_secs(30),
        "read_committed after the timeout",
    );
    let want: BTreeMap<(i32, i64), String> = [((0, 11), "ok".to_string())].into();
    assert_eq!(got, want, "read_committed sees only the successor's record");
    drop(rc);
    drop(p2);
    broker.stop();
}

// ---------------------------------------------------------------------------------------
// 3. Lost responses of the transaction APIs

/// A proxy policy that, for responses of the listed API keys, at seeded random moments
/// swallows the response (the proxy then closes both connections), up to `max_drops` times.
struct TxnDrops {
    api_keys: Vec<i16>,
    one_in: u64,
    max_drops: usize,
    rng: Mutex<Rng>,
    /// API keys of the responses dropped so far.
    dropped: Mutex<Vec<i16>>,
}

impl ProxyPolicy for TxnDrops {
    fn drop_response(&self, api_key: i16) -> bool {
        if !self.api_keys.contains(&api_key) {
            return false;
        }
        let mut dropped = self.dropped.lock().unwrap();
        if dropped.len() < self.max_drops && self.rng.lock().unwrap().one_in(self.one_in) {
            dropped.push(api_key);
            return true;
        }
        false
    }
}

impl TxnDrops {
    fn dropped(&self) -> Vec<i16> {
        self.dropped.lock().unwrap().clone()
    }
}

#[test]
fn transactions_survive_lost_responses() {
    // Produce, InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit.
    const KEYS: [i16; 6] = [0, 22, 24, 25, 26, 28];
    const PARTITIONS: i32 = 3;
    const TXNS: usize = 40;
    const PER: usize = 10;
    let t0 = Instant::now();
    let topic = "txn-lossy";
    let group = "txn-lossy-group";
    let rng = Rng::from_env("txn-lossy");
    let listener = DroppingProxy::<TxnDrops>::bind();
    let proxy_addr = listener.local_addr().expect("proxy addr");
    let mut broker = Broker::start(
        "txn-lossy",
        BrokerOptions {
            extra: vec!["--advertise".into(), proxy_addr.to_string()],
            ..Default::default()
        },
    );
    let upstream = broker.bootstrap().parse().expect("broker address");
    let proxy = DroppingProxy::run(
        listener,
        upstream,
        TxnDrops {
            api_keys: KEYS.to_vec(),
            one_in: 5,
            max_drops: 30,
            rng: Mutex::new(rng),
            dropped: Mutex::default(),
        },
    );
    let boot = proxy.addr.to_string();
    create_topic(&boot, topic, PARTITIONS, &[]);
    // Only for its group metadata: the offsets committed are made up (partition 0 of the
    // topic itself, offset = transaction number + 1).
    let group_consumer: BaseConsumer = client_config(&boot)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let gm = group_consumer
        .group_metadata()
        .expect("consumer group metadata");

    let producer = txn_producer(&boot, "txn-lossy-producer", 60_000);
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions through the lossy proxy");
    let mut committed_values: BTreeSet<String> = BTreeSet::new();
    let mut last_committed_txn = None;
    let mut aborted_by_error = 0;
    for t in 0..TXNS {
        let commit = t % 3 != 2;
        let mut attempt = 0;
        loop {
            attempt += 1;
            assert!(attempt <= 5, "transaction {t}: 5 attempts failed");
            producer.begin_transaction().expect("begin_transaction");
            let mut values = Vec::new();
            for p in 0..PARTITIONS {
                for i in 0..PER {
                    let v = format!("t{t}-a{attempt}-p{p}-{i}");
                    send(&producer, topic, p, "k", &v);
                    values.push(v);
                }
            }
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(topic, 0, Offset::Offset(t as i64 + 1))
                .expect("tpl");
            let r = producer
                .send_offsets_to_transaction(&offsets, &gm, Duration::from_secs(30))
                .and_then(|()| {
                    if commit {
                        producer.commit_transaction(Duration::from_secs(30))
                    } else {
                        producer.flush(Duration::from_secs(30))?;
                        producer.abort_transaction(Duration::from_secs(30))
                    }
                });
            match r {
                Ok(()) => {
                    if commit {
                        committed_values.extend(values);
                        last_committed_txn = Some(t);
                    }
                    break;
                }
                Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    println!("[txn-lossy] transaction {t} attempt {attempt}: {e}; aborting");
                    aborted_by_error += 1;
                    producer
                        .abort_transaction(Duration::from_secs(30))
                        .expect("abort_transaction after an abortable error");
                }
                Err(e) => panic!(
                    "transaction {t} attempt {attempt}: {e} (fatal error {:?}); responses dropped so far: {:?}",
                    producer.client().fatal_error(),
                    proxy.policy.dropped()
                ),
            }
        }
    }
    let dropped = proxy.policy.dropped();
    println!(
        "[txn-lossy] {TXNS} transactions in {:?}; {} responses dropped (api keys {dropped:?}); {aborted_by_error} abortable errors",
        t0.elapsed(),
        dropped.len()
    );
    assert!(
        dropped.len() >= 5,
        "only {} responses were dropped: the retry paths were hardly exercised",
        dropped.len()
    );

    // read_committed: exactly the committed transactions' records, once each.
    let rc = assigned_consumer(&boot, topic, PARTITIONS, "read_committed");
    let got = drain(
        &rc,
        PARTITIONS,
        committed_values.len(),
        Duration::from_secs(30),
        "read_committed",
    );
    let got_values: Vec<&String> = got.values().collect();
    let got_set: BTreeSet<String> = got.values().cloned().collect();
    assert_eq!(
        got_values.len(),
        got_set.len(),
        "read_committed delivered some record twice"
    );
    assert_eq!(
        got_set, committed_values,
        "read_committed sees exactly the committed records"
    );
    // The group's offset is the last committed transaction's.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let c = group_consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("OffsetFetch");
    let want = last_committed_txn.map(|t| t as i64 + 1);
    let have = match c.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    };
    assert_eq!(
        have, want,
        "committed offset of the group = that of the last committed transaction"
    );
    drop(rc);
    drop(group_consumer);
    drop(producer);
    broker.stop();
    drop(proxy);
}

// ---------------------------------------------------------------------------------------
// 4. Consume-transform-produce worker (runs in a child process)

const WORKER_ENV: &str = "STRAIT_TXN_WORKER";
/// Records per transaction at most.
const WORKER_BATCH: usize = 50;
/// Worker exit codes.
const EXIT_DONE: i32 = 0;
const EXIT_FATAL: i32 = 2;
const EXIT_FENCED: i32 = 3;
const EXIT_ZOMBIE_COMMITTED: i32 = 4;
const EXIT_DEADLINE: i32 = 6;

struct WorkerArgs {
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    txn_id: String,
    partitions: i32,
    total: i64,
    /// After this many committed transactions, produce the next batch, flush it and SIGSTOP
    /// itself before sending offsets and committing.
    pause_after: Option<u64>,
    pace_ms: u64,
}

impl WorkerArgs {
    fn from_env() -> Option<WorkerArgs> {
        let bootstrap = std::env::var(WORKER_ENV).ok()?;
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("worker needs ${k}"));
        Some(WorkerArgs {
            bootstrap,
            input: var("STRAIT_TXN_INPUT"),
            output: var("STRAIT_TXN_OUTPUT"),
            group: var("STRAIT_TXN_GROUP"),
            txn_id: var("STRAIT_TXN_ID"),
            partitions: var("STRAIT_TXN_PARTITIONS").parse().unwrap(),
            total: var("STRAIT_TXN_TOTAL").parse().unwrap(),
            pause_after: std::env::var("STRAIT_TXN_PAUSE_AFTER")
                .ok()
                .map(|s| s.parse().unwrap()),
            pace_ms: var("STRAIT_TXN_PACE_MS").parse().unwrap(),
        })
    }
}

/// Notes rebalances, which happen inside `poll`.
struct RebalanceFlag(Arc<AtomicBool>);

impl ClientContext for RebalanceFlag {}

impl ConsumerContext for RebalanceFlag {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if !matches!(r, Rebalance::Error(_)) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn is_fencing(code: RDKafkaErrorCode, text: &str) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    ) || text.to_lowercase().contains("fenced")
}

/// Classifies a failed transactional call: Ok(()) if the transaction must be aborted, or the
/// exit code to leave with.
fn txn_error<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    what: &str,
    e: &KafkaError,
) -> Result<(), i32> {
    let fatal = producer.client().fatal_error();
    println!("WORKER error in {what}: {e} (fatal error: {fatal:?})");
    if let Some((code, text)) = &fatal {
        let fenced = is_fencing(*code, text) || e.to_string().to_lowercase().contains("fenced");
        return Err(if fenced { EXIT_FENCED } else { EXIT_FATAL });
    }
    match e {
        KafkaError::Transaction(t) if t.txn_requires_abort() => Ok(()),
        KafkaError::Transaction(t) if t.is_fatal() => Err(if is_fencing(t.code(), &t.string()) {
            EXIT_FENCED
        } else {
            EXIT_FATAL
        }),
        _ => Err(EXIT_FATAL),
    }
}

fn worker_main(a: &WorkerArgs) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(150);
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&a.bootstrap)
        .set("transactional.id", &a.txn_id)
        .set("transaction.timeout.ms", "15000")
        .set("message.timeout.ms", "15000")
        .set("linger.ms", "2")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "500")
        .create()
        .expect("create transactional producer");
    loop {
        match producer.init_transactions(Duration::from_secs(30)) {
            Ok(()) => break,
            Err(KafkaError::Transaction(t)) if t.is_retriable() && Instant::now() < deadline => {
                println!("WORKER init_transactions: {t}; retrying");
            }
            Err(e) => {
                println!("WORKER init_transactions failed: {e}");
                return EXIT_FATAL;
            }
        }
    }
    println!("WORKER initialised");
    let rebalanced = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer<RebalanceFlag> = client_config(&a.bootstrap)
        .set("group.id", &a.group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "30000")
        .set("fetch.wait.max.ms", "50")
        .create_with_context(RebalanceFlag(rebalanced.clone()))
        .expect("create consumer");
    consumer.subscribe(&[&a.input]).expect("subscribe");
    let mut all_input = TopicPartitionList::new();
    for p in 0..a.partitions {
        all_input.add_partition(&a.input, p);
    }
    let mut txns: u64 = 0;
    let mut records: u64 = 0;
    loop {
        if Instant::now() > deadline {
            println!("WORKER deadline passed after {txns} transactions");
            return EXIT_DEADLINE;
        }
        // Collect a batch; a rebalance resets positions to the committed offsets, so records
        // polled before it are dropped (they will be delivered again).
        let mut batch: Vec<(i32, i64, Vec<u8>, String)> = Vec::new();
        let until = Instant::now() + Duration::from_millis(100);
        while batch.len() < WORKER_BATCH && Instant::now() < until {
            let m = consumer.poll(Duration::from_millis(20));
            if rebalanced.swap(false, Ordering::SeqCst) {
                println!("WORKER rebalance; dropping {} polled records", batch.len());
                batch.clear();
            }
            match m {
                None => {}
                Some(Ok(m)) => batch.push((
                    m.partition(),
                    m.offset(),
                    m.key().unwrap_or_default().to_vec(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                Some(Err(e)) => println!("WORKER consumer error: {e}"),
            }
        }
        if batch.is_empty() {
            // Done once the group's committed offsets cover the whole input.
            if let Ok(tpl) = consumer.committed_offsets(all_input.clone(), Duration::from_secs(5)) {
                let sum: i64 = tpl
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum();
                if sum == a.total {
                    println!("WORKER done after {txns} transactions, {records} records");
                    return EXIT_DONE;
                }
            }
            continue;
        }

        if let Err(e) = producer.begin_transaction() {
            return txn_error(&producer, "begin_transaction", &e)
                .err()
                .unwrap_or(EXIT_FATAL);
        }
        let mut first: HashMap<i32, i64> = HashMap::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (p, o, key, value) in &batch {
            first.entry(*p).or_insert(*o);
            next.insert(*p, o + 1);
            let out = format!("out-{value}");
            let mut rec = BaseRecord::to(&a.output)
                .partition(*p)
                .key(key.as_slice())
                .payload(out.as_bytes());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => {
                        println!("WORKER send failed: {e}");
                        return EXIT_FATAL;
                    }
                }
            }
        }
        // Pacing inside the transaction: a kill is likely to land while it is open.
        if a.pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.pace_ms));
        }
        let zombie = a.pause_after == Some(txns);
        if zombie {
            // The transaction's records reach the log, then this process freezes: the parent
            // replaces it and later resumes it.
            let f = producer.flush(Duration::from_secs(15));
            println!("WORKER paused records={} flush={f:?}", batch.len());
            // SAFETY: raise(3) on ourselves.
            unsafe { libc::raise(libc::SIGSTOP) };
            println!("WORKER resumed");
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets
                .add_partition_offset(&a.input, *p, Offset::Offset(*o))
                .expect("tpl");
        }
        let Some(gm) = consumer.group_metadata() else {
            println!("WORKER the consumer has no group metadata");
            return EXIT_FATAL;
        };
        let result = producer
            .send_offsets_to_transaction(&offsets, &gm, Duration::from_secs(30))
            .and_then(|()| commit_retrying(&producer, deadline));
        match result {
            Ok(()) => {
                if zombie {
                    println!("WORKER zombie committed its transaction");
                    return EXIT_ZOMBIE_COMMITTED;
                }
                txns += 1;
                records += batch.len() as u64;
                println!("WORKER committed txns={txns} records={records}");
            }
            Err(e) => {
                if let Err(code) = txn_error(&producer, "send_offsets/commit", &e) {
                    return code;
                }
                if let Err(e) = producer.abort_transaction(Duration::from_secs(30)) {
                    println!("WORKER abort_transaction failed: {e}");
                    return EXIT_FATAL;
                }
                // Continue from the committed offsets: rewind to the start of the batch.
                for (p, o) in &first {
                    if let Err(e) =
                        consumer.seek(&a.input, *p, Offset::Offset(*o), Duration::from_secs(10))
                    {
                        println!("WORKER seek {p}/{o} after abort failed: {e}");
                        return EXIT_FATAL;
                    }
                }
                println!(
                    "WORKER aborted a transaction of {} records and rewound",
                    batch.len()
                );
            }
        }
    }
}

/// commit_transaction, retried while librdkafka calls the error retriable.
fn commit_retrying<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    deadline: Instant,
) -> Result<(), KafkaError> {
    loop {
        match producer.commit_transaction(Duration::from_secs(30)) {
            Err(KafkaError::Transaction(t)) if t.is_retriable() && Instant::now() < deadline => {
                println!("WORKER commit_transaction: {t}; retrying");
            }
            r => return r,
        }
    }
}

/// The worker process's entry point; a no-op unless run by the ctp tests.
#[test]
#[ignore = "worker process of the consume-transform-produce tests, started by them"]
fn ctp_worker() {
    let Some(args) = WorkerArgs::from_env() else {
        return;
    };
    // Die with the test that started us.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let code = worker_main(&args);
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// 4. Consume-transform-produce: the parent side

/// A running worker process and what it printed.
struct Worker {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    exit: Option<i32>,
}

impl Worker {
    fn output(&self) -> String {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(40)..].join("\n")
    }

    /// Everything it printed except the per-transaction progress lines.
    fn events(&self) -> String {
        let l = self.lines.lock().unwrap();
        let v: Vec<&str> = l
            .iter()
            .filter(|l| !l.starts_with("WORKER committed"))
            .map(|l| l.as_str())
            .collect();
        v[v.len().saturating_sub(60)..].join("\n")
    }

    fn has_line(&self, prefix: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    }

    /// The exit code if it has exited (a signal counts as -signal).
    fn try_exit(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                self.exit = Some(st.code().unwrap_or_else(|| -st.signal().unwrap_or(0)));
            }
        }
        self.exit
    }

    fn signal(&mut self, sig: libc::c_int) {
        assert!(
            self.try_exit().is_none(),
            "worker {} already exited",
            self.name
        );
        // SAFETY: kill(2) on the PID of our own unreaped child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) of worker {}", self.name);
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.exit = Some(-libc::SIGKILL);
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.try_exit() {
                return Some(c);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process state letter from /proc/PID/stat (R, S, T, ...).
    fn proc_state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/PID/stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after.chars().next().expect("state")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill(); // SIGKILL, our child only (also if stopped)
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- worker {} output (last 40 lines) ---\n{}",
                self.name,
                self.output()
            );
        }
    }
}

/// One consume-transform-produce setup: broker, topics, group and transactional id.
struct Ctp {
    name: String,
    broker: Broker,
    input: String,
    output: String,
    group: String,
    txn_id: String,
    partitions: i32,
    total: i64,
    pace_ms: u64,
    spawned: usize,
    /// Reads the group's committed offsets (OffsetFetch only; it never joins).
    monitor: BaseConsumer,
}

impl Ctp {
    fn new(name: &str, total: i64, pace_ms: u64) -> Ctp {
        let broker = Broker::start(name, BrokerOptions::default());
        let boot = broker.bootstrap().to_string();
        let partitions = 3;
        let input = format!("{name}-in");
        let output = format!("{name}-out");
        create_topic(&boot, &input, partitions, &[]);
        create_topic(&boot, &output, partitions, &[]);
        // The input: `in-<i>`, round-robin over the partitions.
        let producer: ThreadedProducer<DefaultProducerContext> = client_config(&boot)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("input producer");
        for i in 0..total {
            send(
                &producer,
                &input,
                (i % partitions as i64) as i32,
                &format!("k{i}"),
                &format!("in-{i}"),
            );
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("flush input");
        let group = format!("{name}-group");
        let monitor: BaseConsumer = client_config(&boot)
            .set("group.id", &group)
            .set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .create()
            .expect("monitor consumer");
        Ctp {
            name: name.to_string(),
            broker,
            input,
            output,
            txn_id: format!("{name}-txn"),
            group,
            partitions,
            total,
            pace_ms,
            spawned: 0,
            monitor,
        }
    }

    fn spawn(&mut self, pause_after: Option<u64>) -> Worker {
        self.spawned += 1;
        let name = format!("{}-w{}", self.name, self.spawned);
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "ctp_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(WORKER_ENV, self.broker.bootstrap())
        .env("STRAIT_TXN_INPUT", &self.input)
        .env("STRAIT_TXN_OUTPUT", &self.output)
        .env("STRAIT_TXN_GROUP", &self.group)
        .env("STRAIT_TXN_ID", &self.txn_id)
        .env("STRAIT_TXN_PARTITIONS", self.partitions.to_string())
        .env("STRAIT_TXN_TOTAL", self.total.to_string())
        .env("STRAIT_TXN_PACE_MS", self.pace_ms.to_string())
        .env_remove("STRAIT_TXN_PAUSE_AFTER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(n) = pause_after {
            cmd.env("STRAIT_TXN_PAUSE_AFTER", n.to_string());
        }
        let mut child = cmd.spawn().expect("spawn worker");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        println!("[{}] started worker {name} pid {}", self.name, child.id());
        Worker {
            name,
            child,
            lines,
            exit: None,
        }
    }

    /// Sum of the group's committed offsets of the input (None while the broker is away).
    fn progress(&self) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.input, p);
        }
        let got = self
            .monitor
            .committed_offsets(tpl, Duration::from_secs(2))
            .ok()?;
        Some(
            got.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum(),
        )
    }

    /// Supervises `w` until the group's progress reaches `at_least` (returns true) or the
    /// worker finishes (returns false). A worker that exits with an error is replaced (at most
    /// `restarts` times in all).
    fn run_until(
        &mut self,
        w: &mut Worker,
        at_least: i64,
        timeout: Duration,
        restarts: &mut u32,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.progress().is_some_and(|p| p >= at_least) {
                return true;
            }
            if let Some(code) = w.try_exit() {
                if code == EXIT_DONE {
                    return false;
                }
                println!(
                    "[{}] worker {} exited with {code}; its last lines:\n{}",
                    self.name,
                    w.name,
                    w.output()
                );
                assert!(
                    *restarts > 0,
                    "worker {} exited with {code} and no restarts are left",
                    w.name
                );
                *restarts -= 1;
                *w = self.spawn(None);
            }
            assert!(
                Instant::now() < deadline,
                "[{}] progress {:?} < {at_least} after {timeout:?}; worker {} output:\n{}",
                self.name,
                self.progress(),
                w.name,
                w.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Supervises `w` (replacing failed workers) until a worker finishes successfully.
    fn finish(&mut self, w: &mut Worker, timeout: Duration, restarts: &mut u32) {
        let finished = !self.run_until(w, i64::MAX, timeout, restarts);
        assert!(finished);
        assert_eq!(w.try_exit(), Some(EXIT_DONE));
    }

    /// Checks exactly-once: the output read with read_committed holds `out-in-<i>` for every
    /// input record exactly once, and the committed offsets are the input's end. Returns the
    /// number of records a read_uncommitted consumer sees (aborted ones included).
    fn verify(&self) -> usize {
        let boot = self.broker.bootstrap();
        let rc = assigned_consumer(boot, &self.output, self.partitions, "read_committed");
        let got = drain(
            &rc,
            self.partitions,
            self.total as usize,
            Duration::from_secs(60),
            "read_committed output",
        );
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for v in got.values() {
            *count.entry(v.as_str()).or_default() += 1;
        }
        let dups: Vec<(&&str, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
        let want: BTreeSet<String> = (0..self.total).map(|i| format!("out-in-{i}")).collect();
        let have: BTreeSet<String> = count.keys().map(|s| s.to_string()).collect();
        let missing: Vec<&String> = want.difference(&have).collect();
        let extra: Vec<&String> = have.difference(&want).collect();
        assert!(
            dups.is_empty() && missing.is_empty() && extra.is_empty(),
            "[{}] output is not exactly once: {} duplicated (first {:?}), {} missing (first {:?}), {} unexpected (first {:?}); {} records read",
            self.name,
            dups.len(),
            &dups[..dups.len().min(5)],
            missing.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)],
            got.len()
        );
        assert_eq!(got.len() as i64, self.total);
        // Each output record sits in the partition of its input record.
        for ((p, _), v) in &got {
            let i: i64 = v["out-in-".len()..].parse().unwrap();
            assert_eq!(
                i % self.partitions as i64,
                *p as i64,
                "{v} in partition {p}"
            );
        }
        let mut progress = None;
        let settled = common::wait_until(Duration::from_secs(10), || {
            progress = self.progress();
            progress == Some(self.total)
        });
        assert!(
            settled,
            "[{}] the group's committed offsets sum to {progress:?}, want {}",
            self.name, self.total
        );
        let ru = assigned_consumer(boot, &self.output, self.partitions, "read_uncommitted");
        let all = drain(
            &ru,
            self.partitions,
            0,
            Duration::from_secs(60),
            "read_uncommitted output",
        );
        println!(
            "[{}] exactly once: {} committed output records; read_uncommitted sees {} (aborted included)",
            self.name,
            got.len(),
            all.len()
        );
        all.len()
    }
}

const CTP_TOTAL: i64 = 5_000;

#[test]
fn ctp_clean_run_is_exactly_once() {
    let t0 = Instant::now();
    let mut ctp = Ctp::new("ctp-clean", CTP_TOTAL, 0);
    let mut w = ctp.spawn(None);
    let mut restarts = 0;
    ctp.finish(&mut w, Duration::from_secs(90), &mut restarts);
    println!("[ctp-clean] worker events:\n{}", w.events());
    ctp.verify();
    ctp.broker.stop();
    println!("[ctp-clean] total {:?}", t0.elapsed());
}

#[test]
fn ctp_survives_broker_sigkill() {
    let t0 = Instant::now();
    let kills: i64 = std::env::var("STRAIT_CTP_KILLS")
        .ok()
        .map(|s| s.parse().expect("STRAIT_CTP_KILLS must be a number"))
        .unwrap_or(2);
    let mut rng = Rng::from_env("ctp-broker-kill");
    let pace_ms: u64 = std::env::var("STRAIT_CTP_PACE_MS")
        .ok()
        .map(|s| s.parse().expect("STRAIT_CTP_PACE_MS must be a number"))
        .unwrap_or(20);
    let mut ctp = Ctp::new("ctp-broker-kill", CTP_TOTAL, pace_ms);
    let mut w = ctp.spawn(None);
    let mut restarts = 2 * kills as u32 + 2;
    for k in 1..=kills {
        let reached = ctp.run_until(
            &mut w,
            CTP_TOTAL * k / (kills + 1),
            Duration::from_secs(60),
            &mut restarts,
        );
        assert!(
            reached,
            "the worker finished before kill #{k}: the run is too short"
        );
        // A random moment, most likely inside a transaction (the worker paces inside them).
        std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
        let before = ctp.progress();
        ctp.broker.kill9();
        println!("[ctp-broker-kill] broker SIGKILL #{k} at progress {before:?}");
        ctp.broker.restart();
    }
    ctp.finish(&mut w, Duration::from_secs(90), &mut restarts);
    println!(
        "[ctp-broker-kill] {} workers started; last worker's events:\n{}",
        ctp.spawned,
        w.events()
    );
    ctp.verify();
    ctp.broker.stop();
    println!("[ctp-broker-kill] total {:?}", t0.elapsed());
}

#[test]
fn ctp_fences_zombie_and_survives_worker_sigkill() {
    let t0 = Instant::now();
    let mut ctp = Ctp::new("ctp-zombie", CTP_TOTAL, 20);

    // A freezes in the middle of its 11th transaction, its records already in the log.
    let mut a = ctp.spawn(Some(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.has_line("WORKER paused") && a.proc_state() == 'T') {
        assert!(
            a.try_exit().is_none(),
            "worker A exited early:\n{}",
            a.output()
        );
        assert!(
            Instant::now() < deadline,
            "worker A did not pause:\n{}",
            a.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_pause = ctp.progress().expect("progress");
    println!("[ctp-zombie] worker A stopped mid-transaction at progress {at_pause}");

    // B takes over with the same transactional.id: its init_transactions fences A and aborts
    // A's open transaction.
    let mut b = ctp.spawn(None);
    let mut no_restarts = 0;
    let reached = ctp.run_until(
        &mut b,
        at_pause + 300,
        Duration::from_secs(60),
        &mut no_restarts,
    );
    assert!(reached, "worker B finished before A was resumed");

    // The zombie resumes: it must be fenced, never commit.
    a.signal(libc::SIGCONT);
    let code = a.wait(Duration::from_secs(60));
    println!(
        "[ctp-zombie] resumed zombie A exited with {code:?}; its output:\n{}",
        a.output()
    );
    assert_eq!(
        code,
        Some(EXIT_FENCED),
        "the resumed zombie must fail with a fencing error (exit {EXIT_FENCED}; {EXIT_ZOMBIE_COMMITTED} means it committed)"
    );

    // SIGKILL B mid-run; C (same transactional.id) finishes.
    let reached = ctp.run_until(
        &mut b,
        CTP_TOTAL * 2 / 3,
        Duration::from_secs(60),
        &mut no_restarts,
    );
    assert!(reached, "worker B finished before it could be killed");
    b.kill9();
    println!(
        "[ctp-zombie] worker B SIGKILLed at progress {:?}",
        ctp.progress()
    );
    let mut c = ctp.spawn(None);
    let mut restarts = 2;
    ctp.finish(&mut c, Duration::from_secs(90), &mut restarts);
    let paused: usize = a
        .lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.strip_prefix("WORKER paused records=")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("paused line");
    let uncommitted = ctp.verify();
    assert!(
        uncommitted >= CTP_TOTAL as usize + paused,
        "read_uncommitted sees {uncommitted} records: the zombie's {paused} flushed records should be in the log (aborted)"
    );
    ctp.broker.stop();
    println!("[ctp-zombie] total {:?}", t0.elapsed());
}
