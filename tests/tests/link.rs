//! End-to-end tests of cluster links (issue 6): two `strait broker` processes, "east" (the
//! source, serving links on a UDP port) and "west" (the destination, where links are defined
//! through the `strait link` CLI and the admin HTTP API), driven with librdkafka.
//!
//! * `mirror_million_records_mixed_codecs`: a million records in five codecs are mirrored at
//!   the same offsets with the same keys, values, headers and timestamps, and west's segment
//!   files hold exactly east's bytes.
//! * `link_survives_kills_and_disconnects`: SIGKILL of either broker and a 7 s network black
//!   hole (a UDP relay) while a producer writes; at the end west equals east exactly.
//! * `new_topics_partitions_and_configs_follow`: topics created later, added partitions and
//!   changed configs reach west within seconds.
//! * `wrong_certificates_and_version_mismatch_refused`: certificates from another CA, a CA
//!   that does not know the peer, and a protocol version mismatch are refused, explained in
//!   the link status, and move no data.
//! * `producing_to_a_mirror_topic_fails_clearly`: POLICY_VIOLATION naming the link, until the
//!   link is deleted (which promotes the topic).
//! * `link_status_and_metrics`: `strait link status`/`mirror list` (text and JSON) and
//!   `/metrics` show zero lag after catch-up; pause stops data, resume brings it.
//! * `source_initiated_link_mirrors_and_survives_a_source_restart`: the source dials out to
//!   the destination's link listener (a source behind a firewall); an undefined link name is
//!   refused with a reason; after a SIGKILL the source redials by itself.
//!
//! `STRAIT_LINK_N` overrides the record count of the million-record test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{
    block_on, client_config, consumer_config, crc32c_append, create_topic, describe_topic_configs,
    framed_record, free_port, free_udp_port, link_tls_args, now_ms, poll_until, record_fields,
    segment_files, strait_cli, strait_cli_ok, AdminApi, Broker, BrokerOptions, KafkaConn,
    LinkCerts, Rng, UdpRelay,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Records and their digests

/// One record as produced (and as a consumer must see it).
#[derive(Debug, Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

impl Rec {
    fn digest(&self) -> u64 {
        let headers: Vec<(&str, Option<&[u8]>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        digest(
            self.key.as_deref(),
            self.value.as_deref(),
            &headers,
            self.timestamp,
        )
    }
}

/// A 64-bit digest of everything a consumer sees of a record but its offset.
fn digest(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    timestamp: i64,
) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    value.hash(&mut h);
    headers.hash(&mut h);
    timestamp.hash(&mut h);
    h.finish()
}

fn digest_of_message(m: &BorrowedMessage<'_>) -> u64 {
    let headers: Vec<(&str, Option<&[u8]>)> = match m.headers() {
        None => Vec::new(),
        Some(h) => h.iter().map(|h| (h.key, h.value)).collect(),
    };
    digest(
        m.key(),
        m.payload(),
        &headers,
        m.timestamp().to_millis().unwrap_or(i64::MIN),
    )
}

/// Deterministic record `i` of a run: a key (a few null), a compressible value of varying
/// length (some binary), two headers and an explicit timestamp.
fn make_rec(seed: u64, i: usize, base_ts: i64, tag: &str) -> Rec {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let key = if i.is_multiple_of(101) {
        None
    } else {
        Some(format!("key-{i}").into_bytes())
    };
    let value = if i.is_multiple_of(53) {
        let n = rng.range(1, 200) as usize;
        rng.bytes(n)
    } else {
        let n = rng.range(1, 10) as usize;
        format!("value-{i}-{}-", rng.range(0, 1000))
            .repeat(n)
            .into_bytes()
    };
    Rec {
        key,
        value: Some(value),
        headers: vec![
            ("seq".to_string(), Some(i.to_string().into_bytes())),
            ("tag".to_string(), Some(tag.as_bytes().to_vec())),
        ],
        timestamp: base_ts + i as i64,
    }
}

// ---------------------------------------------------------------------------------------
// Producing

/// The delivery outcome per record number: (partition, offset) or the client's error.
type Deliveries = HashMap<usize, Result<(i32, i64), KafkaError>>;

/// Records the delivery report of each record, indexed by record number.
struct DeliveryLog {
    results: Mutex<Deliveries>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let outcome = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        self.results.lock().unwrap().insert(idx, outcome);
    }
}

/// Produces records `indices` (made by `make`) to `topic` (to `partition` if given, else
/// partitioned by key) with the given client settings, calling `before_send(i)` before each
/// record (for pacing), and waits for every delivery report (up to 180 s).
fn produce_records(
    bootstrap: &str,
    topic: &str,
    partition: Option<i32>,
    settings: &[(&str, &str)],
    indices: Range<usize>,
    make: &dyn Fn(usize) -> Rec,
    before_send: &mut dyn FnMut(usize),
) -> Deliveries {
    let mut cfg = client_config(bootstrap);
    cfg.set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000");
    for (k, v) in settings {
        cfg.set(*k, *v);
    }
    let producer: BaseProducer<DeliveryLog> = cfg
        .create_with_context(DeliveryLog {
            results: Mutex::new(HashMap::new()),
        })
        .expect("create producer");
    let expected = indices.len();
    for i in indices {
        before_send(i);
        let rec = make(i);
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, i)
            .timestamp(rec.timestamp)
            .headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = &rec.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            record = record.payload(v.as_slice());
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    assert!(
                        Instant::now() < deadline,
                        "producer queue stayed full for 180 s (record {i})"
                    );
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producer.send of record {i} to {topic}: {e}"),
            }
        }
        if i.is_multiple_of(500) {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
    let results = std::mem::take(&mut *producer.context().results.lock().unwrap());
    assert_eq!(
        results.len(),
        expected,
        "delivery reports for {topic}: {} of {expected}",
        results.len()
    );
    results
}

/// Sends one record to `topic`-0 with a raw Produce v9 (acks=all) and returns the partition's
/// error code and error message (librdkafka does not hand the broker's message to the
/// application in a usable form).
fn raw_produce_error(bootstrap: &str, topic: &str) -> (i16, Option<String>) {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms(),
        key: Some(Bytes::from_static(b"raw-key")),
        value: Some(Bytes::from_static(b"raw-value")),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    let request = ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let mut conn = KafkaConn::connect(bootstrap).expect("connect");
    let response: ProduceResponse = conn.request(&request, 9).expect("Produce v9");
    let partition = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .unwrap_or_else(|| panic!("no partition in {response:?}"));
    (
        partition.error_code,
        partition.error_message.as_ref().map(|m| m.to_string()),
    )
}

/// Produces `n` small records to `topic` and asserts each was delivered; returns their
/// (partition, offset).
fn produce_ok(
    bootstrap: &str,
    topic: &str,
    partition: Option<i32>,
    n: usize,
    tag: &str,
) -> Vec<(i32, i64)> {
    let base_ts = now_ms();
    let make = |i: usize| make_rec(7, i, base_ts, tag);
    let results = produce_records(bootstrap, topic, partition, &[], 0..n, &make, &mut |_| {});
    let mut locations = Vec::with_capacity(n);
    for i in 0..n {
        match &results[&i] {
            Ok(loc) => locations.push(*loc),
            Err(f) => panic!("record {i} to {topic} not delivered: {f:?}"),
        }
    }
    locations
}

