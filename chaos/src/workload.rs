//! The workload: a producer writing numbered records and logging every acknowledgement, and a
//! consumer reading a topic back, both through librdkafka (the `rdkafka` crate).
//!
//! Records: key = the writer id (decimal text), value = `{"w":WRITER,"s":SEQ}` (see
//! [`encode_value`] / [`parse_value`]). Record `seq` goes to partition `seq % partitions`.
//! The producer uses `acks=all` and idempotence; its delivery callback appends
//! `(partition, offset, writer, seq)` to an in-memory log (and a file, if asked) only when the
//! broker acknowledged the record. In transactional mode records are written in transactions
//! of `records_per_transaction` records, each committed or aborted by a seeded RNG; the
//! outcome of each is remembered ([`TransactionOutcomes`]).
//!
//! Everything is bounded: by record count, by wall-clock time and by a stop flag.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::checker::{Acked, Observed, RecordId, TransactionOutcomes};
use crate::rng::Rng;

/// Errors of the workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("ack log file: {0}")]
    LogFile(#[from] std::io::Error),
    #[error("consumer did not reach the end of {topic} within {timeout:?} (read {read} records)")]
    ReadTimeout {
        topic: String,
        timeout: Duration,
        read: usize,
    },
}

/// The value of record `seq` of `writer`.
pub fn encode_value(id: RecordId) -> String {
    format!("{{\"w\":{},\"s\":{}}}", id.writer, id.seq)
}

