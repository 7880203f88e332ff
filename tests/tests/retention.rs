//! Size-based retention: a topic with 16 KiB segments (set at CreateTopics) gets
//! retention.bytes = 64 KiB through AlterConfigs while holding ~60 segments; with
//! `--retention-check-ms 200` the broker must delete whole old segments (files gone from
//! disk), advance the log start offset (ListOffsets earliest), answer a Fetch below it with
//! OFFSET_OUT_OF_RANGE, and an rdkafka consumer assigned at offset 0 must get that error with
//! `auto.offset.reset=error` and resume at the new log start with `auto.offset.reset=earliest`,
//! reading the right data from there.

mod common;

use std::time::{Duration, Instant};

use common::{
    alter_topic_configs, client_config, consumer_config, create_topic, describe_topic_configs,
    segment_base_offset, segment_files, wait_until, Broker, BrokerOptions, KafkaConn,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "retained";
const SEGMENT_BYTES: u64 = 16 * 1024;
const RETENTION_BYTES: u64 = 64 * 1024;
const MESSAGES: usize = 1000;
const VALUE_LEN: usize = 1000;

fn value_of(i: usize) -> Vec<u8> {
    let mut v = format!("message-{i:06}-").into_bytes();
    v.resize(VALUE_LEN, b'a' + (i % 26) as u8);
    v
}

fn watermarks(c: &BaseConsumer) -> (i64, i64) {
    c.fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("fetch_watermarks")
}

fn log_bytes(broker: &Broker) -> u64 {
    segment_files(&broker.partition_dir(TOPIC, 0))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn consumer(bootstrap: &str, reset: &str) -> BaseConsumer {
    let c: BaseConsumer = consumer_config(bootstrap, reset)
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(0))
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    c
}

#[test]
fn size_retention_deletes_segments_and_consumers_reset_to_earliest() {
    let t0 = Instant::now();
    let mut broker = Broker::start(
        "retention",
        BrokerOptions {
            retention_check_ms: Some(200),
            ..Default::default()
        },
    );
    let boot = broker.bootstrap().to_string();
    let seg = SEGMENT_BYTES.to_string();
    create_topic(
        &boot,
        TOPIC,
        1,
        &[("segment.bytes", &seg), ("retention.bytes", "-1")],
    );

    // ~1 MB in ~4 KiB batches (4 messages each): many 16 KiB segments.
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&boot)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("batch.num.messages", "4")
        .set("compression.type", "none")
        .create()
        .expect("create producer");
    for i in 0..MESSAGES {
        let v = value_of(i);
        let k = i.to_string();
        let mut rec = BaseRecord::to(TOPIC).key(&k).payload(&v).partition(0);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("send {i}: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let pdir = broker.partition_dir(TOPIC, 0);
    let before = segment_files(&pdir);
    println!(
        "[retention] {} segment files, {} bytes of log before retention.bytes is set",
        before.len(),
        log_bytes(&broker)
    );
    assert!(
        before.len() >= 20,
        "expected many segments with segment.bytes={SEGMENT_BYTES}, found {}: {before:?}",
        before.len()
    );

    let c = consumer(&boot, "error");
    assert_eq!(
        watermarks(&c),
        (0, MESSAGES as i64),
        "watermarks after producing"
    );
    // retention.bytes=-1 (unlimited): several retention checks (200 ms apart) delete nothing.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        watermarks(&c).0,
        0,
        "log start moved with retention.bytes=-1"
    );
    assert_eq!(
        segment_files(&pdir).len(),
        before.len(),
        "segments deleted with retention.bytes=-1"
    );
    drop(c);

    // AlterConfigs replaces the whole config set: name both values.
    let rb = RETENTION_BYTES.to_string();
    alter_topic_configs(
        &boot,
        TOPIC,
        &[("segment.bytes", &seg), ("retention.bytes", &rb)],
    );
    let cfg = describe_topic_configs(&boot, TOPIC);
    assert_eq!(
        cfg.get("retention.bytes").cloned().flatten().as_deref(),
        Some(rb.as_str()),
        "DescribeConfigs retention.bytes"
    );
    assert_eq!(
        cfg.get("segment.bytes").cloned().flatten().as_deref(),
        Some(seg.as_str()),
        "DescribeConfigs segment.bytes"
    );

    let c = consumer(&boot, "error");
    let t = Instant::now();
    let moved = wait_until(Duration::from_secs(20), || watermarks(&c).0 > 0);
    assert!(
        moved,
        "log start offset still 0 twenty seconds after retention.bytes={RETENTION_BYTES}"
    );
    // Deletion continues until the retained size fits; wait for the segment count to settle.
    let max_files = (RETENTION_BYTES / SEGMENT_BYTES) as usize + 2;
    let shrunk = wait_until(Duration::from_secs(20), || {
        segment_files(&pdir).len() <= max_files
    });
    let after = segment_files(&pdir);
    println!(
        "[retention] log start {} after {:?}; {} segment files ({} bytes) left: {:?}",
        watermarks(&c).0,
        t.elapsed(),
        after.len(),
        log_bytes(&broker),
        after
            .iter()
            .filter_map(|p| segment_base_offset(p))
            .collect::<Vec<_>>()
    );
    assert!(
        shrunk,
        "{} segment files left (want <= {max_files} for retention.bytes={RETENTION_BYTES}, segment.bytes={SEGMENT_BYTES})",
        after.len()
    );
    assert!(
        log_bytes(&broker) <= RETENTION_BYTES + SEGMENT_BYTES + 8 * 1024,
        "{} bytes of log left, retention.bytes={RETENTION_BYTES}",
        log_bytes(&broker)
    );
    let (low, high) = watermarks(&c);
    assert_eq!(high, MESSAGES as i64, "high watermark changed");
    let first_base = after
        .first()
        .and_then(|p| segment_base_offset(p))
        .expect("a remaining segment");
    assert_eq!(
        first_base, low,
        "log start offset should be the base offset of the oldest remaining segment"
    );

    // A raw Fetch at offset 0 gets OFFSET_OUT_OF_RANGE (1).
    let mut conn = KafkaConn::connect(&boot).expect("connect");
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = conn.request(&fetch, 12).expect("Fetch v12");
    let p = &r.responses[0].partitions[0];
    assert_eq!(
        p.error_code, 1,
        "Fetch at offset 0: want OFFSET_OUT_OF_RANGE, got {p:?}"
    );
    // Kafka answers errors with log_start_offset -1 (unknown); the real value is also fine.
    assert!(
        p.log_start_offset == -1 || p.log_start_offset == low,
        "Fetch response log_start_offset {} (want -1 or {low})",
        p.log_start_offset
    );

    // rdkafka with auto.offset.reset=error surfaces the out-of-range fetch.
    let mut saw_reset_error = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while saw_reset_error.is_none() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => panic!(
                "consumer at offset 0 got a message at offset {} below the log start {low}",
                m.offset()
            ),
            Some(Err(e)) => saw_reset_error = Some(e),
        }
    }
    match &saw_reset_error {
        Some(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {}
        other => panic!("want an AutoOffsetReset (offset out of range) error, got {other:?}"),
    }
    println!("[retention] auto.offset.reset=error: {saw_reset_error:?}");
    drop(c);

    // With auto.offset.reset=earliest the consumer resumes at the log start and reads on.
    let low_before = watermarks(&consumer(&boot, "error")).0;
    let c = consumer(&boot, "earliest");
    let mut first = None;
    let mut next = None;
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next != Some(MESSAGES as i64) && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            Some(Ok(m)) => {
                let o = m.offset();
                if first.is_none() {
                    first = Some(o);
                }
                if let Some(n) = next {
                    assert_eq!(o, n, "offsets must be dense");
                }
                next = Some(o + 1);
                assert_eq!(
                    m.payload(),
                    Some(value_of(o as usize).as_slice()),
                    "value at offset {o}"
                );
                assert_eq!(m.key(), Some(o.to_string().as_bytes()), "key at offset {o}");
                count += 1;
            }
        }
    }
    let low_after = watermarks(&c).0;
    let first = first.expect("no message consumed after the reset");
    println!(
        "[retention] earliest reset: first offset {first}, {count} messages; log start {low_before}..{low_after}; total {:?}",
        t0.elapsed()
    );
    assert!(
        (low_before..=low_after).contains(&first),
        "first consumed offset {first} is not the log start ({low_before}..={low_after})"
    );
    assert_eq!(
        next,
        Some(MESSAGES as i64),
        "consumed up to the high watermark"
    );
    drop(c);
    broker.stop();
}
