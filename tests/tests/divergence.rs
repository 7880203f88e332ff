//! End-to-end tests of divergence detection (issue 11): two `strait broker` processes linked
//! as in `link.rs`, both under producer load, and a source whose history changes under the
//! mirror. Each test checks that the divergence is reported within 5 s, that not one record of
//! the new history reaches the mirror before the operator chooses, and that after the choice
//! the mirror equals the source record for record with the removed records in quarantine.
//!
//! * `recreated_source_topic_is_detected_survives_restarts_and_reseeds`: the source topic is
//!   deleted and created again; restarts of both brokers keep the partition `diverged`;
//!   `strait mirror resolve --reseed` quarantines the old records and mirrors the new topic.
//! * `policy_reseed_resolves_a_recreated_topic_by_itself`: with `--on-divergence reseed` the
//!   mirror follows the new topic at once, the old records in quarantine.
//! * `rewritten_source_history_is_detected_and_truncated_to_the_common_offset`: the source's
//!   partition directory is restored from an older copy and takes new records at the same
//!   offsets; `strait mirror resolve --truncate` cuts the mirror back to the last common offset.
//! * `log_start_passing_the_mirror_end_is_counted_as_a_gap`: DeleteRecords on the source while
//!   the link is paused; the mirror restarts at the source's log start and the gap shows in
//!   status and metrics.
//! * `a_version_one_destination_still_mirrors_without_checks`: protocol version 1 peers
//!   still mirror (nothing is checked, and verify says why it cannot run).
//! * `mirror_verify_finds_equality_and_the_first_altered_batch`: `strait mirror verify` on a
//!   healthy mirror of 1 000 000 records (`STRAIT_VERIFY_N`), then on a mirror whose segment
//!   file was altered on disk while stopped.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    client_config, consumer_config, create_topic, free_port, free_udp_port, poll_until,
    segment_files, stored_batches, strait_cli, strait_cli_ok, AdminApi, Broker, BrokerOptions,
    KafkaConn, LinkCerts,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// A divergence must be reported this soon after the first conflicting record.
const DETECTION_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Brokers, link and load

struct Pair {
    _certs: LinkCerts,
    east: Broker,
    west: Broker,
    source_addr: String,
    admin: AdminApi,
}

fn start_pair(test: &str) -> Pair {
    start_pair_with(test, &[])
}

/// A pair whose destination gets `west_extra` arguments.
fn start_pair_with(test: &str, west_extra: &[&str]) -> Pair {
    let certs = LinkCerts::generate(&["east", "west"]);
    let link_port = free_udp_port();
    let admin_port = free_port();
    let mut east_args = certs.tls_args("east");
    east_args.extend([
        "--link-listen".to_string(),
        format!("127.0.0.1:{link_port}"),
    ]);
    let mut west_args = certs.tls_args("west");
    west_args.extend([
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin_port}"),
    ]);
    west_args.extend(west_extra.iter().map(|a| a.to_string()));
    let options = |extra: Vec<String>| BrokerOptions {
        fsync: Some("always".into()),
        auto_create_topics: Some(false),
        extra,
        ..BrokerOptions::default()
    };
    let east = Broker::start(&format!("{test}-east"), options(east_args));
    let west = Broker::start(&format!("{test}-west"), options(west_args));
    Pair {
        _certs: certs,
        east,
        west,
        source_addr: format!("127.0.0.1:{link_port}"),
        admin: AdminApi::new(&format!("127.0.0.1:{admin_port}")),
    }
}

impl Pair {
    fn link(&self, name: &str, topics: &str, extra: &[&str]) {
        let mut args = vec![
            "link",
            "create",
            name,
            "--admin",
            self.admin.addr.as_str(),
            "--source",
            self.source_addr.as_str(),
            "--topics",
            topics,
            "--rtt-ms",
            "5",
        ];
        args.extend_from_slice(extra);
        strait_cli_ok(&args);
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--admin", self.admin.addr.as_str()]);
        strait_cli(&all)
    }
}

/// Produces continuously to `topic` (partition 0) until dropped: the "under load" of the
/// acceptance criteria. Counts acknowledged records.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(bootstrap: &str, topic: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let producer: BaseProducer = client_config(&bootstrap)
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "300000")
                .create()
                .expect("load producer");
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let value = format!("load-{i:08}");
                let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
                    .partition(0)
                    .payload(value.as_bytes());
                if producer.send(record).is_ok() {
                    i += 1;
                }
                producer.poll(Duration::ZERO);
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let _ = producer.flush(Duration::from_secs(30));
            acked2.store(i, Ordering::Relaxed);
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        println!("[load] {} records sent", self.acked.load(Ordering::Relaxed));
    }
}