/// Parses a value written by [`encode_value`]; `None` for anything else.
pub fn parse_value(value: &[u8]) -> Option<RecordId> {
    let text = std::str::from_utf8(value).ok()?;
    let inner = text.strip_prefix("{\"w\":")?.strip_suffix('}')?;
    let (writer, seq) = inner.split_once(",\"s\":")?;
    Some(RecordId {
        writer: writer.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

/// What and how long to produce.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub bootstrap: String,
    pub topic: String,
    /// Number of partitions of `topic`; record `seq` goes to `seq % partitions`.
    pub partitions: i32,
    pub writer: u32,
    /// Stop after this many records were sent...
    pub max_records: u64,
    /// ...or after this long, whichever comes first.
    pub max_duration: Duration,
    /// At most this many records sent but not yet acknowledged (bounds memory).
    pub max_in_flight: u64,
    /// Pause between records (0 = as fast as the in-flight bound allows).
    pub pause_between_records: Duration,
    /// At most this many records per second on average (`None`: unlimited).
    pub max_records_per_second: Option<u64>,
    /// Transactional mode: `Some(records per transaction)`.
    pub records_per_transaction: Option<u32>,
    /// Probability that a transaction is aborted (transactional mode).
    pub abort_probability: f64,
    /// Seed of the commit/abort decisions.
    pub seed: u64,
    /// How long librdkafka keeps retrying a record (`message.timeout.ms`).
    pub message_timeout: Duration,
    /// Also append every acknowledgement to this file (`partition offset writer seq txn`).
    pub ack_log_file: Option<PathBuf>,
    /// Further librdkafka settings.
    pub extra_config: Vec<(String, String)>,
}

impl WorkloadConfig {
    /// Idempotent, non-transactional defaults: 1 partition, writer 1, 10 000 records, 60 s,
    /// 1000 in flight, 120 s message timeout.
    pub fn new(bootstrap: &str, topic: &str) -> WorkloadConfig {
        WorkloadConfig {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            partitions: 1,
            writer: 1,
            max_records: 10_000,
            max_duration: Duration::from_secs(60),
            max_in_flight: 1000,
            pause_between_records: Duration::ZERO,
            max_records_per_second: None,
            records_per_transaction: None,
            abort_probability: 0.3,
            seed: 1,
            message_timeout: Duration::from_secs(120),
            ack_log_file: None,
            extra_config: Vec::new(),
        }
    }
}

/// What a producer run achieved.
#[derive(Debug, Clone, Default)]
pub struct WorkloadOutcome {
    /// Every acknowledged record.
    pub acked: Vec<Acked>,
    /// Records handed to librdkafka.
    pub sent: u64,
    /// Records librdkafka reported as failed (not acknowledged; may or may not be stored).
    pub failed: u64,
    /// The first delivery error seen, for diagnosis.
    pub first_error: Option<String>,
    pub transactions: TransactionOutcomes,
    pub elapsed: Duration,
}

/// Live view of a running producer, shared with the scenario driving faults.
#[derive(Debug, Default)]
pub struct Progress {
    /// Set to stop producing (records in flight still get their fate).
    pub stop: AtomicBool,
    /// Records acknowledged so far.
    pub acked: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// Waits until more than `after` records are acknowledged; returns how long that took,
    /// or `None` after `timeout`.
    pub fn wait_for_ack_beyond(&self, after: u64, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.acked.load(Ordering::Acquire) > after {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// Shared between the producer's delivery callback and the run loop.
#[derive(Debug, Default)]
struct AckLog {
    acked: Mutex<Vec<Acked>>,
    failed: AtomicU64,
    outstanding: AtomicU64,
    first_error: Mutex<Option<String>>,
    file: Option<Mutex<std::fs::File>>,
}

/// The opaque carried with each record to its delivery callback.
#[derive(Debug)]
struct Pending {
    id: RecordId,
    transaction: Option<u64>,
}

struct LoggingContext {
    log: Arc<AckLog>,
    progress: Arc<Progress>,
}

impl ClientContext for LoggingContext {}

impl ProducerContext for LoggingContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        self.log.outstanding.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(message) => {
                let acked = Acked {
                    partition: message.partition(),
                    offset: message.offset(),
                    id: pending.id,
                    transaction: pending.transaction,
                };
                if let Some(file) = &self.log.file {
                    if let Ok(mut file) = file.lock() {
                        let _ = writeln!(
                            file,
                            "{} {} {} {} {}",
                            acked.partition,
                            acked.offset,
                            acked.id.writer,
                            acked.id.seq,
                            acked.transaction.map_or(-1, |t| t as i64)
                        );
                    }
                }
                if let Ok(mut acked_log) = self.log.acked.lock() {
                    acked_log.push(acked);
                }
                self.progress.acked.fetch_add(1, Ordering::AcqRel);
            }
            Err((error, _)) => {
                self.log.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.log.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// A client config with loopback-friendly timeouts.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3");
    c
}

/// Runs the producer until `config`'s bounds or `progress.stop` is set; waits (up to the
/// message timeout) for every sent record's fate before returning.
pub fn produce(
    config: &WorkloadConfig,
    progress: Arc<Progress>,
) -> Result<WorkloadOutcome, WorkloadError> {
    let file = match &config.ack_log_file {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let log = Arc::new(AckLog {
        file,
        ..AckLog::default()
    });
    let mut client = client_config(&config.bootstrap);
    client
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        .set("request.timeout.ms", "10000");
    if config.records_per_transaction.is_some() {
        client.set(
            "transactional.id",
            format!("strait-chaos-{}-{}", config.topic, config.writer),
        );
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        client.set(
            "transaction.timeout.ms",
            config.message_timeout.as_millis().max(1000).to_string(),
        );
    }
    for (k, v) in &config.extra_config {
        client.set(k, v);
    }
    let producer: ThreadedProducer<LoggingContext> =
        client.create_with_context(LoggingContext {
            log: Arc::clone(&log),
            progress: Arc::clone(&progress),
        })?;
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let mut outcome = WorkloadOutcome::default();
    let mut rng = Rng::new(config.seed);
    let key = config.writer.to_string();
    let partitions = config.partitions.max(1) as u64;
    let api_timeout = Duration::from_secs(30);

    let mut transaction: Option<u64> = None;
    let mut in_transaction = 0u32;
    let mut next_transaction = 0u64;
    if config.records_per_transaction.is_some() {
        producer.init_transactions(api_timeout)?;
    }

    let mut seq = 0u64;
    while seq < config.max_records
        && Instant::now() < deadline
        && !progress.stop.load(Ordering::Relaxed)
    {
        if let Some(per) = config.records_per_transaction {
            if transaction.is_none() {
                producer.begin_transaction()?;
                transaction = Some(next_transaction);
                next_transaction += 1;
                in_transaction = 0;
            }
            if in_transaction >= per {
                finish_transaction(
                    &producer,
                    &mut transaction,
                    &mut rng,
                    config,
                    &mut outcome,
                    api_timeout,
                )?;
                continue;
            }
        }
        // Bound the records in flight.
        while log.outstanding.load(Ordering::Acquire) >= config.max_in_flight
            && Instant::now() < deadline + config.message_timeout
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let id = RecordId {
            writer: config.writer,
            seq,
        };
        let value = encode_value(id);
        let partition = (seq % partitions) as i32;
        let mut pending = Box::new(Pending { id, transaction });
        let send_deadline = Instant::now() + config.message_timeout;
        loop {
            log.outstanding.fetch_add(1, Ordering::AcqRel);
            let record = BaseRecord::with_opaque_to(&config.topic, pending)
                .partition(partition)
                .key(&key)
                .payload(&value);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record))
                    if Instant::now() < send_deadline =>
                {
                    log.outstanding.fetch_sub(1, Ordering::AcqRel);
                    pending = record.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    log.outstanding.fetch_sub(1, Ordering::AcqRel);
                    return Err(e.into());
                }
            }
        }
        outcome.sent += 1;
        in_transaction += 1;
        seq += 1;
        if !config.pause_between_records.is_zero() {
            std::thread::sleep(config.pause_between_records);
        }
        if let Some(rate) = config.max_records_per_second.filter(|r| *r > 0) {
            // Sleep whenever ahead of the schedule `seq / rate` seconds after the start.
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
    }
    if transaction.is_some() {
        finish_transaction(
            &producer,
            &mut transaction,
            &mut rng,
            config,
            &mut outcome,
            api_timeout,
        )?;
    }
    let _ = producer.flush(config.message_timeout + Duration::from_secs(5));
    let wait_until = Instant::now() + config.message_timeout + Duration::from_secs(5);
    while log.outstanding.load(Ordering::Acquire) > 0 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(producer);
    outcome.elapsed = started.elapsed();
    outcome.failed = log.failed.load(Ordering::Relaxed);
    outcome.first_error = log.first_error.lock().ok().and_then(|e| e.clone());
    outcome.acked = log.acked.lock().map(|a| a.clone()).unwrap_or_default();
    Ok(outcome)
}

fn finish_transaction(
    producer: &ThreadedProducer<LoggingContext>,
    transaction: &mut Option<u64>,
    rng: &mut Rng,
    config: &WorkloadConfig,
    outcome: &mut WorkloadOutcome,
    timeout: Duration,
) -> Result<(), WorkloadError> {
    let Some(id) = transaction.take() else {
        return Ok(());
    };
    if rng.chance(config.abort_probability) {
        // Flush first so that the aborted records really reach the log (abort would purge
        // records still queued in the client, and the check would prove nothing).
        producer.flush(timeout)?;
        match producer.abort_transaction(timeout) {
            Ok(()) => {
                outcome.transactions.aborted.insert(id);
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        match producer.commit_transaction(timeout) {
            Ok(()) => {
                outcome.transactions.committed.insert(id);
            }
            Err(e) => {
                // In doubt; try to abort so the producer can go on (fatal errors end the run).
                let _ = producer.abort_transaction(timeout);
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Reads every record of `topic` (partitions `0..partitions`) from the beginning up to the
/// end (the high watermark, or the last stable offset with `read_committed`).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    read_committed: bool,
    timeout: Duration,
) -> Result<(Vec<Observed>, u64), WorkloadError> {
    let mut c = client_config(bootstrap);
    c.set("group.id", "strait-chaos-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    let consumer: BaseConsumer = c.create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut observed = Vec::new();
    let mut unparseable = 0u64;
    let mut at_end = vec![false; partitions.max(0) as usize];
    while at_end.iter().any(|done| !done) {
        if Instant::now() >= deadline {
            return Err(WorkloadError::ReadTimeout {
                topic: topic.to_string(),
                timeout,
                read: observed.len(),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(done) = usize::try_from(p).ok().and_then(|i| at_end.get_mut(i)) {
                    *done = true;
                }
            }
            Some(Err(_)) => {}
            Some(Ok(message)) => {
                let partition = message.partition();
                if let Some(done) = usize::try_from(partition)
                    .ok()
                    .and_then(|i| at_end.get_mut(i))
                {
                    *done = false;
                }
                match message.payload().and_then(parse_value) {
                    Some(id) => observed.push(Observed {
                        partition,
                        offset: message.offset(),
                        id,
                    }),
                    None => unparseable += 1,
                }
            }
        }
    }
    Ok((observed, unparseable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_foreign_values_are_rejected() {
        let id = RecordId {
            writer: 7,
            seq: 123_456,
        };
        assert_eq!(encode_value(id), "{\"w\":7,\"s\":123456}");
        assert_eq!(parse_value(encode_value(id).as_bytes()), Some(id));
        for bad in [
            "",
            "{\"w\":1}",
            "{\"w\":x,\"s\":1}",
            "hello",
            "{\"w\":1,\"s\":2} ",
        ] {
            assert_eq!(parse_value(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
