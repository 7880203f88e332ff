//! Transaction APIs: InitProducerId (transactional), AddPartitionsToTxn, AddOffsetsToTxn,
//! EndTxn, TxnOffsetCommit, and the operator APIs DescribeProducers, DescribeTransactions and
//! ListTransactions. The logic is in `crate::txn`; these translate to and from the wire.

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{encode_response, error_code, str_bytes, Ctx, ProtocolError, Reply};
use crate::group::offsets::CommittedOffset;
use crate::txn::{self, code, InitOutcome};

/// Newer request versions report a fenced producer as PRODUCER_FENCED, older ones as
/// INVALID_PRODUCER_EPOCH (KIP-588).
fn fenced_code(version: i16, first_version_with_fenced: i16) -> i16 {
    if version >= first_version_with_fenced {
        code::PRODUCER_FENCED
    } else {
        code::INVALID_PRODUCER_EPOCH
    }
}

fn init_response(error: i16, producer_id: i64, epoch: i16) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
}

/// InitProducerId: idempotent producers get a fresh id; transactional ones go through the
/// transaction coordinator (epoch bump, fencing, abort of an open transaction).
pub(super) fn init_producer_id(
    ctx: Ctx,
    req: InitProducerIdRequest,
) -> Result<Reply, ProtocolError> {
    let Some(txn_id) = &req.transactional_id else {
        let body = match ctx.broker.allocate_producer_id() {
            Ok(id) => init_response(0, id, 0),
            Err(e) => init_response(error_code(&e), -1, -1),
        };
        return ctx.respond(&body);
    };
    // v0/v1 (aiokafka, kafkajs) carry no producer id/epoch: the fields keep their -1 defaults.
    let expected = (ctx.version >= 3 && req.producer_id.0 >= 0)
        .then_some((req.producer_id.0, req.producer_epoch));
    let outcome = ctx.broker.txns.init_producer_id(
        &ctx.broker,
        txn_id,
        req.transaction_timeout_ms,
        expected,
        fenced_code(ctx.version, 4),
    );
    match outcome {
        InitOutcome::Ready { producer_id, epoch } => {
            ctx.respond(&init_response(0, producer_id, epoch))
        }
        InitOutcome::Error(e) => ctx.respond(&init_response(e, -1, -1)),
        InitOutcome::AbortFirst(plan) => Ok(Reply::Later(Box::pin(async move {
            let (producer_id, epoch) = (plan.producer_id, plan.epoch);
            let error = txn::execute_end(&ctx.broker, plan).await;
            let body = if error == 0 {
                init_response(0, producer_id, epoch)
            } else {
                init_response(code::CONCURRENT_TRANSACTIONS, -1, -1)
            };
            encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
        }))),
    }
}

pub(super) fn add_partitions_to_txn(
    ctx: &Ctx,
    req: AddPartitionsToTxnRequest,
) -> Result<Reply, ProtocolError> {
    let wanted: Vec<(String, i32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), *p)))
        .collect();
    let codes = ctx.broker.txns.add_partitions(
        &ctx.broker,
        &req.v3_and_below_transactional_id,
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
        &wanted,
        fenced_code(ctx.version, 2),
    );
    let mut codes = codes.into_iter();
    let results = req
        .v3_and_below_topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(
                                    codes.next().unwrap_or(code::OPERATION_NOT_ATTEMPTED),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    ctx.respond(&AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results))
}

pub(super) fn add_offsets_to_txn(
    ctx: &Ctx,
    req: AddOffsetsToTxnRequest,
) -> Result<Reply, ProtocolError> {
    let error = ctx.broker.txns.add_offsets(
        &req.transactional_id,
        req.producer_id.0,
        req.producer_epoch,
        &req.group_id,
        fenced_code(ctx.version, 2),
    );
    ctx.respond(&AddOffsetsToTxnResponse::default().with_error_code(error))
}

pub(super) fn end_txn(ctx: Ctx, req: EndTxnRequest) -> Result<Reply, ProtocolError> {
    let prepared = ctx.broker.txns.prepare_end(
        &req.transactional_id,
        req.producer_id.0,
        req.producer_epoch,
        req.committed,
        fenced_code(ctx.version, 2),
    );
    match prepared {
        Err(e) => ctx.respond(&EndTxnResponse::default().with_error_code(e)),
        Ok(None) => ctx.respond(&EndTxnResponse::default()),
        Ok(Some(plan)) => Ok(Reply::Later(Box::pin(async move {
            let error = txn::execute_end(&ctx.broker, plan).await;
            let body = EndTxnResponse::default().with_error_code(error);
            encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
        }))),
    }
}

