//! Idempotent producers: retried batches must never be stored twice.
//!
//! 1. Raw protocol replay: InitProducerId, then a Produce whose batch carries the producer id,
//!    epoch and sequence 0, sent twice byte for byte: the second answer is the first one's base
//!    offset with no error, and nothing new is appended. A batch that skips sequence numbers
//!    gets OUT_OF_ORDER_SEQUENCE_NUMBER (45). A retry of a batch that is no longer among the
//!    last five cached ones must not be appended either. The broker is SIGKILLed and restarted
//!    (twice): the sequence state rebuilt from the log still answers replays as duplicates with
//!    their original offsets and still refuses gaps. The log is fetched and checked record by
//!    record after every step.
//! 2. A dropping proxy: an rdkafka idempotent producer (acks=all) talks to the broker through a
//!    TCP proxy in this test that, at seeded random moments, reads a Produce response from the
//!    broker and closes both connections instead of forwarding it. The producer retries batches
//!    the broker already stored; at the end every message must be in the log exactly once, in
//!    order, at the offset its delivery report named, with no gaps.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{
    client_config, consumer_config, create_topic, Broker, BrokerOptions, DroppingProxy, KafkaConn,
    ProxyPolicy, Rng,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    ProduceRequest, ProduceResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

// ---------------------------------------------------------------------------------------
// Raw protocol helpers

/// `count` records of one idempotent batch starting at sequence `first_seq`; values are
/// `{tag}-{sequence}`.
fn idempotent_batch(pid: i64, epoch: i16, first_seq: i32, count: i32, tag: &str) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // offset - sequence is constant, so the encoder keeps all records in one batch
            // with base sequence `first_seq`
            sequence: first_seq + i,
            timestamp: common::now_ms(),
            key: Some(Bytes::from(format!("k{}", first_seq + i))),
            value: Some(Bytes::from(format!("{tag}-{}", first_seq + i))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    assert_eq!(
        i64::from_be_bytes(buf[43..51].try_into().unwrap()),
        pid,
        "encoded producer id"
    );
    assert_eq!(
        i32::from_be_bytes(buf[53..57].try_into().unwrap()),
        first_seq,
        "encoded base sequence"
    );
    assert_eq!(
        i32::from_be_bytes(buf[57..61].try_into().unwrap()),
        count,
        "records in the encoded batch (one batch)"
    );
    buf.freeze()
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn produce_request(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

/// Sends a Produce v9 for partition 0 and returns (error code, base offset).
fn produce(c: &mut KafkaConn, topic: &str, batch: &Bytes) -> (i16, i64) {
    let r: ProduceResponse = c
        .request(&produce_request(topic, batch.clone()), 9)
        .expect("Produce v9");
    assert_eq!(r.responses.len(), 1, "one topic in {r:?}");
    let p = &r.responses[0].partition_responses;
    assert_eq!(p.len(), 1, "one partition in {r:?}");
    (p[0].error_code, p[0].base_offset)
}

/// InitProducerId v4 without a transactional id: (producer id, epoch).
fn init_producer_id(c: &mut KafkaConn) -> (i64, i16) {
    let r: InitProducerIdResponse = c
        .request(
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
            4,
        )
        .expect("InitProducerId v4");
    assert_eq!(r.error_code, 0, "InitProducerId error: {r:?}");
    assert!(r.producer_id.0 >= 0, "InitProducerId producer id: {r:?}");
    assert!(r.producer_epoch >= 0, "InitProducerId epoch: {r:?}");
    (r.producer_id.0, r.producer_epoch)
}

/// Every record of partition 0 from offset 0 up to the high watermark, read with Fetch v12
/// (read_uncommitted): (offset, producer id, sequence, value).
fn fetch_all(c: &mut KafkaConn, topic: &str) -> Vec<(i64, i64, i32, String)> {
    let mut out = Vec::new();
    let mut next = 0i64;
    for _ in 0..1000 {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(8 << 20)])]);
        let r: FetchResponse = c.request(&req, 12).expect("Fetch v12");
        assert_eq!(r.error_code, 0, "Fetch error: {r:?}");
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch partition error: {p:?}");
        if next >= p.high_watermark {
            return out;
        }
        let mut bytes = p.records.clone().unwrap_or_default();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).expect("decode fetched batches");
        let mut got = false;
        for set in sets {
            for rec in set.records {
                if rec.offset < next {
                    continue;
                }
                got = true;
                next = rec.offset + 1;
                let value =
                    String::from_utf8(rec.value.unwrap_or_default().to_vec()).expect("utf-8 value");
                out.push((rec.offset, rec.producer_id, rec.sequence, value));
            }
        }
        assert!(
            got,
            "Fetch at {next} below high watermark {} returned no records",
            p.high_watermark
        );
    }
    panic!("more than 1000 fetches to read {topic}");
}