/// Produces `n` records `"{tag}-{i}"` to `topic`-0 and waits until every one is acknowledged.
fn produce(bootstrap: &str, topic: &str, n: usize, tag: &str) {
    let producer: BaseProducer = client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer");
    for i in 0..n {
        let value = format!("{tag}-{i:08}");
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(0).payload(value.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
    assert_eq!(
        producer.in_flight_count(),
        0,
        "undelivered records to {topic}"
    );
}

/// (low, high) watermarks of `topic`-0.
fn watermarks(bootstrap: &str, topic: &str) -> (i64, i64) {
    try_watermarks(bootstrap, topic)
        .unwrap_or_else(|e| panic!("watermarks of {topic} on {bootstrap}: {e}"))
}

/// (low, high) watermarks of `topic`-0, or why not (e.g. the mirror topic does not exist yet).
fn try_watermarks(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    let c: BaseConsumer = client_config(bootstrap).create()?;
    Ok(c.fetch_watermarks(topic, 0, Duration::from_secs(5))?)
}

/// Every record of `topic`-0 from the log start to the high watermark: (offset, value).
fn records(bootstrap: &str, topic: &str) -> Vec<(i64, Vec<u8>)> {
    let (low, high) = watermarks(bootstrap, topic);
    let mut out = Vec::new();
    if high <= low {
        return out;
    }
    let consumer: BaseConsumer = consumer_config(bootstrap, "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = low;
    while next < high {
        assert!(
            Instant::now() < deadline,
            "reading {topic} on {bootstrap}: at {next} of [{low}, {high})"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.offset() < next || m.offset() >= high {
                continue;
            }
            out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
            next = m.offset() + 1;
        }
    }
    out
}

/// The link status entry of `topic`-`partition`, if listed.
fn partition_status(admin: &AdminApi, link: &str, topic: &str, partition: i64) -> Option<Value> {
    let status = admin.link_status(link).ok()?;
    status
        .get("partitions")?
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)
        .cloned()
}

/// Waits until the partition's state starts with `prefix`; returns the entry and how long it
/// took.
fn wait_partition_state(
    admin: &AdminApi,
    link: &str,
    topic: &str,
    prefix: &str,
    timeout: Duration,
) -> (Value, Duration) {
    let started = Instant::now();
    let mut last = Value::Null;
    let ok = poll_until(
        timeout,
        Duration::from_millis(50),
        || match partition_status(admin, link, topic, 0) {
            Some(p) => {
                let hit = p["state"].as_str().unwrap_or_default().starts_with(prefix);
                last = p;
                hit
            }
            None => false,
        },
    );
    assert!(
        ok,
        "{topic}-0 not `{prefix}...` within {timeout:?}; last: {last}"
    );
    (last, started.elapsed())
}

/// Waits until west's `topic`-0 ends where east's does, then compares every record the source
/// still has; the mirror must hold no other record except, before the source's log start, the
/// rest of the batch that log start falls in (DeleteRecords cuts inside batches). Returns the
/// number of records compared.
fn assert_mirror_equals_source(pair: &Pair, topic: &str, timeout: Duration) -> usize {
    let (east, west) = (pair.east.bootstrap(), pair.west.bootstrap());
    let mut last = ((0, 0), (0, 0));
    let ok = poll_until(timeout, Duration::from_millis(100), || {
        match (try_watermarks(east, topic), try_watermarks(west, topic)) {
            (Ok(a), Ok(b)) => {
                last = (a, b);
                a.1 == b.1 && b.0 <= a.0
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "{topic}: mirror watermarks {:?} never reached the source's {:?}",
        last.1, last.0
    );
    let source_start = last.0 .0;
    let a = records(east, topic);
    let b: Vec<_> = records(west, topic)
        .into_iter()
        .filter(|(offset, _)| *offset >= source_start)
        .collect();
    assert_eq!(a.len(), b.len(), "{topic}: record counts");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "{topic}: source and mirror differ");
    }
    a.len()
}

/// `strait mirror resolve TOPIC --partition 0 CHOICE` as JSON.
fn resolve(pair: &Pair, topic: &str, choice: &str) -> Value {
    let out = pair.cli(&[
        "mirror",
        "resolve",
        topic,
        "--partition",
        "0",
        choice,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "resolve {choice} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("resolve answer is JSON")
}

/// Checks the quarantine file and report a resolution names.
fn assert_quarantined(outcome: &Value, records: u64, first: i64, end: i64) {
    assert_eq!(outcome["quarantined_records"], records, "{outcome}");
    assert_eq!(outcome["quarantined_first_offset"], first, "{outcome}");
    assert_eq!(outcome["quarantined_end_offset"], end, "{outcome}");
    let file = PathBuf::from(
        outcome["quarantine_file"]
            .as_str()
            .expect("a quarantine file"),
    );
    let report = PathBuf::from(outcome["quarantine_report"].as_str().expect("a report"));
    let kept = stored_batches(&file).expect("the quarantine file holds whole batches");
    let kept_records: i64 = kept
        .iter()
        .map(|b| i64::from(b.last_offset_delta) + 1)
        .sum();
    assert!(kept.iter().all(|b| b.crc_ok), "quarantined batches intact");
    assert_eq!(
        kept_records as u64,
        records,
        "records in {}",
        file.display()
    );
    assert_eq!(kept.first().map(|b| b.base_offset), Some(first));
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("read the report")).expect("JSON");
    assert_eq!(report["records"], records, "{report}");
    assert_eq!(report["divergence"]["kind"], outcome["divergence"]["kind"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy file");
        }
    }
}

fn values_with_prefix(records: &[(i64, Vec<u8>)], prefix: &str) -> usize {
    records
        .iter()
        .filter(|(_, v)| v.starts_with(prefix.as_bytes()))
        .count()
}

/// The start of the history tests: a pair where east holds `topic` with `n` records tagged
/// `tag`, and link `link` mirrors it with the load topic `load.east`; `load.west` is west's own
/// load topic. Returns the pair and the bootstraps of east and west.
fn linked_history(
    test: &str,
    topic: &str,
    link: &str,
    n: usize,
    tag: &str,
) -> (Pair, String, String) {
    let pair = start_pair(test);
    let (east, west) = (
        pair.east.bootstrap().to_string(),
        pair.west.bootstrap().to_string(),
    );
    create_topic(&east, topic, 1, &[]);
    create_topic(&east, "load.east", 1, &[]);
    create_topic(&west, "load.west", 1, &[]);
    produce(&east, topic, n, tag);
    pair.link(link, &format!("{topic},load.east"), &[]);
    (pair, east, west)
}

// ---------------------------------------------------------------------------------------
// 1. Topic deleted and created again on the source

#[test]
fn recreated_source_topic_is_detected_survives_restarts_and_reseeds() {
    const TOPIC: &str = "div.recreated";
    let (mut pair, east, west) = linked_history("div-recreated", TOPIC, "recreate", 300, "old");
    let _east_load = Load::start(&east, "load.east");
    let _west_load = Load::start(&west, "load.west");
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60)),
        300
    );

    let admin: AdminClient<DefaultClientContext> = client_config(&east).create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    common::block_on(admin.delete_topics(&[TOPIC], &opts)).expect("delete topic");
    create_topic(&east, TOPIC, 1, &[]);
    // The clock starts before the first record of the new topic exists.
    let conflicting_at = Instant::now();
    produce(&east, TOPIC, 200, "new");
    let (state, _) = wait_partition_state(
        &pair.admin,
        "recreate",
        TOPIC,
        "diverged",
        Duration::from_secs(30),
    );
    let took = conflicting_at.elapsed();
    println!("[recreated] diverged {took:?} after the re-creation: {state}");
    assert!(took <= DETECTION_LIMIT, "detected after {took:?}");
    assert_eq!(state["divergence"]["kind"], "topic-recreated", "{state}");
    assert!(state["divergence"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("deleted and created again"));
    // Nothing of the new topic reached the mirror.
    std::thread::sleep(Duration::from_secs(2));
    let mirrored = records(&west, TOPIC);
    assert_eq!(mirrored.len(), 300);
    assert_eq!(
        values_with_prefix(&mirrored, "old-"),
        300,
        "only the old history"
    );
    let metrics = pair.admin.metrics().expect("metrics");
    assert!(
        metrics.contains(&format!(
            "strait_link_partition_diverged{{link=\"recreate\",topic=\"{TOPIC}\",partition=\"0\"}} 1"
        )),
        "{metrics}"
    );
    let status = pair.cli(&["mirror", "status", TOPIC]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("DIVERGED (topic-recreated)"), "{text}");

    // Restarts of either broker keep it diverged, and still nothing new is appended.
    pair.west.kill9();
    pair.west.restart();
    pair.east.stop();
    pair.east.restart();
    produce(&east, TOPIC, 50, "new-after-restart");
    let (state, _) = wait_partition_state(
        &pair.admin,
        "recreate",
        TOPIC,
        "diverged",
        Duration::from_secs(30),
    );
    assert_eq!(state["divergence"]["kind"], "topic-recreated");
    std::thread::sleep(Duration::from_secs(3));
    let (state, _) = wait_partition_state(
        &pair.admin,
        "recreate",
        TOPIC,
        "diverged",
        Duration::from_secs(5),
    );
    assert_eq!(state["destination_end_offset"], 300, "{state}");
    assert_eq!(values_with_prefix(&records(&west, TOPIC), "old-"), 300);
    // Truncating makes no sense for another topic: refused with the reason.
    let refused = pair.cli(&["mirror", "resolve", TOPIC, "--partition", "0", "--truncate"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--reseed"));

    let outcome = resolve(&pair, TOPIC, "--reseed");
    assert_quarantined(&outcome, 300, 0, 300);
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60)),
        250
    );
    assert_eq!(values_with_prefix(&records(&west, TOPIC), "old-"), 0);
    wait_partition_state(
        &pair.admin,
        "recreate",
        TOPIC,
        "active",
        Duration::from_secs(10),
    );
    // The link follows the new topic from now on: more records arrive.
    produce(&east, TOPIC, 20, "newer");
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(30)),
        270
    );
}

