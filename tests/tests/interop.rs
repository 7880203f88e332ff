//! Interoperability with librdkafka (through the rdkafka crate): produce messages with keys,
//! values, headers (duplicate keys, null values) and explicit CreateTime timestamps with each
//! compression codec (none, gzip, snappy, lz4, zstd), then read everything back with
//! `assign()` and compare byte for byte against what each delivery report said was written
//! where: key, value, headers (order and duplicates), timestamp, dense offsets per partition,
//! counts and watermarks. Finally checks that the stored batches kept the producers'
//! compression, stops the broker cleanly and runs `strait log verify`.
//!
//! `STRAIT_INTEROP_N` overrides the number of messages per codec (default 100 000).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    client_config, consumer_config, create_topic, now_ms, stored_batches, Broker, BrokerOptions,
    Rng,
};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "interop";
const PARTITIONS: i32 = 3;
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// One produced message, as the consumer must see it.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

/// Deterministic message `i`: a mix of null/empty/binary/text keys and values, and header
/// lists with duplicate keys, null and empty values, in varying order.
fn make_msg(i: usize, rng: &mut Rng, base_ts: i64) -> Msg {
    let key = match i % 13 {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some({
            let n = rng.range(1, 40) as usize;
            rng.bytes(n)
        }),
        _ => Some(format!("key-{i}").into_bytes()),
    };
    let value = match i % 17 {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some({
            let n = rng.range(1, 300) as usize;
            rng.bytes(n)
        }),
        3 if i % 1000 == 3 => Some(rng.bytes(20_000)),
        _ => {
            // compressible text, so that the codecs really compress
            let n = rng.range(1, 12) as usize;
            Some(format!("value-{i}-").repeat(n).into_bytes())
        }
    };
    let headers = match i % 7 {
        0 => Vec::new(),
        1 => vec![("h".to_string(), Some(b"1".to_vec()))],
        2 => vec![
            ("dup".to_string(), Some(b"first".to_vec())),
            ("other".to_string(), None),
            ("dup".to_string(), Some(b"second".to_vec())),
            ("dup".to_string(), None),
        ],
        3 => vec![
            ("null".to_string(), None),
            ("empty".to_string(), Some(Vec::new())),
        ],
        4 => vec![
            (
                "bin".to_string(),
                Some({
                    let n = rng.range(1, 64) as usize;
                    rng.bytes(n)
                }),
            ),
            ("i".to_string(), Some(i.to_string().into_bytes())),
            ("bin".to_string(), Some(rng.bytes(3))),
        ],
        5 => vec![(format!("k{}", i % 5), Some(format!("v{i}").into_bytes()))],
        _ => vec![
            ("z".to_string(), Some(b"last".to_vec())),
            ("a".to_string(), None),
        ],
    };
    Msg {
        key,
        value,
        headers,
        timestamp: base_ts + i as i64,
    }
}

/// Delivery outcome per message number: (partition, offset) or the error.
type Deliveries = HashMap<usize, Result<(i32, i64), String>>;

/// Records the delivery report of each message, indexed by message number.
struct DeliveryLog {
    results: Mutex<Deliveries>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let v = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.results.lock().unwrap().insert(idx, v);
    }
}

fn produce_codec(bootstrap: &str, codec: &str, msgs: &[Msg], first_idx: usize) -> Deliveries {
    let mut cfg = client_config(bootstrap);
    cfg.set("compression.type", codec)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set(
            "enable.idempotence",
            if codec == "gzip" || codec == "zstd" {
                "true"
            } else {
                "false"
            },
        );
    let producer: BaseProducer<DeliveryLog> = cfg
        .create_with_context(DeliveryLog {
            results: Mutex::new(HashMap::new()),
        })
        .expect("create producer");
    for (j, m) in msgs.iter().enumerate() {
        let idx = first_idx + j;
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(TOPIC, idx)
            .timestamp(m.timestamp)
            .headers(headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &m.value {
            rec = rec.payload(v.as_slice());
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producer.send of message {idx} ({codec}): {e}"),
            }
        }
        if j % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("flush ({codec}): {e}"));
    let results = std::mem::take(&mut *producer.context().results.lock().unwrap());
    results
}

fn headers_of<M: Message>(m: &M) -> Vec<(String, Option<Vec<u8>>)> {
    match m.headers() {
        None => Vec::new(),
        Some(h) => h
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
            .collect(),
    }
}