/// The log must hold exactly `expected` = [(producer id, sequence, value)] at offsets 0, 1, ...
fn assert_log(c: &mut KafkaConn, topic: &str, expected: &[(i64, i32, String)], context: &str) {
    let got = fetch_all(c, topic);
    let want: Vec<(i64, i64, i32, String)> = expected
        .iter()
        .enumerate()
        .map(|(o, (pid, seq, v))| (o as i64, *pid, *seq, v.clone()))
        .collect();
    assert_eq!(
        got,
        want,
        "log contents {context}: want {} records exactly once each, got {}",
        want.len(),
        got.len()
    );
}

fn expect_records(pid: i64, first_seq: i32, count: i32, tag: &str) -> Vec<(i64, i32, String)> {
    (first_seq..first_seq + count)
        .map(|s| (pid, s, format!("{tag}-{s}")))
        .collect()
}

#[test]
fn replayed_batches_are_deduplicated_also_after_restart() {
    let mut broker = Broker::start("idem-replay", BrokerOptions::default());
    let topic = "idem-replay";
    create_topic(broker.bootstrap(), topic, 1, &[]);
    let mut c = KafkaConn::connect(broker.bootstrap()).expect("connect");
    let (pid, epoch) = init_producer_id(&mut c);
    println!("[idem-replay] producer id {pid}, epoch {epoch}");

    // b0: sequences 0..=2 at offset 0; sent twice, byte for byte.
    let b0 = idempotent_batch(pid, epoch, 0, 3, "b0");
    assert_eq!(produce(&mut c, topic, &b0), (0, 0), "first send of b0");
    assert_eq!(
        produce(&mut c, topic, &b0),
        (0, 0),
        "replay of b0: a duplicate must be answered with its original offset and no error"
    );
    let mut want = expect_records(pid, 0, 3, "b0");
    assert_log(&mut c, topic, &want, "after b0 and its replay");

    // A gap: the next expected sequence is 3.
    let gap = idempotent_batch(pid, epoch, 8, 2, "gap");
    assert_eq!(
        produce(&mut c, topic, &gap).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "batch starting at sequence 8 when 3 is expected"
    );

    // b1 continues the sequence; b0 (no longer the latest batch) is still recognised.
    let b1 = idempotent_batch(pid, epoch, 3, 3, "b1");
    assert_eq!(produce(&mut c, topic, &b1), (0, 3), "b1");
    assert_eq!(produce(&mut c, topic, &b0), (0, 0), "second replay of b0");
    assert_eq!(produce(&mut c, topic, &b1), (0, 3), "replay of b1");
    want.extend(expect_records(pid, 3, 3, "b1"));
    assert_log(&mut c, topic, &want, "after b1 and replays");

    // SIGKILL: the sequence state must be rebuilt from the log.
    broker.kill9();
    broker.restart();
    let mut c = KafkaConn::connect(broker.bootstrap()).expect("reconnect");
    assert_eq!(
        produce(&mut c, topic, &b1),
        (0, 3),
        "replay of b1 after SIGKILL + restart (dedup state rebuilt from the log)"
    );
    assert_eq!(
        produce(&mut c, topic, &b0),
        (0, 0),
        "replay of b0 after SIGKILL + restart"
    );
    let gap = idempotent_batch(pid, epoch, 9, 1, "gap");
    assert_eq!(
        produce(&mut c, topic, &gap).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "gap after restart (6 expected, 9 sent)"
    );
    let b2 = idempotent_batch(pid, epoch, 6, 3, "b2");
    assert_eq!(produce(&mut c, topic, &b2), (0, 6), "b2 after restart");
    want.extend(expect_records(pid, 6, 3, "b2"));
    assert_log(&mut c, topic, &want, "after the restart and replays");

    // Five more batches push b0 out of the five-batch cache: its replay must not be appended
    // (Kafka answers OUT_OF_ORDER_SEQUENCE_NUMBER).
    let mut last = b2.clone();
    let mut last_offset = 6;
    for k in 0..5 {
        let seq = 9 + 3 * k;
        let tag = format!("c{k}");
        let b = idempotent_batch(pid, epoch, seq, 3, &tag);
        assert_eq!(
            produce(&mut c, topic, &b),
            (0, seq as i64),
            "batch {tag} at sequence {seq}"
        );
        want.extend(expect_records(pid, seq, 3, &tag));
        last = b;
        last_offset = seq as i64;
    }
    let (code, offset) = produce(&mut c, topic, &b0);
    println!("[idem-replay] replay of an evicted batch: error {code}, offset {offset}");
    assert!(
        code != 0 || offset == 0,
        "replay of b0 (no longer cached) was appended again at offset {offset}"
    );
    assert_log(&mut c, topic, &want, "after replaying an evicted batch");

    // A second SIGKILL: the newest batch is still a duplicate, its successor still appends.
    broker.kill9();
    broker.restart();
    let mut c = KafkaConn::connect(broker.bootstrap()).expect("reconnect");
    assert_eq!(
        produce(&mut c, topic, &last),
        (0, last_offset),
        "replay of the newest batch after a second SIGKILL"
    );
    let next_seq = want.len() as i32;
    let b = idempotent_batch(pid, epoch, next_seq, 2, "end");
    assert_eq!(
        produce(&mut c, topic, &b),
        (0, next_seq as i64),
        "next batch after the second restart"
    );
    want.extend(expect_records(pid, next_seq, 2, "end"));
    assert_log(&mut c, topic, &want, "at the end");
    broker.stop();
}