#[test]
fn policy_reseed_resolves_a_recreated_topic_by_itself() {
    const TOPIC: &str = "div.policy";
    let pair = start_pair("div-policy");
    let east = pair.east.bootstrap().to_string();
    let west = pair.west.bootstrap().to_string();
    create_topic(&east, TOPIC, 1, &[]);
    produce(&east, TOPIC, 120, "old");
    pair.link("policy", TOPIC, &["--on-divergence", "reseed"]);
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60)),
        120
    );
    let admin: AdminClient<DefaultClientContext> = client_config(&east).create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    common::block_on(admin.delete_topics(&[TOPIC], &opts)).expect("delete topic");
    create_topic(&east, TOPIC, 1, &[]);
    produce(&east, TOPIC, 80, "new");
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(30)),
        80
    );
    assert_eq!(values_with_prefix(&records(&west, TOPIC), "old-"), 0);
    // The old records were quarantined, not dropped.
    let quarantine = pair.west.data_dir().join("mirror-quarantine");
    let reports: Vec<Value> = std::fs::read_dir(&quarantine)
        .expect("quarantine dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("JSON"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["records"], 120);
    assert_eq!(reports[0]["choice"], "reseed");
    assert_eq!(reports[0]["divergence"]["kind"], "topic-recreated");
}