pub(super) fn txn_offset_commit(
    ctx: &Ctx,
    req: TxnOffsetCommitRequest,
) -> Result<Reply, ProtocolError> {
    // v3+ carries the group generation: a commit from a stale member is refused.
    let member_error = if ctx.version >= 3 && !req.member_id.is_empty() {
        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
        ctx.broker
            .groups
            .groups()
            .check_commit(
                &req.group_id,
                &req.member_id,
                instance.as_deref(),
                req.generation_id,
            )
            .err()
    } else {
        None
    };
    let now = crate::broker::now_ms();
    let entries: Vec<(String, i32, CommittedOffset)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: if ctx.version >= 2 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        commit_time_ms: now,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    },
                )
            })
        })
        .collect();
    let error = match member_error {
        Some(e) => e,
        None => ctx.broker.txns.add_pending_offsets(
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            &req.group_id,
            entries,
            fenced_code(ctx.version, 3),
        ),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    ctx.respond(&TxnOffsetCommitResponse::default().with_topics(topics))
}

pub(super) fn describe_producers(
    ctx: &Ctx,
    req: DescribeProducersRequest,
) -> Result<Reply, ProtocolError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let resp = PartitionResponse::default().with_partition_index(*p);
                    match ctx.broker.partition(&t.name, *p) {
                        Err(e) => resp.with_error_code(error_code(&e)),
                        Ok(part) => resp.with_active_producers(
                            part.producer_summary()
                                .into_iter()
                                .map(|info| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(info.producer_id))
                                        .with_producer_epoch(info.epoch as i32)
                                        .with_last_sequence(info.last_sequence)
                                        .with_last_timestamp(-1)
                                        .with_coordinator_epoch(0)
                                        .with_current_txn_start_offset(info.txn_start_offset)
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&DescribeProducersResponse::default().with_topics(topics))
}

pub(super) fn describe_transactions(
    ctx: &Ctx,
    req: DescribeTransactionsRequest,
) -> Result<Reply, ProtocolError> {
    let all = ctx.broker.txns.snapshot();
    let states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let state = describe_transactions_response::TransactionState::default()
                .with_transactional_id(id.clone());
            let Some(m) = all.iter().find(|m| m.transactional_id == id.as_str()) else {
                return state.with_error_code(code::TRANSACTIONAL_ID_NOT_FOUND);
            };
            let mut topics: Vec<TopicData> = Vec::new();
            for (t, p) in &m.partitions {
                match topics.last_mut() {
                    Some(last) if last.topic.as_str() == t => last.partitions.push(*p),
                    _ => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(str_bytes(t)))
                            .with_partitions(vec![*p]),
                    ),
                }
            }
            state
                .with_transaction_state(StrBytes::from_static_str(m.status.name()))
                .with_transaction_timeout_ms(m.timeout_ms)
                .with_transaction_start_time_ms(m.start_ms)
                .with_producer_id(ProducerId(m.producer_id))
                .with_producer_epoch(m.epoch)
                .with_topics(topics)
        })
        .collect();
    ctx.respond(&DescribeTransactionsResponse::default().with_transaction_states(states))
}

pub(super) fn list_transactions(
    ctx: &Ctx,
    req: ListTransactionsRequest,
) -> Result<Reply, ProtocolError> {
    const STATES: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let now = crate::broker::now_ms();
    let states = ctx
        .broker
        .txns
        .snapshot()
        .into_iter()
        .filter(|m| {
            req.state_filters.is_empty()
                || req
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == m.status.name())
        })
        .filter(|m| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == m.producer_id)
        })
        .filter(|m| {
            // v1+: only transactions running longer than the given duration.
            req.duration_filter < 0 || (m.start_ms >= 0 && now - m.start_ms >= req.duration_filter)
        })
        .map(|m| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(&m.transactional_id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.status.name()))
        })
        .collect();
    ctx.respond(
        &ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(states),
    )
}