// ---------------------------------------------------------------------------------------
// Reading

/// High watermarks of `topic`'s partitions `0..partitions`.
fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let c: BaseConsumer = client_config(bootstrap).create()?;
    let mut ends = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(5))?;
        ends.push(high);
    }
    Ok(ends)
}

/// The partition count of `topic` from a full Metadata request (which never auto-creates),
/// or `None` if the broker does not list it.
fn topic_partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<Option<i32>> {
    let c: BaseConsumer = client_config(bootstrap).create()?;
    let md = c.fetch_metadata(None, Duration::from_secs(5))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32))
}

/// Reads partitions `0..ends.len()` of `topic` from the beginning up to `ends[p]` (exclusive)
/// and returns (partition, offset) -> record digest. Panics if a partition does not reach
/// its end within `timeout`, or a record is delivered twice with different contents.
fn consume_digests(
    bootstrap: &str,
    topic: &str,
    ends: &[i64],
    timeout: Duration,
) -> BTreeMap<(i32, i64), u64> {
    let consumer: BaseConsumer = consumer_config(bootstrap, "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for (p, end) in ends.iter().enumerate() {
        if *end > 0 {
            tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
                .expect("add partition");
        }
    }
    let mut out = BTreeMap::new();
    if tpl.count() == 0 {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: Vec<i64> = vec![0; ends.len()];
    let done = |next: &[i64]| next.iter().zip(ends).all(|(n, e)| n >= e);
    let deadline = Instant::now() + timeout;
    let mut errors = 0u64;
    while !done(&next) {
        assert!(
            Instant::now() < deadline,
            "consuming {topic} from {bootstrap}: reached {next:?} of {ends:?} within {timeout:?} \
             ({errors} consumer errors)"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => {
                errors += 1;
                if errors <= 5 {
                    println!("[consume {topic}@{bootstrap}] consumer error: {e}");
                }
            }
            Some(Ok(m)) => {
                let (p, off) = (m.partition(), m.offset());
                let Some(end) = ends.get(p as usize) else {
                    panic!("message from unassigned partition {p}");
                };
                if off >= *end {
                    continue;
                }
                let d = digest_of_message(&m);
                if let Some(prev) = out.insert((p, off), d) {
                    assert_eq!(prev, d, "{topic}-{p}@{off} delivered twice, differently");
                }
                next[p as usize] = next[p as usize].max(off + 1);
            }
        }
    }
    out
}

/// Compares two digest maps; returns a description of up to 10 differences (empty if equal).
fn diff_digests(
    what_a: &str,
    a: &BTreeMap<(i32, i64), u64>,
    what_b: &str,
    b: &BTreeMap<(i32, i64), u64>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (loc, da) in a {
        match b.get(loc) {
            None => diffs.push(format!("{loc:?}: in {what_a}, missing in {what_b}")),
            Some(db) if db != da => diffs.push(format!("{loc:?}: records differ")),
            Some(_) => {}
        }
        if diffs.len() >= 10 {
            return diffs;
        }
    }
    for loc in b.keys() {
        if !a.contains_key(loc) {
            diffs.push(format!("{loc:?}: in {what_b}, missing in {what_a}"));
            if diffs.len() >= 10 {
                break;
            }
        }
    }
    diffs
}

/// The concatenation of a partition directory's `*.log` segments in base-offset order.
fn partition_log_bytes(broker: &Broker, topic: &str, partition: i32) -> Vec<u8> {
    let mut all = Vec::new();
    for seg in segment_files(&broker.partition_dir(topic, partition)) {
        all.extend_from_slice(&std::fs::read(&seg).expect("read segment"));
    }
    all
}

/// Describes the RecordBatch v2 containing byte `pos` of a partition's concatenated log.
fn batch_at(log: &[u8], pos: usize) -> String {
    let mut start = 0usize;
    while start + 61 <= log.len() {
        let len = i32::from_be_bytes(log[start + 8..start + 12].try_into().unwrap());
        let end = start + 12 + len.max(0) as usize;
        if pos < end || len < 49 {
            let header = &log[start..(start + 61).min(log.len())];
            return format!(
                "batch at byte {start} (base offset {}, length {len}, partitionLeaderEpoch {}, \
                 magic {}, crc {:#010x}, attributes {:#06x}); header bytes {:02x?}",
                i64::from_be_bytes(header[0..8].try_into().unwrap()),
                i32::from_be_bytes(header[12..16].try_into().unwrap()),
                header[16],
                u32::from_be_bytes(header[17..21].try_into().unwrap()),
                i16::from_be_bytes(header[21..23].try_into().unwrap()),
                header
            );
        }
        start = end;
    }
    format!("no complete batch header at byte {pos}")
}

// ---------------------------------------------------------------------------------------
// Brokers and links

/// Options of the source broker: fsync always, no auto-created topics, serving links on
/// UDP `link_port`.
fn source_options(tls: Vec<String>, link_port: u16, extra: &[&str]) -> BrokerOptions {
    let mut args = tls;
    args.extend([
        "--link-listen".to_string(),
        format!("127.0.0.1:{link_port}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    BrokerOptions {
        fsync: Some("always".into()),
        auto_create_topics: Some(false),
        extra: args,
        ..BrokerOptions::default()
    }
}

/// Options of the destination broker: fsync always, no auto-created topics, admin API on
/// `admin_port`.
fn destination_options(tls: Vec<String>, admin_port: u16, extra: &[&str]) -> BrokerOptions {
    let mut args = tls;
    args.extend([
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin_port}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    BrokerOptions {
        fsync: Some("always".into()),
        auto_create_topics: Some(false),
        extra: args,
        ..BrokerOptions::default()
    }
}

/// A source and a destination broker with certificates from one CA.
struct Pair {
    _certs: LinkCerts,
    east: Broker,
    west: Broker,
    /// The source's link listener (UDP), `127.0.0.1:port`.
    source_addr: String,
    admin: AdminApi,
}

fn start_pair(test: &str) -> Pair {
    let certs = LinkCerts::generate(&["east", "west"]);
    let link_port = free_udp_port();
    let east = Broker::start(
        &format!("{test}-east"),
        source_options(certs.tls_args("east"), link_port, &[]),
    );
    let admin_port = free_port();
    let west = Broker::start(
        &format!("{test}-west"),
        destination_options(certs.tls_args("west"), admin_port, &[]),
    );
    Pair {
        _certs: certs,
        east,
        west,
        source_addr: format!("127.0.0.1:{link_port}"),
        admin: AdminApi::new(&format!("127.0.0.1:{admin_port}")),
    }
}

/// `strait link create NAME --admin A --source S ARGS...`; returns its output.
fn create_link(admin: &AdminApi, name: &str, source: &str, args: &[&str]) -> String {
    let mut cmd = vec![
        "link",
        "create",
        name,
        "--admin",
        admin.addr.as_str(),
        "--source",
        source,
    ];
    cmd.extend_from_slice(args);
    let out = strait_cli_ok(&cmd);
    println!("[link] `strait {}`:\n{out}", cmd.join(" "));
    out
}

/// A JSON field as a string ("" if absent or not a string).
fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A JSON field as an i64 (`i64::MIN` if absent).
fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(i64::MIN)
}

/// The link status's entry for `topic`-`partition`.
fn partition_status<'a>(status: &'a Value, topic: &str, partition: i32) -> Option<&'a Value> {
    status.get("partitions")?.as_array()?.iter().find(|p| {
        p.get("topic").and_then(Value::as_str) == Some(topic)
            && p.get("partition").and_then(Value::as_i64) == Some(partition as i64)
    })
}

/// Sum of the destination end offsets in a link status.
fn mirrored_records(status: &Value) -> i64 {
    status
        .get("partitions")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| int(p, "destination_end_offset").max(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until the link is active and, for every (topic, partition count), each partition's
/// destination end offset equals east's high watermark with zero lag. Returns the time it
/// took; panics with the last status if it takes longer than `timeout`.
fn wait_caught_up(
    admin: &AdminApi,
    link: &str,
    east: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last = String::from("<no status yet>");
    let ok = poll_until(timeout, Duration::from_millis(100), || {
        let status = match admin.link_status(link) {
            Ok(s) => s,
            Err(e) => {
                last = format!("status error: {e:#}");
                return false;
            }
        };
        last = status.to_string();
        if text(&status, "state") != "active" {
            return false;
        }
        for (topic, partitions) in topics {
            let Ok(ends) = high_watermarks(east, topic, *partitions) else {
                return false;
            };
            for (p, end) in ends.iter().enumerate() {
                match partition_status(&status, topic, p as i32) {
                    Some(ps)
                        if int(ps, "destination_end_offset") == *end
                            && int(ps, "lag_records") == 0 => {}
                    _ => return false,
                }
            }
        }
        true
    });
    assert!(
        ok,
        "link {link} did not catch up with {topics:?} within {timeout:?}; last status: {last}"
    );
    started.elapsed()
}

/// Waits until the link's state is `state`; panics with the last status otherwise.
fn wait_state(admin: &AdminApi, link: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let ok = poll_until(timeout, Duration::from_millis(100), || {
        match admin.link_status(link) {
            Ok(s) => {
                let hit = text(&s, "state") == state;
                last = s;
                hit
            }
            Err(_) => false,
        }
    });
    assert!(
        ok,
        "link {link} not {state} within {timeout:?}; last status: {last}"
    );
    last
}

fn rdkafka_admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    client_config(bootstrap).create().expect("admin client")
}

// ---------------------------------------------------------------------------------------
// 1. A million records, five codecs, byte-identical segments

#[test]
fn mirror_million_records_mixed_codecs() {
    const TOPIC: &str = "mix.events";
    const PARTITIONS: i32 = 6;
    const CODECS: [&str; 5] = ["none", "gzip", "lz4", "zstd", "snappy"];
    let total: usize = std::env::var("STRAIT_LINK_N")
        .ok()
        .map(|s| s.parse().expect("STRAIT_LINK_N must be a number"))
        .unwrap_or(1_000_000);
    let per_codec = total / CODECS.len();
    let total = per_codec * CODECS.len();
    let t0 = Instant::now();
    let mut rng = Rng::from_env("mirror_million");
    let seed = rng.next_u64();
    let pair = start_pair("million");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    // Small segments, so that each partition's log spans several segment files.
    create_topic(&east, TOPIC, PARTITIONS, &[("segment.bytes", "1048576")]);
    create_topic(&east, "unlinked.events", 1, &[]);
    produce_ok(&east, "unlinked.events", None, 10, "unlinked");

    // --- produce, one phase per codec
    let base_ts = now_ms() - 3_600_000;
    let mut expected: HashMap<(i32, i64), u64> = HashMap::with_capacity(total);
    for (c, codec) in CODECS.iter().enumerate() {
        let t = Instant::now();
        let range = c * per_codec..(c + 1) * per_codec;
        let make = |i: usize| make_rec(seed, i, base_ts, codec);
        let results = produce_records(
            &east,
            TOPIC,
            None,
            &[("compression.type", codec), ("batch.size", "262144")],
            range,
            &make,
            &mut |_| {},
        );
        for (i, r) in results {
            match r {
                Ok(loc) => {
                    let prev = expected.insert(loc, make(i).digest());
                    assert!(prev.is_none(), "two records acknowledged at {loc:?}");
                }
                Err(f) => panic!("record {i} ({codec}) not delivered: {f:?}"),
            }
        }
        println!(
            "[mirror_million] produced {per_codec} records with {codec} in {:?}",
            t.elapsed()
        );
    }
    let east_ends = high_watermarks(&east, TOPIC, PARTITIONS).expect("east watermarks");
    assert_eq!(
        east_ends.iter().sum::<i64>(),
        total as i64,
        "east end offsets {east_ends:?}"
    );

    // --- link and catch up
    let t = Instant::now();
    create_link(
        &pair.admin,
        "million",
        &pair.source_addr,
        &["--prefix", "mix.", "--zstd-level", "1"],
    );
    let took = wait_caught_up(
        &pair.admin,
        "million",
        &east,
        &[(TOPIC, PARTITIONS)],
        Duration::from_secs(120),
    );
    let since_create = t.elapsed();
    let status = pair.admin.link_status("million").expect("status");
    println!(
        "[mirror_million] mirrored {total} records in {since_create:?} (caught up {took:?} after \
         create returned): {:.0} records/s; source bytes {}, wire bytes {} (ratio {:.3}), \
         records {}",
        total as f64 / since_create.as_secs_f64(),
        int(&status, "source_bytes"),
        int(&status, "wire_bytes"),
        int(&status, "wire_bytes") as f64 / int(&status, "source_bytes").max(1) as f64,
        int(&status, "records")
    );
    assert_eq!(
        high_watermarks(&west, TOPIC, PARTITIONS).expect("west watermarks"),
        east_ends,
        "west's high watermarks differ from east's"
    );
    assert_eq!(
        describe_topic_configs(&west, TOPIC)
            .get("segment.bytes")
            .cloned()
            .flatten()
            .as_deref(),
        Some("1048576"),
        "the mirror topic's segment.bytes (east's override)"
    );

    // --- every record, as consumers see it
    let t = Instant::now();
    let east_seen = consume_digests(&east, TOPIC, &east_ends, Duration::from_secs(120));
    let west_seen = consume_digests(&west, TOPIC, &east_ends, Duration::from_secs(120));
    println!(
        "[mirror_million] consumed {} + {} records in {:?}",
        east_seen.len(),
        west_seen.len(),
        t.elapsed()
    );
    assert_eq!(east_seen.len(), total, "records read back from east");
    let wrong_on_east: Vec<_> = expected
        .iter()
        .filter(|(loc, d)| east_seen.get(loc) != Some(d))
        .take(5)
        .collect();
    assert!(
        wrong_on_east.is_empty(),
        "acknowledged records not found as produced on east: {wrong_on_east:?}"
    );
    let diffs = diff_digests("east", &east_seen, "west", &west_seen);
    assert!(
        diffs.is_empty(),
        "west differs from east (partition, offset): {diffs:#?}"
    );

    // --- segment bytes
    let mut total_bytes = 0usize;
    for p in 0..PARTITIONS {
        let e = partition_log_bytes(&pair.east, TOPIC, p);
        let w = partition_log_bytes(&pair.west, TOPIC, p);
        let (ce, cw) = (crc32c_append(0, &e), crc32c_append(0, &w));
        println!(
            "[mirror_million] {TOPIC}-{p}: east {} bytes in {} segments crc32c {ce:#010x}, west {} \
             bytes in {} segments crc32c {cw:#010x}",
            e.len(),
            segment_files(&pair.east.partition_dir(TOPIC, p)).len(),
            w.len(),
            segment_files(&pair.west.partition_dir(TOPIC, p)).len(),
        );
        if e != w {
            let pos = e
                .iter()
                .zip(&w)
                .position(|(a, b)| a != b)
                .unwrap_or(e.len().min(w.len()));
            panic!(
                "{TOPIC}-{p}: west's log bytes differ from east's (lengths {} vs {}), first at \
                 byte {pos}\n east: {}\n west: {}",
                e.len(),
                w.len(),
                batch_at(&e, pos),
                batch_at(&w, pos)
            );
        }
        total_bytes += e.len();
    }
    assert_eq!(
        topic_partition_count(&west, "unlinked.events").expect("west metadata"),
        None,
        "a topic outside the link's prefix appeared on west"
    );
    println!(
        "[mirror_million] {total_bytes} log bytes identical on both sides; test took {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Kills and a network black hole while producing

#[test]
fn link_survives_kills_and_disconnects() {
    const TOPIC: &str = "kills.events";
    const PARTITIONS: i32 = 4;
    const TOTAL: usize = 300_000;
    const PHASE: usize = 100_000;
    let t0 = Instant::now();
    let mut rng = Rng::from_env("link_survives");
    let seed = rng.next_u64();
    let certs = LinkCerts::generate(&["east", "west"]);
    let link_port = free_udp_port();
    let mut east_broker = Broker::start(
        "kills-east",
        source_options(certs.tls_args("east"), link_port, &[]),
    );
    let upstream: SocketAddr = format!("127.0.0.1:{link_port}").parse().unwrap();
    let relay = UdpRelay::start(upstream);
    let admin_port = free_port();
    let mut west_broker = Broker::start(
        "kills-west",
        destination_options(certs.tls_args("west"), admin_port, &[]),
    );
    let admin = AdminApi::new(&format!("127.0.0.1:{admin_port}"));
    let east = east_broker.bootstrap().to_string();
    let west = west_broker.bootstrap().to_string();
    create_topic(&east, TOPIC, PARTITIONS, &[]);
    create_link(
        &admin,
        "kills",
        &relay.addr().to_string(),
        &[
            "--topics",
            TOPIC,
            "--streams",
            "2",
            "--linger-ms",
            "10",
            "--batch-bytes",
            "262144",
            "--rtt-ms",
            "5",
        ],
    );
    wait_state(&admin, "kills", "active", Duration::from_secs(30));

    // The producer runs at most ~10 000 records/s and never past `allowed`, so that each
    // fault hits while it is writing.
    let allowed = Arc::new(AtomicU64::new(PHASE as u64));
    let base_ts = now_ms();
    let producer = {
        let (east, allowed) = (east.clone(), allowed.clone());
        std::thread::spawn(move || {
            let make = |i: usize| make_rec(seed, i, base_ts, "kills");
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut pace = |i: usize| {
                while i as u64 >= allowed.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if i.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            };
            produce_records(
                &east,
                TOPIC,
                None,
                &[
                    ("enable.idempotence", "false"),
                    ("message.timeout.ms", "300000"),
                    ("compression.type", "lz4"),
                ],
                0..TOTAL,
                &make,
                &mut pace,
            )
        })
    };

    let mirrored = |admin: &AdminApi| admin.link_status("kills").map(|s| mirrored_records(&s));
    let wait_mirrored = |what: &str, at_least: i64, timeout: Duration| -> Duration {
        let t = Instant::now();
        let mut last = 0;
        let ok = poll_until(timeout, Duration::from_millis(100), || {
            last = mirrored(&admin).unwrap_or(last);
            last >= at_least
        });
        assert!(
            ok,
            "{what}: west mirrored {last} records, not {at_least}, within {timeout:?}; status: {:?}",
            admin.link_status("kills").map(|s| s.to_string())
        );
        t.elapsed()
    };

    // --- SIGKILL the destination
    let kill_at = rng.range(20_000, 60_000) as i64;
    wait_mirrored("before killing west", kill_at, Duration::from_secs(60));
    west_broker.kill9();
    println!("[link_survives] SIGKILLed west after ~{kill_at} mirrored records");
    std::thread::sleep(Duration::from_millis(500));
    west_broker.restart();
    let resumed = wait_mirrored(
        "after west's restart",
        kill_at + 5_000,
        Duration::from_secs(60),
    );
    println!("[link_survives] west mirrors again {resumed:?} after its restart");
    allowed.store(2 * PHASE as u64, Ordering::SeqCst);

    // --- SIGKILL the source
    let kill_at = PHASE as i64 + rng.range(20_000, 60_000) as i64;
    wait_mirrored("before killing east", kill_at, Duration::from_secs(60));
    east_broker.kill9();
    println!("[link_survives] SIGKILLed east after ~{kill_at} mirrored records");
    std::thread::sleep(Duration::from_millis(500));
    east_broker.restart();
    let before = mirrored(&admin).unwrap_or(kill_at);
    let resumed = wait_mirrored(
        "after east's restart",
        before + 5_000,
        Duration::from_secs(120),
    );
    println!("[link_survives] west mirrors again {resumed:?} after east's restart");
    allowed.store(TOTAL as u64, Ordering::SeqCst);

    // --- black-hole the link for 7 s: longer than the agent's 5 s silence watchdog, so the
    // QUIC connection is given up and a new one dialled (a dropped connection).
    let cut_at = 2 * PHASE as i64 + rng.range(20_000, 60_000) as i64;
    wait_mirrored("before the partition", cut_at, Duration::from_secs(60));
    let connects_before = int(&admin.link_status("kills").expect("status"), "connects");
    relay.set_dropping(true);
    let dropped_before = relay.dropped();
    std::thread::sleep(Duration::from_secs(7));
    relay.set_dropping(false);
    let before = mirrored(&admin).unwrap_or(cut_at);
    println!(
        "[link_survives] relay dropped {} datagrams for 7 s after ~{cut_at} mirrored records",
        relay.dropped() - dropped_before
    );
    let resumed = wait_mirrored(
        "after the partition",
        before + 5_000,
        Duration::from_secs(90),
    );
    println!("[link_survives] west mirrors again {resumed:?} after the partition healed");
    let status = admin.link_status("kills").expect("status");
    assert!(
        int(&status, "connects") > connects_before,
        "the dropped connection should have been replaced by a new one: {status}"
    );

    // --- the end: west equals east
    let results = producer.join().expect("producer thread");
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).take(5).collect();
    let delivered = results.values().filter(|r| r.is_ok()).count();
    println!(
        "[link_survives] producer: {delivered} of {TOTAL} delivered, failures e.g. {failed:?}"
    );
    let took = wait_caught_up(
        &admin,
        "kills",
        &east,
        &[(TOPIC, PARTITIONS)],
        Duration::from_secs(120),
    );
    println!("[link_survives] caught up {took:?} after the producer finished");
    let status = admin.link_status("kills").expect("status");
    assert_eq!(text(&status, "state"), "active", "status {status}");
    let east_ends = high_watermarks(&east, TOPIC, PARTITIONS).expect("east watermarks");
    let west_ends = high_watermarks(&west, TOPIC, PARTITIONS).expect("west watermarks");
    assert_eq!(west_ends, east_ends, "high watermarks west vs east");
    for p in 0..PARTITIONS {
        let ps = partition_status(&status, TOPIC, p).expect("partition in status");
        assert_eq!(int(ps, "lag_records"), 0, "lag of partition {p}: {ps}");
    }
    let east_seen = consume_digests(&east, TOPIC, &east_ends, Duration::from_secs(60));
    let west_seen = consume_digests(&west, TOPIC, &east_ends, Duration::from_secs(60));
    let diffs = diff_digests("east", &east_seen, "west", &west_seen);
    assert!(
        diffs.is_empty(),
        "west differs from east (partition, offset): {diffs:#?}"
    );
    let mut lost = Vec::new();
    for (i, r) in &results {
        if let Ok(loc) = r {
            if west_seen.get(loc) != Some(&make_rec(seed, *i, base_ts, "kills").digest()) {
                lost.push((*i, *loc));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged records are not on west as produced, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    println!(
        "[link_survives] {} records identical on east and west (end offsets {east_ends:?}), \
         {} link connects, relay forwarded {} datagrams; test took {:?}",
        east_seen.len(),
        int(&status, "connects"),
        relay.forwarded(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Topics, partitions and configs created later follow

#[test]
fn new_topics_partitions_and_configs_follow() {
    let pair = start_pair("follow");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    create_topic(&east, "orders.us", 2, &[]);
    create_topic(&east, "payments", 1, &[]);
    produce_ok(&east, "orders.us", None, 50, "us");
    produce_ok(&east, "payments", None, 5, "payments");
    create_link(
        &pair.admin,
        "orders",
        &pair.source_addr,
        &["--prefix", "orders."],
    );
    wait_caught_up(
        &pair.admin,
        "orders",
        &east,
        &[("orders.us", 2)],
        Duration::from_secs(30),
    );

    // --- a new topic, with a config override
    let t = Instant::now();
    create_topic(&east, "orders.eu", 3, &[("retention.ms", "3600000")]);
    let ok = poll_until(Duration::from_secs(15), Duration::from_millis(50), || {
        topic_partition_count(&west, "orders.eu").ok().flatten() == Some(3)
    });
    let appeared = t.elapsed();
    assert!(
        ok,
        "orders.eu (3 partitions) did not appear on west within 15 s"
    );
    println!("[follow] new topic orders.eu appeared on west after {appeared:?}");
    assert!(
        appeared <= Duration::from_secs(5),
        "orders.eu took {appeared:?} to appear on west (want <= 5 s)"
    );
    let configs = describe_topic_configs(&west, "orders.eu");
    assert_eq!(
        configs.get("retention.ms").cloned().flatten().as_deref(),
        Some("3600000"),
        "west's orders.eu retention.ms (created with 3600000 on east)"
    );

    // --- more partitions
    let t = Instant::now();
    let res = block_on(rdkafka_admin(&east).create_partitions(
        [&NewPartitions::new("orders.eu", 5)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(20))),
    ))
    .expect("CreatePartitions request");
    for r in res {
        if let Err((topic, code)) = r {
            panic!("CreatePartitions {topic}: {code:?}");
        }
    }
    let ok = poll_until(Duration::from_secs(15), Duration::from_millis(50), || {
        topic_partition_count(&west, "orders.eu").ok().flatten() == Some(5)
    });
    let grown = t.elapsed();
    assert!(
        ok,
        "west's orders.eu did not grow to 5 partitions within 15 s"
    );
    println!("[follow] partitions 3 and 4 of orders.eu appeared on west after {grown:?}");
    assert!(
        grown <= Duration::from_secs(5),
        "new partitions took {grown:?} to appear on west (want <= 5 s)"
    );
    for p in 0..5 {
        produce_ok(&east, "orders.eu", Some(p), 20 + p as usize, "eu");
    }
    let took = wait_caught_up(
        &pair.admin,
        "orders",
        &east,
        &[("orders.eu", 5), ("orders.us", 2)],
        Duration::from_secs(30),
    );
    assert_eq!(
        high_watermarks(&west, "orders.eu", 5).expect("west watermarks"),
        vec![20, 21, 22, 23, 24],
        "records of orders.eu (incl. the new partitions) on west"
    );
    println!("[follow] records in all 5 partitions mirrored within {took:?}");

    // --- a changed config
    let t = Instant::now();
    common::alter_topic_configs(&east, "orders.eu", &[("retention.ms", "7200000")]);
    let mut seen = None;
    let ok = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        seen = describe_topic_configs(&west, "orders.eu")
            .get("retention.ms")
            .cloned()
            .flatten();
        seen.as_deref() == Some("7200000")
    });
    let followed = t.elapsed();
    assert!(
        ok,
        "west's orders.eu retention.ms is {seen:?} 15 s after east's became 7200000"
    );
    println!("[follow] retention.ms change reached west after {followed:?}");
    assert!(
        followed <= Duration::from_secs(6),
        "config change took {followed:?} to reach west (want ~5 s)"
    );

    assert_eq!(
        topic_partition_count(&west, "payments").expect("west metadata"),
        None,
        "payments (outside the prefix) must not be mirrored"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Refused peers

/// Starts a source and a destination with the given TLS arguments (and extra broker args),
/// defines a link, and checks that it is refused: the status shows a failed or connecting
/// state whose reason or last error contains one of `expect` (lowercase), and no mirror
/// topic or data appears on west.
fn assert_link_refused(
    case: &str,
    east_tls: Vec<String>,
    west_tls: Vec<String>,
    east_extra: &[&str],
    west_extra: &[&str],
    expect: &[&str],
) {
    let link_port = free_udp_port();
    let east_broker = Broker::start(
        &format!("refused-{case}-east"),
        source_options(east_tls, link_port, east_extra),
    );
    let admin_port = free_port();
    let west_broker = Broker::start(
        &format!("refused-{case}-west"),
        destination_options(west_tls, admin_port, west_extra),
    );
    let admin = AdminApi::new(&format!("127.0.0.1:{admin_port}"));
    let east = east_broker.bootstrap().to_string();
    let west = west_broker.bootstrap().to_string();
    create_topic(&east, "secure.events", 1, &[]);
    produce_ok(&east, "secure.events", None, 10, "secure");
    create_link(
        &admin,
        "guarded",
        &format!("127.0.0.1:{link_port}"),
        &["--topics", "secure.events"],
    );
    let mut last = Value::Null;
    let explained = |s: &Value| {
        let words = format!("{} {}", text(s, "reason"), text(s, "last_error")).to_lowercase();
        matches!(text(s, "state").as_str(), "failed" | "connecting")
            && expect.iter().any(|e| words.contains(e))
    };
    let ok = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match admin.link_status("guarded") {
            Ok(s) => {
                let hit = explained(&s);
                last = s;
                hit
            }
            Err(_) => false,
        },
    );
    assert!(
        ok,
        "[{case}] link status does not explain the refusal (want state failed/connecting and \
         one of {expect:?} in reason/last_error) within 20 s; last status: {last}"
    );
    println!(
        "[refused {case}] state {:?}, reason {:?}, last_error {:?}",
        text(&last, "state"),
        text(&last, "reason"),
        text(&last, "last_error")
    );
    // Give a wrongly accepted connection time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    let status = admin.link_status("guarded").expect("status");
    assert_ne!(text(&status, "state"), "active", "[{case}] status {status}");
    assert_eq!(
        topic_partition_count(&west, "secure.events").expect("west metadata"),
        None,
        "[{case}] a mirror topic appeared on west; status {status}"
    );
    assert!(
        status
            .get("partitions")
            .and_then(Value::as_array)
            .is_none_or(|p| p.is_empty()),
        "[{case}] mirrored partitions listed: {status}"
    );
    assert_eq!(
        int(&status, "records"),
        0,
        "[{case}] records moved: {status}"
    );
}

#[test]
fn wrong_certificates_and_version_mismatch_refused() {
    let good = LinkCerts::generate(&["east", "west"]);
    let other = LinkCerts::generate(&["east", "west"]);
    let tls_words: &[&str] = &[
        "certificate",
        "tls",
        "handshake",
        "unknown ca",
        "unknownca",
        "unknownissuer",
        "issuer",
    ];

    // (a) west presents a certificate from another CA (but trusts east's CA): east refuses.
    assert_link_refused(
        "west-cert-other-ca",
        good.tls_args("east"),
        link_tls_args(&good.ca(), &other.cert("west"), &other.key("west")),
        &[],
        &[],
        tls_words,
    );
    // (a') west's whole identity is from another CA: west cannot verify east either.
    assert_link_refused(
        "west-identity-other-ca",
        good.tls_args("east"),
        other.tls_args("west"),
        &[],
        &[],
        tls_words,
    );
    // (b) east trusts only another CA: west's certificate is unknown to it.
    assert_link_refused(
        "east-trusts-other-ca",
        link_tls_args(&other.ca(), &good.cert("east"), &good.key("east")),
        good.tls_args("west"),
        &[],
        &[],
        tls_words,
    );
    // (c) the destination speaks only protocol version 3, the source versions 1 and 2.
    assert_link_refused(
        "version-mismatch",
        good.tls_args("east"),
        good.tls_args("west"),
        &[],
        &["--link-protocol-versions", "3-3"],
        &["version"],
    );
}

// ---------------------------------------------------------------------------------------
// 5. Mirror topics are read-only until the link is deleted

#[test]
fn producing_to_a_mirror_topic_fails_clearly() {
    const TOPIC: &str = "ro.events";
    let pair = start_pair("readonly");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    create_topic(&east, TOPIC, 2, &[]);
    produce_ok(&east, TOPIC, None, 40, "ro");
    create_link(
        &pair.admin,
        "ro-link",
        &pair.source_addr,
        &["--topics", TOPIC],
    );
    wait_caught_up(
        &pair.admin,
        "ro-link",
        &east,
        &[(TOPIC, 2)],
        Duration::from_secs(30),
    );
    let ends_before = high_watermarks(&west, TOPIC, 2).expect("west watermarks");

    let base_ts = now_ms();
    let make = |i: usize| make_rec(3, i, base_ts, "intruder");
    let results = produce_records(
        &west,
        TOPIC,
        Some(0),
        &[("message.timeout.ms", "20000"), ("retries", "0")],
        0..3,
        &make,
        &mut |_| {},
    );
    for (i, r) in &results {
        match r {
            Ok(loc) => {
                panic!("record {i} produced to mirror topic {TOPIC} was accepted at {loc:?}")
            }
            Err(error) => {
                println!("[readonly] rdkafka produce to the mirror topic refused: {error}");
                assert!(
                    matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::PolicyViolation)
                    ),
                    "record {i}: want POLICY_VIOLATION, got {error:?}"
                );
            }
        }
    }
    let (code, message) = raw_produce_error(&west, TOPIC);
    println!("[readonly] raw Produce v9: error code {code}, message {message:?}");
    assert_eq!(
        code, 44,
        "POLICY_VIOLATION (44) for a raw produce to the mirror topic"
    );
    let message = message.unwrap_or_default();
    assert!(
        message.contains("ro-link") && message.contains(TOPIC),
        "the broker's error message {message:?} should name the topic and the link ro-link"
    );
    assert_eq!(
        high_watermarks(&west, TOPIC, 2).expect("west watermarks"),
        ends_before,
        "refused records must not change west's log"
    );

    // --- delete the link: the topic is promoted and accepts records
    let out = strait_cli_ok(&["link", "delete", "ro-link", "--admin", &pair.admin.addr]);
    println!("[readonly] `strait link delete ro-link`: {}", out.trim());
    let (code, body) =
        common::http_request(&pair.admin.addr, "GET", "/v1/links/ro-link", None).expect("GET");
    assert_eq!(code, 404, "deleted link still listed: {body}");
    let mirrors = pair.admin.get_json("/v1/mirrors").expect("mirrors");
    assert!(
        !mirrors.to_string().contains(TOPIC),
        "{TOPIC} is still listed as a mirror topic after the link was deleted: {mirrors}"
    );
    let locations = produce_ok(&west, TOPIC, Some(0), 3, "after-promotion");
    assert_eq!(
        locations,
        vec![
            (0, ends_before[0]),
            (0, ends_before[0] + 1),
            (0, ends_before[0] + 2)
        ],
        "records produced to the promoted topic continue its offsets"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Status, mirror list, metrics, pause and resume

#[test]
fn link_status_and_metrics() {
    const TOPIC: &str = "stat.events";
    const LINK: &str = "stat-link";
    let pair = start_pair("status");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    let admin = pair.admin.addr.clone();
    create_topic(&east, TOPIC, 3, &[]);
    produce_ok(&east, TOPIC, None, 3_000, "stat");
    create_link(&pair.admin, LINK, &pair.source_addr, &["--topics", TOPIC]);
    wait_caught_up(
        &pair.admin,
        LINK,
        &east,
        &[(TOPIC, 3)],
        Duration::from_secs(30),
    );
    let east_ends = high_watermarks(&east, TOPIC, 3).expect("east watermarks");

    // --- `strait link status` as text
    let human = strait_cli_ok(&["link", "status", LINK, "--admin", &admin]);
    println!("[status] `strait link status {LINK}`:\n{human}");
    assert!(human.contains("active"), "no `active` in:\n{human}");
    for (p, end) in east_ends.iter().enumerate() {
        let row = human
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&TOPIC) && cells.get(1) == Some(&p.to_string().as_str())
            })
            .unwrap_or_else(|| panic!("no row for partition {p} in:\n{human}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // TOPIC PARTITION SOURCE-END DEST-END LAG-RECORDS ...
        let want = [end.to_string(), end.to_string(), "0".to_string()];
        let got: Vec<String> = cells
            .iter()
            .skip(2)
            .take(3)
            .map(|c| c.to_string())
            .collect();
        assert_eq!(got, want, "partition {p} row: {row}");
    }

    // --- `strait link status --json` and `strait link list`
    let json: Value = serde_json::from_str(&strait_cli_ok(&[
        "link", "status", LINK, "--admin", &admin, "--json",
    ]))
    .expect("link status --json is JSON");
    assert_eq!(text(&json, "state"), "active", "{json}");
    for (p, end) in east_ends.iter().enumerate() {
        let ps = partition_status(&json, TOPIC, p as i32).expect("partition in --json");
        assert_eq!(int(ps, "lag_records"), 0, "{ps}");
        assert_eq!(int(ps, "destination_end_offset"), *end, "{ps}");
        assert_eq!(int(ps, "source_end_offset"), *end, "{ps}");
    }
    let list = strait_cli_ok(&["link", "list", "--admin", &admin]);
    println!("[status] `strait link list`:\n{list}");
    assert!(
        list.lines()
            .any(|l| l.contains(LINK) && l.contains("active")),
        "no active {LINK} in:\n{list}"
    );

    // --- `strait mirror list` and `mirror status`
    let mirrors = strait_cli_ok(&["mirror", "list", "--admin", &admin]);
    println!("[status] `strait mirror list`:\n{mirrors}");
    let row = mirrors
        .lines()
        .find(|l| l.starts_with(TOPIC))
        .unwrap_or_else(|| panic!("no {TOPIC} in:\n{mirrors}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(..4),
        Some(&[TOPIC, LINK, "3", "0"][..]),
        "mirror list row (TOPIC LINK PARTITIONS LAG): {row}"
    );
    let mirrors_json: Value = serde_json::from_str(&strait_cli_ok(&[
        "mirror", "list", "--admin", &admin, "--json",
    ]))
    .expect("mirror list --json is JSON");
    let mirror = mirrors_json
        .as_array()
        .and_then(|a| a.iter().find(|m| text(m, "topic") == TOPIC))
        .unwrap_or_else(|| panic!("{TOPIC} not in {mirrors_json}"));
    assert_eq!(text(mirror, "link"), LINK, "{mirror}");
    assert_eq!(int(mirror, "lag_records"), 0, "{mirror}");
    assert_eq!(
        mirror["partitions"].as_array().map(Vec::len),
        Some(3),
        "{mirror}"
    );
    let one: Value = serde_json::from_str(&strait_cli_ok(&[
        "mirror", "status", TOPIC, "--admin", &admin, "--json",
    ]))
    .expect("mirror status --json is JSON");
    assert_eq!(int(&one, "lag_records"), 0, "{one}");

    // --- /metrics
    let metrics = pair.admin.metrics().expect("GET /metrics");
    for p in 0..3 {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("strait_link_partition_lag_records{")
                    && l.contains(&format!("link=\"{LINK}\""))
                    && l.contains(&format!("topic=\"{TOPIC}\""))
                    && l.contains(&format!("partition=\"{p}\""))
            })
            .unwrap_or_else(|| {
                panic!("no strait_link_partition_lag_records for {TOPIC}-{p} in:\n{metrics}")
            });
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable sample {line:?}"));
        assert_eq!(value, 0.0, "{line}");
        println!("[status] {line}");
    }

    // --- pause: records produced meanwhile stay on east
    let out = strait_cli_ok(&["link", "pause", LINK, "--admin", &admin]);
    assert!(out.contains("paused"), "{out}");
    wait_state(&pair.admin, LINK, "paused", Duration::from_secs(5));
    let west_before = high_watermarks(&west, TOPIC, 3).expect("west watermarks");
    produce_ok(&east, TOPIC, None, 500, "while-paused");
    std::thread::sleep(Duration::from_secs(2));
    let west_paused = high_watermarks(&west, TOPIC, 3).expect("west watermarks");
    assert_eq!(
        west_paused, west_before,
        "records arrived on west while the link was paused"
    );
    let paused = pair.admin.link_status(LINK).expect("status");
    assert_eq!(text(&paused, "state"), "paused", "{paused}");
    println!("[status] paused: west stayed at {west_paused:?} for 2 s");

    // --- resume: they arrive
    let t = Instant::now();
    let out = strait_cli_ok(&["link", "resume", LINK, "--admin", &admin]);
    assert!(out.contains("resumed"), "{out}");
    wait_caught_up(
        &pair.admin,
        LINK,
        &east,
        &[(TOPIC, 3)],
        Duration::from_secs(30),
    );
    let east_ends = high_watermarks(&east, TOPIC, 3).expect("east watermarks");
    assert_eq!(east_ends.iter().sum::<i64>(), 3_500);
    assert_eq!(
        high_watermarks(&west, TOPIC, 3).expect("west watermarks"),
        east_ends
    );
    println!(
        "[status] resumed: the 500 records arrived {:?} after `link resume`",
        t.elapsed()
    );
    // A command against a link that does not exist fails and says so.
    let out = strait_cli(&["link", "status", "no-such-link", "--admin", &admin]);
    assert!(!out.status.success(), "status of a missing link succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-link"), "stderr: {stderr}");
}

// ---------------------------------------------------------------------------------------
// 7. Source-initiated links (the source behind a firewall dials out)

#[test]
fn source_initiated_link_mirrors_and_survives_a_source_restart() {
    const TOPIC: &str = "fw.orders";
    let certs = LinkCerts::generate(&["east", "west"]);
    // The destination listens for the source's connection; the source only dials out.
    let west_link_port = free_udp_port();
    let west_admin_port = free_port();
    let mut west_args = certs.tls_args("west");
    west_args.extend([
        "--link-listen".to_string(),
        format!("127.0.0.1:{west_link_port}"),
    ]);
    let west = Broker::start(
        "fw-west",
        destination_options(west_args, west_admin_port, &[]),
    );
    let east_admin_port = free_port();
    let mut east = Broker::start(
        "fw-east",
        destination_options(certs.tls_args("east"), east_admin_port, &[]),
    );
    let west_admin = AdminApi::new(&format!("127.0.0.1:{west_admin_port}"));
    let east_admin = format!("127.0.0.1:{east_admin_port}");
    let east_bootstrap = east.bootstrap().to_string();
    create_topic(&east_bootstrap, TOPIC, 3, &[]);
    produce_ok(&east_bootstrap, TOPIC, None, 300, "fw");

    // Destination first: it defines the link and the topics, and waits.
    let out = strait_cli_ok(&[
        "link",
        "create",
        "fw",
        "--admin",
        west_admin.addr.as_str(),
        "--source-initiated",
        "--prefix",
        "fw.",
    ]);
    println!("[fw] destination: {out}");
    let waiting = west_admin.link_status("fw").expect("status");
    assert_eq!(text(&waiting, "state"), "connecting", "{waiting}");
    // A source dialling in for a link the destination does not define is refused clearly.
    strait_cli_ok(&[
        "link",
        "create",
        "nope",
        "--admin",
        east_admin.as_str(),
        "--dial-destination",
        &format!("127.0.0.1:{west_link_port}"),
    ]);
    // Then the source dials out.
    strait_cli_ok(&[
        "link",
        "create",
        "fw",
        "--admin",
        east_admin.as_str(),
        "--dial-destination",
        &format!("127.0.0.1:{west_link_port}"),
    ]);
    let took = wait_caught_up(
        &west_admin,
        "fw",
        &east_bootstrap,
        &[(TOPIC, 3)],
        Duration::from_secs(30),
    );
    println!("[fw] west caught up {took:?} after the source dialled out");
    let east_api = AdminApi::new(&east_admin);
    let refused = east_api
        .link_status("nope")
        .expect("status of the refused link");
    let reason = format!("{refused}");
    assert!(
        text(&refused, "state") == "failed" && reason.contains("no source-initiated link named"),
        "the unknown link should be refused with a reason: {refused}"
    );

    // The source restarts (its outbound link is persisted) and redials by itself.
    east.kill9();
    east.restart();
    produce_ok(&east_bootstrap, TOPIC, None, 300, "fw-after");
    wait_caught_up(
        &west_admin,
        "fw",
        &east_bootstrap,
        &[(TOPIC, 3)],
        Duration::from_secs(60),
    );
    let east_ends = high_watermarks(&east_bootstrap, TOPIC, 3).expect("east watermarks");
    let west_ends = high_watermarks(west.bootstrap(), TOPIC, 3).expect("west watermarks");
    assert_eq!(west_ends, east_ends);
    let east_seen = consume_digests(&east_bootstrap, TOPIC, &east_ends, Duration::from_secs(30));
    let west_seen = consume_digests(west.bootstrap(), TOPIC, &east_ends, Duration::from_secs(30));
    let diffs = diff_digests("east", &east_seen, "west", &west_seen);
    assert!(diffs.is_empty(), "east and west differ: {diffs:?}");
    println!(
        "[fw] {} records identical on east and west after the source's restart",
        east_ends.iter().sum::<i64>()
    );
}

// ---------------------------------------------------------------------------------------
// 8. A structurally broken batch on the source stops its partition, nothing else

/// A source whose log holds a CRC-valid batch with lying records (what a foreign cluster or a
/// bug could serve; Strait's own Produce refuses such a batch) must not get it into the
/// mirror: the destination checks every record again, writes nothing of the batch, stops that
/// partition with the reason in the link status and metrics, and mirrors the rest of the link.
#[test]
fn invalid_source_batch_stops_its_partition_only() {
    const TOPIC: &str = "bad.events";
    const LINK: &str = "bad-link";
    let mut pair = start_pair("invalid");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    create_topic(&east, TOPIC, 2, &[]);
    produce_ok(&east, TOPIC, Some(0), 20, "before");
    produce_ok(&east, TOPIC, Some(1), 20, "before");

    // East stopped: append a batch that declares 2 records and holds 1 to partition 0's active
    // segment. Its header and CRC are valid, so east's recovery keeps it.
    pair.east.stop();
    let dir = pair.east.partition_dir(TOPIC, 0);
    let active = segment_files(&dir)
        .into_iter()
        .max_by_key(|p| common::segment_base_offset(p))
        .expect("partition 0 has a segment");
    let lying = common::record_batch_v2(20, 0, 2, 1, &framed_record(&record_fields(0, b"lying")));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .expect("open the active segment");
    std::io::Write::write_all(&mut file, &lying).expect("append the lying batch");
    drop(file);
    pair.east.restart();
    assert_eq!(
        high_watermarks(&east, TOPIC, 2).expect("east watermarks"),
        vec![22, 20],
        "east recovered the lying batch (offsets 20..21)"
    );
    produce_ok(&east, TOPIC, Some(0), 10, "after");
    produce_ok(&east, TOPIC, Some(1), 10, "after");

    create_link(&pair.admin, LINK, &pair.source_addr, &["--topics", TOPIC]);
    // Partition 1 is mirrored whole; partition 0 up to the lying batch, then stops.
    let mut last = Value::Null;
    let stopped = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let Ok(status) = pair.admin.link_status(LINK) else {
            return false;
        };
        let p0 = partition_status(&status, TOPIC, 0).map(|p| text(p, "state"));
        let p1_end = partition_status(&status, TOPIC, 1).map(|p| int(p, "destination_end_offset"));
        last = status.clone();
        text(&status, "state") == "active"
            && p0.is_some_and(|s| s.starts_with("failed: stopped"))
            && p1_end == Some(30)
    });
    assert!(
        stopped,
        "partition 0 not stopped (or partition 1 not mirrored) within 30 s; last status: {last}"
    );
    let p0 = partition_status(&last, TOPIC, 0).expect("partition 0 status");
    let state = text(p0, "state");
    println!("[invalid] partition 0: {state}");
    assert!(
        state.contains("at offset 20") && state.contains("record 1 of 2"),
        "the reason should give the offset and the record at fault: {state}"
    );
    assert_eq!(int(p0, "destination_end_offset"), 20, "{p0}");

    // Nothing of the lying batch or of what follows it reaches the mirror, also later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        high_watermarks(&west, TOPIC, 2).expect("west watermarks"),
        vec![20, 30],
        "west must hold partition 0 up to the lying batch and all of partition 1"
    );
    let metrics = pair.admin.metrics().expect("metrics");
    let active_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("strait_link_partition_active{")
                && l.contains(&format!("topic=\"{TOPIC}\""))
                && l.contains("partition=\"0\"")
        })
        .unwrap_or_else(|| panic!("no strait_link_partition_active for {TOPIC}-0 in:\n{metrics}"));
    assert!(
        active_line.ends_with(" 0"),
        "partition 0 must not count as active: {active_line}"
    );

    // The rest of the link goes on.
    produce_ok(&east, TOPIC, Some(1), 5, "later");
    let more = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        high_watermarks(&west, TOPIC, 2).is_ok_and(|w| w == vec![20, 35])
    });
    assert!(
        more,
        "partition 1 stopped following after partition 0 stopped"
    );
}