// ---------------------------------------------------------------------------------------
// 2. The source's log loses its tail and takes new records at the same offsets

#[test]
fn rewritten_source_history_is_detected_and_truncated_to_the_common_offset() {
    const TOPIC: &str = "div.rewritten";
    let (mut pair, east, west) = linked_history("div-rewritten", TOPIC, "rewrite", 300, "common");
    let _west_load = Load::start(&west, "load.west");
    assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60));

    // A backup of the source partition at offset 300 ...
    pair.east.stop();
    let backup = tempfile::tempdir().expect("backup dir");
    let partition_dir = pair.east.partition_dir(TOPIC, 0);
    copy_dir(&partition_dir, backup.path());
    pair.east.restart();
    // ... then 200 more records the mirror gets ...
    produce(&east, TOPIC, 200, "lost");
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60)),
        500
    );
    // ... then the source is restored from the backup and takes new records at 300..
    pair.east.stop();
    std::fs::remove_dir_all(&partition_dir).expect("remove partition dir");
    copy_dir(backup.path(), &partition_dir);
    pair.east.restart();
    // From here the source holds another history than the mirror.
    let conflicting_at = Instant::now();
    let _east_load = Load::start(&east, "load.east");
    produce(&east, TOPIC, 400, "rewritten");
    let (state, _) = wait_partition_state(
        &pair.admin,
        "rewrite",
        TOPIC,
        "diverged",
        Duration::from_secs(30),
    );
    println!(
        "[rewritten] diverged {:?} after the rewrite: {state}",
        conflicting_at.elapsed()
    );
    // Depending on whether the destination resubscribed before or after the new records, the
    // source saw its log end below the mirror's end or another batch at the mirror's resume
    // point; either way it is reported with the offsets.
    let kind = state["divergence"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        kind == "history-rewritten" || kind == "source-truncated",
        "{state}"
    );
    let took = conflicting_at.elapsed();
    assert!(took <= DETECTION_LIMIT, "detected after {took:?}");
    assert_eq!(state["divergence"]["mirror_end_offset"], 500, "{state}");
    std::thread::sleep(Duration::from_secs(2));
    let mirrored = records(&west, TOPIC);
    assert_eq!(mirrored.len(), 500);
    assert_eq!(
        values_with_prefix(&mirrored, "rewritten-"),
        0,
        "new history leaked"
    );
    assert_eq!(values_with_prefix(&mirrored, "lost-"), 200);

    // Verify names the first differing offset before the choice, too.
    let verify = pair.cli(&["mirror", "verify", TOPIC, "--partition", "0"]);
    assert!(
        !verify.status.success(),
        "verify must fail on a diverged mirror"
    );
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("first difference at offset 300"), "{text}");

    let outcome = resolve(&pair, TOPIC, "--truncate");
    assert_eq!(outcome["resumes_at"], 300, "{outcome}");
    assert_quarantined(&outcome, 200, 300, 500);
    let total = assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60));
    assert_eq!(total, 700);
    let mirrored = records(&west, TOPIC);
    assert_eq!(values_with_prefix(&mirrored, "common-"), 300);
    assert_eq!(values_with_prefix(&mirrored, "rewritten-"), 400);
    assert_eq!(values_with_prefix(&mirrored, "lost-"), 0);
    let verify = pair.cli(&["mirror", "verify", TOPIC]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

// ---------------------------------------------------------------------------------------
// 3. The source's log start passes the mirror's end

fn delete_records_before(bootstrap: &str, topic: &str, offset: i64) {
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(offset)])]);
    let mut conn = KafkaConn::connect(bootstrap).expect("connect");
    let response: DeleteRecordsResponse = conn.request(&request, 2).expect("DeleteRecords");
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0, "{response:?}");
    assert_eq!(partition.low_watermark, offset);
}

