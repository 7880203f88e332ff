//! ListOffsets, DeleteRecords and OffsetForLeaderEpoch.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::{error_code, Ctx, ProtocolError, Reply};
use crate::broker::{BrokerError, Partition, LEADER_EPOCH};
use crate::records::{self, RecordMeta, DEFAULT_MAX_DECOMPRESSED};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

fn record_lookup(
    partition: &Partition,
    batch: Option<Vec<u8>>,
    pick: impl Fn(&[u8]) -> Result<Option<RecordMeta>, records::RecordsError>,
) -> Result<(i64, i64), BrokerError> {
    let Some(batch) = batch else {
        return Ok((-1, -1));
    };
    match pick(&batch) {
        Ok(Some(meta)) => Ok((meta.timestamp, meta.offset)),
        Ok(None) => Ok((-1, -1)),
        Err(e) => Err(BrokerError::StorageFailed(format!(
            "{}-{}: cannot read records for a timestamp lookup: {e}",
            partition.topic, partition.index
        ))),
    }
}

/// (timestamp, offset) for one ListOffsets query.
fn lookup(partition: &Partition, ts: i64, read_committed: bool) -> Result<(i64, i64), BrokerError> {
    let offsets = partition.offsets();
    match ts {
        LATEST if read_committed => Ok((-1, offsets.last_stable_offset)),
        LATEST => Ok((-1, offsets.high_watermark)),
        EARLIEST | EARLIEST_LOCAL => Ok((-1, offsets.log_start_offset)),
        LATEST_TIERED => Ok((-1, -1)), // no tiered storage
        MAX_TIMESTAMP => record_lookup(partition, partition.batch_with_max_timestamp()?, |b| {
            records::max_timestamp_record(b, DEFAULT_MAX_DECOMPRESSED)
        }),
        ts if ts >= 0 => record_lookup(partition, partition.find_batch_by_timestamp(ts)?, |b| {
            records::first_at_or_after(b, ts, DEFAULT_MAX_DECOMPRESSED)
        }),
        _ => Err(BrokerError::InvalidPartitions(format!(
            "unknown ListOffsets timestamp {ts}"
        ))),
    }
}

pub(super) fn list_offsets(ctx: &Ctx, req: ListOffsetsRequest) -> Result<Reply, ProtocolError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let result = ctx
                        .broker
                        .partition(&t.name, p.partition_index)
                        .and_then(|part| lookup(&part, p.timestamp, req.isolation_level == 1));
                    match result {
                        Ok((timestamp, offset)) => {
                            let resp = resp.with_timestamp(timestamp).with_offset(offset);
                            if ctx.version >= 4 && offset >= 0 {
                                resp.with_leader_epoch(LEADER_EPOCH)
                            } else {
                                resp
                            }
                        }
                        Err(BrokerError::InvalidPartitions(_)) => {
                            resp.with_error_code(ResponseError::InvalidRequest.code())
                        }
                        Err(e) => resp.with_error_code(error_code(&e)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&ListOffsetsResponse::default().with_topics(topics))
}

pub(super) fn delete_records(ctx: &Ctx, req: DeleteRecordsRequest) -> Result<Reply, ProtocolError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    match ctx
                        .broker
                        .partition(&t.name, p.partition_index)
                        .and_then(|part| part.delete_records_before(p.offset))
                    {
                        Ok(low) => resp.with_low_watermark(low),
                        Err(e) => resp.with_low_watermark(-1).with_error_code(error_code(&e)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&DeleteRecordsResponse::default().with_topics(topics))
}

/// Every partition has had one leader epoch (0) for its whole life: the end offset of an epoch
/// at or before it is the log end; a later epoch is unknown.
pub(super) fn offset_for_leader_epoch(
    ctx: &Ctx,
    req: OffsetForLeaderEpochRequest,
) -> Result<Reply, ProtocolError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = EpochEndOffset::default().with_partition(p.partition);
                    match ctx.broker.partition(&t.topic, p.partition) {
                        Err(e) => resp.with_error_code(error_code(&e)),
                        Ok(_) if p.current_leader_epoch > LEADER_EPOCH => {
                            resp.with_error_code(ResponseError::UnknownLeaderEpoch.code())
                        }
                        Ok(_) if p.leader_epoch > LEADER_EPOCH => {
                            resp.with_leader_epoch(-1).with_end_offset(-1)
                        }
                        Ok(part) => resp
                            .with_leader_epoch(LEADER_EPOCH)
                            .with_end_offset(part.high_watermark()),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}