// ---------------------------------------------------------------------------------------
// A proxy policy that drops Produce responses

/// Drops the Produce responses whose arrival index is in `drop_at` (the proxy then closes the
/// connection), and counts the batches clients send more than once.
#[derive(Default)]
struct ProduceDrops {
    /// Produce responses seen so far (forwarded or dropped).
    produce_responses: AtomicU64,
    dropped: AtomicU64,
    /// 0-based indices (in the order they arrive) of the Produce responses to drop.
    drop_at: HashSet<u64>,
    /// (producer id, partition, base sequence) of every batch forwarded to the broker.
    batches_seen: Mutex<HashSet<(i64, i32, i32)>>,
    /// Batches forwarded again with a (producer id, partition, sequence) already forwarded.
    batches_resent: AtomicU64,
}

impl ProxyPolicy for ProduceDrops {
    fn on_request(&self, frame: &[u8]) {
        if i16::from_be_bytes([frame[4], frame[5]]) == 0 {
            self.note_produce_batches(frame);
        }
    }

    fn drop_response(&self, api_key: i16) -> bool {
        if api_key != 0 {
            return false;
        }
        let i = self.produce_responses.fetch_add(1, Ordering::SeqCst);
        let drop = self.drop_at.contains(&i);
        if drop {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        drop
    }
}

impl ProduceDrops {
    /// Records (producer id, partition, base sequence) of every batch in a Produce request
    /// frame and counts the batches sent more than once (retries the broker must deduplicate).
    fn note_produce_batches(&self, frame: &[u8]) {
        let mut buf = Bytes::copy_from_slice(&frame[4..]);
        let version = i16::from_be_bytes([frame[6], frame[7]]);
        let Ok(_) = RequestHeader::decode(&mut buf, ProduceRequest::header_version(version)) else {
            return;
        };
        let Ok(req) = ProduceRequest::decode(&mut buf, version) else {
            return;
        };
        let mut seen = self.batches_seen.lock().unwrap();
        for t in &req.topic_data {
            for p in &t.partition_data {
                let mut records = p.records.clone().unwrap_or_default();
                for b in RecordBatchDecoder::decode_batch_info(&mut records).unwrap_or_default() {
                    if !seen.insert((b.producer_id, p.index, b.base_sequence)) {
                        self.batches_resent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// rdkafka producer through the proxy

#[derive(Default)]
struct Reports {
    /// seq -> (partition, offset) of each successful delivery report.
    acked: Mutex<HashMap<u64, (i32, i64)>>,
    failed: Mutex<Vec<(u64, String)>>,
    twice: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
    fatal: AtomicBool,
}

struct Ctx(Arc<Reports>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.0.fatal.store(true, Ordering::SeqCst);
        }
        let mut e = self.0.errors.lock().unwrap();
        if e.len() < 100 {
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
                if self
                    .0
                    .acked
                    .lock()
                    .unwrap()
                    .insert(seq, (m.partition(), m.offset()))
                    .is_some()
                {
                    self.0.twice.lock().unwrap().push(seq);
                }
            }
            Err((e, _)) => self.0.failed.lock().unwrap().push((seq, e.to_string())),
        }
    }
}

#[test]
fn producer_retries_through_a_dropping_proxy_store_each_message_once() {
    const N: u64 = 20_000;
    const PARTITIONS: i32 = 3;
    const DROPS: usize = 8;
    let topic = "idem-proxy";
    let t0 = Instant::now();
    let mut rng = Rng::from_env("idem-proxy");

    // The broker advertises the proxy, so every client connection goes through it.
    let listener = DroppingProxy::<ProduceDrops>::bind();
    let proxy_addr = listener.local_addr().expect("proxy addr");
    let mut broker = Broker::start(
        "idem-proxy",
        BrokerOptions {
            extra: vec!["--advertise".into(), proxy_addr.to_string()],
            ..Default::default()
        },
    );
    let mut drop_at = HashSet::new();
    while drop_at.len() < DROPS {
        drop_at.insert(rng.range(1, 40));
    }
    let mut plan: Vec<u64> = drop_at.iter().copied().collect();
    plan.sort();
    println!("[idem-proxy] dropping Produce responses number {plan:?}");
    let upstream: SocketAddr = broker.bootstrap().parse().expect("broker address");
    let proxy = DroppingProxy::run(
        listener,
        upstream,
        ProduceDrops {
            drop_at,
            ..Default::default()
        },
    );
    let boot = proxy.addr.to_string();
    create_topic(&boot, topic, PARTITIONS, &[]);

    let reports = Arc::new(Reports::default());
    let producer: ThreadedProducer<Ctx> = client_config(&boot)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "100")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "200")
        .create_with_context(Ctx(reports.clone()))
        .expect("create producer");
    for seq in 0..N {
        let value = seq.to_string();
        let mut rec = BaseRecord::with_opaque_to(topic, seq as usize)
            .partition((seq % PARTITIONS as u64) as i32)
            .payload(value.as_bytes())
            .key(value.as_bytes());
        let mut tries = 0;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    tries += 1;
                    assert!(tries < 10_000, "producer queue stays full");
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("send of message {seq}: {e}"),
            }
        }
        if seq % 500 == 499 {
            // Spread the messages over many Produce requests.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush: every message delivered within 60 s");
    let produced_in = t0.elapsed();
    broker.assert_running("after producing");
    let dropped = proxy.policy.dropped.load(Ordering::SeqCst);
    let errors = reports.errors.lock().unwrap().clone();
    println!(
        "[idem-proxy] produced {N} in {produced_in:?}: {} Produce responses, {dropped} dropped, {} proxied connections, client errors {:?}",
        proxy.policy.produce_responses.load(Ordering::SeqCst),
        proxy.connections(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        !reports.fatal.load(Ordering::SeqCst),
        "fatal producer error: {:?} (errors {:?})",
        producer.client().fatal_error(),
        reports.errors.lock().unwrap()
    );
    let resent = proxy.policy.batches_resent.load(Ordering::SeqCst);
    println!(
        "[idem-proxy] {} distinct batches forwarded, {resent} of them forwarded again",
        proxy.policy.batches_seen.lock().unwrap().len()
    );
    assert!(
        resent > 0,
        "no batch was sent twice: the broker's duplicate detection was not exercised"
    );
    assert!(
        dropped >= 4,
        "only {dropped} Produce responses were dropped: the retry path was hardly exercised"
    );
    let failed = reports.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let twice = reports.twice.lock().unwrap().clone();
    assert!(
        twice.is_empty(),
        "messages reported delivered twice: {twice:?}"
    );
    let acked = std::mem::take(&mut *reports.acked.lock().unwrap());
    assert_eq!(acked.len() as u64, N, "successful delivery reports");
    // Message `seq` is the (seq / 3)-th of partition seq % 3.
    let mut wrong: Vec<String> = acked
        .iter()
        .filter(|(seq, (p, o))| {
            (*p as u64, *o as u64) != (*seq % PARTITIONS as u64, *seq / PARTITIONS as u64)
        })
        .map(|(seq, po)| format!("message {seq} acknowledged at {po:?}"))
        .collect();
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} wrong acknowledged offsets, first {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    drop(producer);

    // Read everything back.
    let consumer: BaseConsumer = consumer_config(&boot, "error")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("fetch_watermarks");
        let want = (N + (PARTITIONS - 1 - p) as u64) / PARTITIONS as u64;
        assert_eq!(
            (lo, hi),
            (0, want as i64),
            "partition {p} watermarks (one copy of each of its {want} messages)"
        );
        total += hi;
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: Vec<i64> = vec![0; PARTITIONS as usize];
    let mut problems = Vec::new();
    let mut consumed = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed < total {
        assert!(
            Instant::now() < deadline,
            "consumed only {consumed} of {total} messages within 60 s"
        );
        let Some(r) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = r.expect("consume error");
        let (p, o) = (m.partition(), m.offset());
        let seq: u64 = std::str::from_utf8(m.payload().unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if o != next[p as usize] {
            problems.push(format!(
                "partition {p}: offset {o} after {}",
                next[p as usize] - 1
            ));
        }
        if (seq % PARTITIONS as u64, seq / PARTITIONS as u64) != (p as u64, o as u64) {
            problems.push(format!("{p}/{o} holds message {seq}"));
        }
        next[p as usize] = o + 1;
        consumed += 1;
    }
    assert!(
        problems.is_empty(),
        "{} problems, first {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    println!(
        "[idem-proxy] consumed {consumed} messages, each exactly once and in order; total {:?}",
        t0.elapsed()
    );
    drop(consumer);
    broker.stop();
    drop(proxy);
}