#[test]
fn produce_and_consume_every_codec_byte_for_byte() {
    let per_codec: usize = std::env::var("STRAIT_INTEROP_N")
        .ok()
        .map(|s| s.parse().expect("STRAIT_INTEROP_N must be a number"))
        .unwrap_or(100_000);
    let t0 = Instant::now();
    let mut broker = Broker::start("interop", BrokerOptions::default());
    let boot = broker.bootstrap().to_string();
    create_topic(&boot, TOPIC, PARTITIONS, &[]);

    let mut rng = Rng::from_env("interop");
    // An hour ago, so that the timestamps are plausible and unique per message.
    let base_ts = now_ms() - 3_600_000;
    let total = per_codec * CODECS.len();
    let msgs: Vec<Msg> = (0..total).map(|i| make_msg(i, &mut rng, base_ts)).collect();

    // --- produce, one producer per codec
    let mut location: HashMap<(i32, i64), usize> = HashMap::with_capacity(total);
    let mut failures = Vec::new();
    for (c, codec) in CODECS.iter().enumerate() {
        let t = Instant::now();
        let first = c * per_codec;
        let results = produce_codec(&boot, codec, &msgs[first..first + per_codec], first);
        assert_eq!(
            results.len(),
            per_codec,
            "{codec}: {} delivery reports for {per_codec} messages",
            results.len()
        );
        for (idx, r) in results {
            match r {
                Ok(loc) => {
                    if let Some(prev) = location.insert(loc, idx) {
                        failures.push(format!(
                            "messages {prev} and {idx} both acknowledged at {loc:?}"
                        ));
                    }
                }
                Err(e) => failures.push(format!("message {idx} ({codec}) not delivered: {e}")),
            }
        }
        println!(
            "[interop] produced {per_codec} messages with compression {codec} in {:?}",
            t.elapsed()
        );
    }
    assert!(
        failures.is_empty(),
        "{} produce failures, first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    broker.assert_running("after producing");

    // --- per-partition counts and watermarks
    let mut per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, _) in location.keys() {
        *per_partition.entry(*p).or_default() += 1;
    }
    let consumer: BaseConsumer = consumer_config(&boot, "error")
        .set("enable.partition.eof", "false")
        .create()
        .expect("create consumer");
    for p in 0..PARTITIONS {
        let (lo, hi) = consumer
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("fetch_watermarks");
        let n = per_partition.get(&p).copied().unwrap_or(0);
        assert_eq!(
            (lo, hi),
            (0, n),
            "partition {p} watermarks (want 0 and the {n} acknowledged messages)"
        );
    }

    // --- consume everything with assign() from offset 0
    let t = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut seen = vec![false; total];
    let mut got = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while got < total && Instant::now() < deadline {
        let m = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(e)) => panic!("consumer error after {got} messages: {e}"),
            Some(Ok(m)) => m,
        };
        got += 1;
        let (p, o) = (m.partition(), m.offset());
        let want_next = next.get_mut(&p).expect("known partition");
        if o != *want_next && mismatches.len() < 20 {
            mismatches.push(format!(
                "partition {p}: offset {o} after {}",
                *want_next - 1
            ));
        }
        *want_next = o + 1;
        let Some(&idx) = location.get(&(p, o)) else {
            mismatches.push(format!("unexpected message at {p}/{o}"));
            continue;
        };
        if seen[idx] {
            mismatches.push(format!("message {idx} consumed twice"));
        }
        seen[idx] = true;
        let want = &msgs[idx];
        let actual = Msg {
            key: m.key().map(|k| k.to_vec()),
            value: m.payload().map(|v| v.to_vec()),
            headers: headers_of(&m),
            timestamp: match m.timestamp() {
                Timestamp::CreateTime(ts) => ts,
                other => {
                    mismatches.push(format!("{p}/{o}: timestamp {other:?}, want CreateTime"));
                    -1
                }
            },
        };
        if &actual != want && mismatches.len() < 20 {
            mismatches.push(format!(
                "{p}/{o} (message {idx}): got {actual:?}\n want {want:?}"
            ));
        }
    }
    // Nothing beyond what was produced may follow.
    let extra_deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < extra_deadline {
        if let Some(r) = consumer.poll(Duration::from_millis(100)) {
            let m = r.expect("consumer error");
            mismatches.push(format!("extra message at {}/{}", m.partition(), m.offset()));
        }
    }
    println!("[interop] consumed {got} messages in {:?}", t.elapsed());
    assert!(
        mismatches.is_empty(),
        "{} mismatches; first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(20)]
    );
    assert_eq!(got, total, "consumed {got} of {total} messages");
    assert!(seen.iter().all(|s| *s), "some messages were never consumed");
    drop(consumer);

    // --- the broker stored the producers' batches with their compression
    let mut codecs_on_disk = BTreeSet::new();
    let mut bad_crc = 0;
    for p in 0..PARTITIONS {
        for seg in common::segment_files(&broker.partition_dir(TOPIC, p)) {
            match stored_batches(&seg) {
                Some(batches) => {
                    for b in batches {
                        codecs_on_disk.insert(b.attributes & 7);
                        bad_crc += usize::from(!b.crc_ok);
                    }
                }
                None => println!(
                    "[interop] {} is not a plain RecordBatch file; skipping the on-disk codec check",
                    seg.display()
                ),
            }
        }
    }
    println!("[interop] compression codecs of stored batches: {codecs_on_disk:?}");
    assert_eq!(bad_crc, 0, "stored batches with a bad CRC");
    if !codecs_on_disk.is_empty() {
        assert_eq!(
            codecs_on_disk,
            (0..=4).collect::<BTreeSet<i16>>(),
            "stored batches should carry every codec (0 none .. 4 zstd). Note: librdkafka \
             compresses with lz4 (3) only if the broker advertises FindCoordinator in \
             ApiVersions (its LZ4 feature depends on it); otherwise it logs `Broker does not \
             support compression type lz4: not compressing batch` and sends lz4 batches \
             uncompressed"
        );
    }

    broker.stop();
    let v = broker.log_verify();
    assert!(
        v.status.success(),
        "strait log verify failed ({}):\n{}\n{}",
        v.status,
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    println!("[interop] total {:?}", t0.elapsed());
}
