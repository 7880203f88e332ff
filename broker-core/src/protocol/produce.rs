//! Produce: validate each partition's single v2 batch (header, CRC and every record; see
//! [`crate::records`]), append it in request order, then answer according to `acks` (0: no
//! response, 1: after the write, -1: after it is durable). A refused batch stores nothing and
//! leaves the request's other partitions unaffected; from v8 on the answer names the record at
//! fault (`record_errors`) and says what was wrong (`error_message`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{encode_response, error_code, error_message, Ctx, ProtocolError, Reply};
use crate::broker::{AppendOutcome, BrokerError, Partition};

/// The outcome for one partition of the request.
struct PartitionResult {
    index: i32,
    result: Result<(Arc<Partition>, AppendOutcome), BrokerError>,
}

fn append_one(
    ctx: &Ctx,
    topic: &str,
    index: i32,
    records: Option<&Bytes>,
    transactional_id: Option<&str>,
) -> Result<(Arc<Partition>, AppendOutcome), BrokerError> {
    let t = ctx
        .broker
        .topic(topic)
        .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
    t.check_writable()?;
    let partition = t
        .partition(index)
        .ok_or_else(|| BrokerError::UnknownPartition(topic.to_string(), index))?;
    let records = records.ok_or(BrokerError::InvalidBatch(
        crate::batch::BatchError::ShortHeader(0),
    ))?;
    if let Some(txn_id) = transactional_id {
        // A transactional batch must belong to an open transaction that added this partition,
        // or its marker could never be written.
        if let Ok(h) = crate::batch::BatchHeader::parse(records) {
            if h.is_transactional() {
                ctx.broker
                    .txns
                    .check_produce(txn_id, h.producer_id, h.producer_epoch, topic, index)
                    .map_err(BrokerError::Transaction)?;
            }
        }
    }
    let outcome = partition.append_produced(
        records.to_vec(),
        &t.config(),
        ctx.broker.config.fsync,
        &ctx.broker.data_arrived,
    )?;
    Ok((partition, outcome))
}

fn partition_response(version: i16, r: &PartitionResult) -> PartitionProduceResponse {
    let mut resp = PartitionProduceResponse::default().with_index(r.index);
    match &r.result {
        Ok((_, out)) => {
            resp = resp
                .with_base_offset(out.base_offset)
                .with_log_append_time_ms(out.log_append_time_ms);
            if version >= 5 {
                resp = resp.with_log_start_offset(out.log_start_offset);
            }
        }
        Err(e) => {
            resp = resp.with_error_code(error_code(e)).with_base_offset(-1);
            if version >= 8 {
                resp = resp.with_error_message(error_message(e));
                if let BrokerError::InvalidRecords(invalid) = e {
                    // Name the record at fault, as Kafka's LogValidator does.
                    if let Some(index) = invalid.record_index() {
                        resp = resp.with_record_errors(vec![BatchIndexAndErrorMessage::default()
                            .with_batch_index(index as i32)
                            .with_batch_index_error_message(Some(StrBytes::from_string(
                                invalid.to_string(),
                            )))]);
                    }
                }
            }
        }
    }
    resp
}

fn build_response(version: i16, topics: &[(TopicName, Vec<PartitionResult>)]) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        topics
            .iter()
            .map(|(name, parts)| {
                TopicProduceResponse::default()
                    .with_name(name.clone())
                    .with_partition_responses(
                        parts
                            .iter()
                            .map(|p| partition_response(version, p))
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// A response giving every partition of the request the same error.
fn uniform_error(topics: &[(TopicName, Vec<PartitionResult>)], code: i16) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        topics
            .iter()
            .map(|(name, parts)| {
                TopicProduceResponse::default()
                    .with_name(name.clone())
                    .with_partition_responses(
                        parts
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_base_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

pub(super) fn produce(ctx: Ctx, req: ProduceRequest) -> Result<Reply, ProtocolError> {
    let acks = req.acks;
    let valid_acks = (-1..=1).contains(&acks);
    let transactional_id = req.transactional_id.as_ref().map(|t| t.to_string());
    let mut topics = Vec::with_capacity(req.topic_data.len());
    for t in &req.topic_data {
        let parts = t
            .partition_data
            .iter()
            .map(|p| PartitionResult {
                index: p.index,
                // Nothing is appended for a request with invalid acks.
                result: if valid_acks {
                    append_one(
                        &ctx,
                        &t.name,
                        p.index,
                        p.records.as_ref(),
                        transactional_id.as_deref(),
                    )
                } else {
                    Err(BrokerError::InvalidBatch(
                        crate::batch::BatchError::ShortHeader(0),
                    ))
                },
            })
            .collect();
        topics.push((t.name.clone(), parts));
    }
    match acks {
        0 => Ok(Reply::Nothing),
        1 => ctx.respond(&build_response(ctx.version, &topics)),
        -1 => {
            let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
            let fsync = ctx.broker.config.fsync;
            Ok(Reply::Later(Box::pin(async move {
                let broker = ctx.broker.clone();
                // Start every partition's fsync first so they run in parallel.
                for (_, parts) in &topics {
                    for p in parts {
                        if let Ok((partition, _)) = &p.result {
                            partition.start_sync(fsync, &broker.data_arrived);
                        }
                    }
                }
                let wait_all = async {
                    for (_, parts) in topics.iter_mut() {
                        for p in parts.iter_mut() {
                            if let Ok((partition, out)) = &p.result {
                                if let Err(e) = partition
                                    .wait_durable(out.end_offset, fsync, &broker.data_arrived)
                                    .await
                                {
                                    p.result = Err(e);
                                }
                            }
                        }
                    }
                };
                let body = if tokio::time::timeout(timeout, wait_all).await.is_err() {
                    // Not durable in time: the client retries, and an idempotent producer then
                    // gets its original offsets back as a duplicate.
                    uniform_error(&topics, ResponseError::RequestTimedOut.code())
                } else {
                    build_response(ctx.version, &topics)
                };
                encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
            })))
        }
        _ => ctx.respond(&uniform_error(
            &topics,
            ResponseError::InvalidRequiredAcks.code(),
        )),
    }
}