#[test]
fn log_start_passing_the_mirror_end_is_counted_as_a_gap() {
    const TOPIC: &str = "div.gap";
    let pair = start_pair("div-gap");
    let (east, west) = (
        pair.east.bootstrap().to_string(),
        pair.west.bootstrap().to_string(),
    );
    // Small segments, so DeleteRecords can drop whole segments.
    create_topic(&east, TOPIC, 1, &[("segment.bytes", "4096")]);
    create_topic(&west, "load.west", 1, &[]);
    produce(&east, TOPIC, 100, "seen");
    pair.link("gap", TOPIC, &[]);
    let _east_load = Load::start(&east, TOPIC);
    let _west_load = Load::start(&west, "load.west");
    wait_partition_state(&pair.admin, "gap", TOPIC, "active", Duration::from_secs(30));
    assert!(poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || { watermarks(&west, TOPIC).1 >= 100 }
    ));
    strait_cli_ok(&["link", "pause", "gap", "--admin", &pair.admin.addr]);
    std::thread::sleep(Duration::from_millis(500));
    let (_, mirror_end) = watermarks(&west, TOPIC);
    produce(&east, TOPIC, 2000, "never-mirrored");
    let (_, source_end) = watermarks(&east, TOPIC);
    let cut = source_end - 500;
    delete_records_before(&east, TOPIC, cut);
    strait_cli_ok(&["link", "resume", "gap", "--admin", &pair.admin.addr]);
    let ok = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        partition_status(&pair.admin, "gap", TOPIC, 0)
            .is_some_and(|p| p["gap_offsets"].as_i64().unwrap_or(0) > 0)
    });
    assert!(ok, "no gap reported");
    drop(_east_load);
    // The mirror restarted at the source's log start (or the start of the batch it falls in)
    // and holds exactly what the source has from there.
    let n = assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60));
    assert!(n > 0);
    let (mirror_start, _) = watermarks(&west, TOPIC);
    assert!(
        mirror_start <= cut && cut - mirror_start < 500,
        "mirror starts at {mirror_start}, source at {cut}"
    );
    let gap = mirror_start - mirror_end;
    let state = partition_status(&pair.admin, "gap", TOPIC, 0).expect("status");
    assert_eq!(state["gap_offsets"], gap, "{state}");
    let metrics = pair.admin.metrics().expect("metrics");
    assert!(
        metrics.contains(&format!(
            "strait_link_partition_gap_offsets{{link=\"gap\",topic=\"{TOPIC}\",partition=\"0\"}} {gap}"
        )),
        "{metrics}"
    );
    let status = pair.cli(&["link", "status", "gap"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("GAP"), "{text}");
}

