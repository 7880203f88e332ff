//! The Kafka protocol layer: the table of advertised APIs, request dispatch, response encoding
//! and the mapping of broker errors to Kafka error codes.
//!
//! A request frame (without its 4-byte length) goes in; a [`Reply`] comes out. Work that must
//! happen in request order (appends) is done before `handle` returns; work that may wait
//! (durability for acks=-1, long-polling fetches) is returned as a future, which the connection
//! awaits in order, so responses leave in request order while requests stay pipelined.

mod admin;
mod fetch;
mod metadata;
mod offsets;
mod produce;
pub mod records;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes, VersionRange};
use thiserror::Error;

use crate::broker::{Broker, BrokerError};
use crate::log::LogError;

/// A response still being computed (acks=-1 produce, long-poll fetch).
pub type PendingReply =
    Pin<Box<dyn Future<Output = Result<Option<BytesMut>, ProtocolError>> + Send>>;

/// What the connection does after a request.
pub enum Reply {
    /// Send these bytes (a complete frame with its length prefix).
    Now(BytesMut),
    /// Send the result of this future when it completes, keeping request order.
    Later(PendingReply),
    /// Send nothing (Produce with acks=0).
    Nothing,
}

/// A request that cannot be answered: the connection is closed, as Kafka does.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("request frame of {0} bytes is shorter than a request header")]
    ShortFrame(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{api:?} v{version} is not supported (supported: v{min}-v{max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("{api:?} v{version} is not implemented by Strait")]
    NotImplemented { api: ApiKey, version: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// The APIs and versions this broker implements, exactly: anything else is not advertised.
pub fn advertised(key: ApiKey) -> Option<VersionRange> {
    let r = |min, max| Some(VersionRange { min, max });
    match key {
        ApiKey::Produce => r(3, 12),
        ApiKey::Fetch => r(4, 12),
        ApiKey::ListOffsets => r(1, 10),
        ApiKey::Metadata => r(0, 12),
        ApiKey::ListGroups => r(0, 5),
        ApiKey::ApiVersions => r(0, 4),
        ApiKey::CreateTopics => r(2, 7),
        ApiKey::DeleteTopics => r(1, 6),
        ApiKey::DeleteRecords => r(0, 2),
        ApiKey::InitProducerId => r(0, 5),
        ApiKey::OffsetForLeaderEpoch => r(2, 4),
        ApiKey::DescribeConfigs => r(1, 4),
        ApiKey::AlterConfigs => r(0, 2),
        ApiKey::CreatePartitions => r(0, 3),
        ApiKey::IncrementalAlterConfigs => r(0, 1),
        ApiKey::DescribeCluster => r(0, 1),
        _ => None,
    }
}

/// Encodes `[length][response header][body]`.
pub fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    api_version: i16,
    body: &R,
) -> Result<BytesMut, ProtocolError> {
    let header_version = R::header_version(api_version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let enc = |e: anyhow::Error| ProtocolError::Encode(e.to_string());
    let size = header.compute_size(header_version).map_err(enc)?
        + body.compute_size(api_version).map_err(enc)?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(size as i32);
    header.encode(&mut out, header_version).map_err(enc)?;
    body.encode(&mut out, api_version).map_err(enc)?;
    Ok(out)
}

/// Per-request context handed to handlers.
pub(crate) struct Ctx {
    pub broker: Arc<Broker>,
    pub correlation_id: i32,
    pub version: i16,
}

impl Ctx {
    pub fn respond<R: Encodable + HeaderVersion>(&self, body: &R) -> Result<Reply, ProtocolError> {
        Ok(Reply::Now(encode_response(
            self.correlation_id,
            self.version,
            body,
        )?))
    }
}

/// Handles one request frame (without its length prefix).
pub fn handle(broker: &Arc<Broker>, mut frame: Bytes) -> Result<Reply, ProtocolError> {
    if frame.len() < 8 {
        return Err(ProtocolError::ShortFrame(frame.len()));
    }
    // api key, api version and correlation id sit at fixed offsets in every header version
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(raw_key).map_err(|_| ProtocolError::UnknownApiKey(raw_key))?;
    let Some(range) = advertised(api) else {
        return Err(ProtocolError::UnknownApiKey(raw_key));
    };
    if version < range.min || version > range.max {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges; the client
            // retries with a version we listed.
            let body = metadata::api_versions_body(ResponseError::UnsupportedVersion.code());
            return Ok(Reply::Now(encode_response(correlation_id, 0, &body)?));
        }
        return Err(ProtocolError::UnsupportedVersion {
            api,
            version,
            min: range.min,
            max: range.max,
        });
    }
    let malformed = |e: anyhow::Error| ProtocolError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let _header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let request = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    let ctx = Ctx {
        broker: broker.clone(),
        correlation_id,
        version,
    };
    match request {
        RequestKind::ApiVersions(_) => ctx.respond(&metadata::api_versions_body(0)),
        RequestKind::Metadata(r) => metadata::metadata(&ctx, r),
        RequestKind::Produce(r) => produce::produce(ctx, r),
        RequestKind::Fetch(r) => fetch::fetch(ctx, r),
        RequestKind::ListOffsets(r) => offsets::list_offsets(&ctx, r),
        RequestKind::DeleteRecords(r) => offsets::delete_records(&ctx, r),
        RequestKind::OffsetForLeaderEpoch(r) => offsets::offset_for_leader_epoch(&ctx, r),
        RequestKind::InitProducerId(r) => offsets::init_producer_id(&ctx, r),
        RequestKind::CreateTopics(r) => admin::create_topics(&ctx, r),
        RequestKind::DeleteTopics(r) => admin::delete_topics(&ctx, r),
        RequestKind::CreatePartitions(r) => admin::create_partitions(&ctx, r),
        RequestKind::DescribeConfigs(r) => admin::describe_configs(&ctx, r),
        RequestKind::AlterConfigs(r) => admin::alter_configs(&ctx, r),
        RequestKind::IncrementalAlterConfigs(r) => admin::incremental_alter_configs(&ctx, r),
        RequestKind::DescribeCluster(r) => admin::describe_cluster(&ctx, r),
        RequestKind::ListGroups(r) => admin::list_groups(&ctx, r),
        _ => Err(ProtocolError::NotImplemented { api, version }),
    }
}

/// The Kafka error code for a broker error.
pub(crate) fn error_code(e: &BrokerError) -> i16 {
    use BrokerError as B;
    let err = match e {
        B::TopicExists(_) => ResponseError::TopicAlreadyExists,
        B::UnknownTopic(_) | B::UnknownPartition(..) => ResponseError::UnknownTopicOrPartition,
        B::InvalidTopic(..) => ResponseError::InvalidTopicException,
        B::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        B::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        B::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        B::Config(_) => ResponseError::InvalidConfig,
        B::InvalidBatch(crate::batch::BatchError::CrcMismatch { .. }) => {
            ResponseError::CorruptMessage
        }
        B::InvalidBatch(crate::batch::BatchError::UnsupportedMagic(_)) => {
            ResponseError::UnsupportedForMessageFormat
        }
        B::InvalidBatch(_) => ResponseError::CorruptMessage,
        B::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        B::ControlBatchFromClient => ResponseError::InvalidRecord,
        B::TransactionsUnsupported => ResponseError::InvalidRequest,
        B::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        B::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        B::Log(_, LogError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        B::Log(..) | B::StorageFailed(_) | B::Io { .. } | B::DataDir(..) => {
            ResponseError::KafkaStorageError
        }
    };
    err.code()
}

/// Error message for responses that carry one (None when there is no error).
pub(crate) fn error_message(e: &BrokerError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