// ---------------------------------------------------------------------------------------
// 4. Version 1 peers

#[test]
fn a_version_one_destination_still_mirrors_without_checks() {
    const TOPIC: &str = "div.v1";
    let pair = start_pair_with("div-v1", &["--link-protocol-versions", "1-1"]);
    let east = pair.east.bootstrap().to_string();
    create_topic(&east, TOPIC, 1, &[]);
    produce(&east, TOPIC, 150, "v1");
    pair.link("v1", TOPIC, &[]);
    assert_eq!(
        assert_mirror_equals_source(&pair, TOPIC, Duration::from_secs(60)),
        150
    );
    // Version 1 has no verify streams: the answer says so instead of a wrong verdict.
    let out = pair.cli(&["mirror", "verify", TOPIC]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// 5. mirror verify

struct StoredAt {
    base_offset: i64,
}

/// (base offset, byte position, length) of every whole batch in a segment's bytes.
fn batch_positions(data: &[u8]) -> Vec<(i64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 61 <= data.len() {
        let base = i64::from_be_bytes(data[pos..pos + 8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(data[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let total = 12 + usize::try_from(len).expect("positive length");
        if pos + total > data.len() {
            break;
        }
        out.push((base, pos, total));
        pos += total;
    }
    out
}

#[test]
fn mirror_verify_finds_equality_and_the_first_altered_batch() {
    const TOPIC: &str = "div.verify";
    let n: usize = std::env::var("STRAIT_VERIFY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut pair = start_pair("div-verify");
    let east = pair.east.bootstrap().to_string();
    create_topic(&east, TOPIC, 1, &[("segment.bytes", "1048576")]);
    pair.link("verify", TOPIC, &[]);
    produce(&east, TOPIC, n, "v");
    assert!(poll_until(
        Duration::from_secs(300),
        Duration::from_millis(200),
        || { watermarks(pair.west.bootstrap(), TOPIC) == watermarks(&east, TOPIC) }
    ));
    let started = Instant::now();
    let out = pair.cli(&["mirror", "verify", TOPIC]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!(
        "[verify] healthy mirror of {n} records in {:?}: {text}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("identical to the source"), "{text}");

    // Alter one record's bytes in a closed segment of the mirror, broker stopped.
    pair.west.stop();
    let segments = segment_files(&pair.west.partition_dir(TOPIC, 0));
    assert!(
        segments.len() >= 3,
        "want closed segments, got {segments:?}"
    );
    let victim = &segments[1];
    let mut bytes = std::fs::read(victim).expect("read segment");
    let batches = batch_positions(&bytes);
    let (base_offset, position, len) = batches[batches.len() / 2];
    // The last byte of the batch: inside its last record's value.
    bytes[position + len - 1] ^= 0x5a;
    std::fs::write(victim, &bytes).expect("write segment");
    let batch = StoredAt { base_offset };
    pair.west.restart();
    let out = pair.cli(&["mirror", "verify", TOPIC, "--partition", "0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("[verify] altered mirror: {text}");
    assert!(!out.status.success(), "verify must fail: {text}");
    assert!(
        text.contains(&format!("first difference at offset {}", batch.base_offset)),
        "want offset {}: {text}",
        batch.base_offset
    );
    // A range that ends before the damage is identical.
    let to = batch.base_offset.to_string();
    let out = pair.cli(&["mirror", "verify", TOPIC, "--from", "0", "--to", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
