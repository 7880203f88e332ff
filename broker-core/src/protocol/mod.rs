//! The Kafka protocol layer: the table of advertised APIs, request dispatch, response encoding
//! and the mapping of broker errors to Kafka error codes.
//!
//! A request frame (without its 4-byte length) goes in; a [`Reply`] comes out. Work that must
//! happen in request order (appends) is done before `handle` returns; work that may wait
//! (durability for acks=-1, long-polling fetches) is returned as a future, which the connection
//! awaits in order, so responses leave in request order while requests stay pipelined.

mod admin;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod txn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes, VersionRange};
use thiserror::Error;

use crate::batch::BatchError;
use crate::broker::{Broker, BrokerError};
use crate::log::LogError;
use crate::records::RecordsError;

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
        ApiKey::OffsetCommit => r(2, 9),
        ApiKey::OffsetFetch => r(1, 9),
        ApiKey::FindCoordinator => r(0, 6),
        ApiKey::JoinGroup => r(0, 9),
        ApiKey::Heartbeat => r(0, 4),
        ApiKey::LeaveGroup => r(0, 5),
        ApiKey::SyncGroup => r(0, 5),
        ApiKey::DescribeGroups => r(0, 5),
        ApiKey::ListGroups => r(0, 5),
        ApiKey::DeleteGroups => r(0, 2),
        ApiKey::OffsetDelete => r(0, 0),
        ApiKey::ApiVersions => r(0, 4),
        ApiKey::CreateTopics => r(2, 7),
        ApiKey::DeleteTopics => r(1, 6),
        ApiKey::DeleteRecords => r(0, 2),
        ApiKey::InitProducerId => r(0, 5),
        ApiKey::AddPartitionsToTxn => r(0, 3),
        ApiKey::AddOffsetsToTxn => r(0, 3),
        ApiKey::EndTxn => r(0, 3),
        ApiKey::TxnOffsetCommit => r(0, 3),
        ApiKey::DescribeProducers => r(0, 0),
        ApiKey::DescribeTransactions => r(0, 0),
        ApiKey::ListTransactions => r(0, 1),
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
    pub client_id: String,
    /// The peer's address as Kafka shows it (`/127.0.0.1`).
    pub client_host: String,
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

/// A decoded request.
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    pub body: RequestKind,
}

/// What decoding a frame produced: a request, or an immediate reply (the KIP-511 ApiVersions
/// fallback).
pub enum Decoded {
    Request(Box<Request>),
    Reply(BytesMut),
}

/// Decodes one request frame (without its length prefix). Pure: no broker state, so the
/// fuzzer and the hostile-input tests drive it directly. Never panics or aborts on any input.
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, ProtocolError> {
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
            return Ok(Decoded::Reply(encode_response(correlation_id, 0, &body)?));
        }
        if let Some(reply) = unsupported_version_reply(api, version, correlation_id) {
            return Ok(Decoded::Reply(reply));
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
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
    let body = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    Ok(Decoded::Request(Box::new(Request {
        api,
        version,
        correlation_id,
        client_id,
        body,
    })))
}

/// An UNSUPPORTED_VERSION answer, in the requested version, for APIs whose response carries a
/// top-level error code at that version. None when no such response can be encoded (the
/// connection is then closed, as Kafka does).
fn unsupported_version_reply(api: ApiKey, version: i16, correlation_id: i32) -> Option<BytesMut> {
    use kafka_protocol::messages::*;
    let code = ResponseError::UnsupportedVersion.code();
    macro_rules! reply {
        ($t:ty) => {
            encode_response(
                correlation_id,
                version,
                &<$t>::default().with_error_code(code),
            )
            .ok()
        };
    }
    match api {
        ApiKey::Fetch => reply!(FetchResponse),
        ApiKey::Metadata => reply!(MetadataResponse),
        ApiKey::OffsetFetch => reply!(OffsetFetchResponse),
        ApiKey::FindCoordinator => reply!(FindCoordinatorResponse),
        ApiKey::JoinGroup => reply!(JoinGroupResponse),
        ApiKey::SyncGroup => reply!(SyncGroupResponse),
        ApiKey::Heartbeat => reply!(HeartbeatResponse),
        ApiKey::LeaveGroup => reply!(LeaveGroupResponse),
        ApiKey::ListGroups => reply!(ListGroupsResponse),
        ApiKey::InitProducerId => reply!(InitProducerIdResponse),
        ApiKey::AddOffsetsToTxn => reply!(AddOffsetsToTxnResponse),
        ApiKey::AddPartitionsToTxn => reply!(AddPartitionsToTxnResponse),
        ApiKey::EndTxn => reply!(EndTxnResponse),
        ApiKey::DescribeCluster => reply!(DescribeClusterResponse),
        ApiKey::OffsetDelete => reply!(OffsetDeleteResponse),
        ApiKey::ListTransactions => reply!(ListTransactionsResponse),
        _ => None,
    }
}

/// Handles one request frame (without its length prefix).
pub fn handle(
    broker: &Arc<Broker>,
    frame: Bytes,
    client_host: &str,
) -> Result<Reply, ProtocolError> {
    let Request {
        api,
        version,
        correlation_id,
        client_id,
        body: request,
    } = match decode_request(frame)? {
        Decoded::Request(r) => *r,
        Decoded::Reply(bytes) => return Ok(Reply::Now(bytes)),
    };
    let ctx = Ctx {
        broker: broker.clone(),
        correlation_id,
        version,
        client_id,
        client_host: client_host.to_string(),
    };
    match request {
        RequestKind::ApiVersions(_) => ctx.respond(&metadata::api_versions_body(0)),
        RequestKind::Metadata(r) => metadata::metadata(&ctx, r),
        RequestKind::Produce(r) => produce::produce(ctx, r),
        RequestKind::Fetch(r) => fetch::fetch(ctx, r),
        RequestKind::ListOffsets(r) => offsets::list_offsets(&ctx, r),
        RequestKind::DeleteRecords(r) => offsets::delete_records(&ctx, r),
        RequestKind::OffsetForLeaderEpoch(r) => offsets::offset_for_leader_epoch(&ctx, r),
        RequestKind::InitProducerId(r) => txn::init_producer_id(ctx, r),
        RequestKind::AddPartitionsToTxn(r) => txn::add_partitions_to_txn(&ctx, r),
        RequestKind::AddOffsetsToTxn(r) => txn::add_offsets_to_txn(&ctx, r),
        RequestKind::EndTxn(r) => txn::end_txn(ctx, r),
        RequestKind::TxnOffsetCommit(r) => txn::txn_offset_commit(&ctx, r),
        RequestKind::DescribeProducers(r) => txn::describe_producers(&ctx, r),
        RequestKind::DescribeTransactions(r) => txn::describe_transactions(&ctx, r),
        RequestKind::ListTransactions(r) => txn::list_transactions(&ctx, r),
        RequestKind::CreateTopics(r) => admin::create_topics(&ctx, r),
        RequestKind::DeleteTopics(r) => admin::delete_topics(&ctx, r),
        RequestKind::CreatePartitions(r) => admin::create_partitions(&ctx, r),
        RequestKind::DescribeConfigs(r) => admin::describe_configs(&ctx, r),
        RequestKind::AlterConfigs(r) => admin::alter_configs(&ctx, r),
        RequestKind::IncrementalAlterConfigs(r) => admin::incremental_alter_configs(&ctx, r),
        RequestKind::DescribeCluster(r) => admin::describe_cluster(&ctx, r),
        RequestKind::FindCoordinator(r) => groups::find_coordinator(&ctx, r),
        RequestKind::JoinGroup(r) => groups::join_group(ctx, r),
        RequestKind::SyncGroup(r) => groups::sync_group(ctx, r),
        RequestKind::Heartbeat(r) => groups::heartbeat(&ctx, r),
        RequestKind::LeaveGroup(r) => groups::leave_group(&ctx, r),
        RequestKind::OffsetCommit(r) => groups::offset_commit(ctx, r),
        RequestKind::OffsetFetch(r) => groups::offset_fetch(&ctx, r),
        RequestKind::ListGroups(r) => groups::list_groups(&ctx, r),
        RequestKind::DescribeGroups(r) => groups::describe_groups(&ctx, r),
        RequestKind::DeleteGroups(r) => groups::delete_groups(&ctx, r),
        RequestKind::OffsetDelete(r) => groups::offset_delete(&ctx, r),
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
        B::InvalidBatch(e) | B::InvalidRecords(RecordsError::Batch(e)) => batch_error(e),
        // Records that are there but wrong, and compressed records that do not decompress
        // although the CRC matched (a retry would send the same bytes: a producer must not
        // retry, and CORRUPT_MESSAGE is retriable): Kafka's InvalidRecordException.
        B::InvalidRecords(
            RecordsError::Malformed(_)
            | RecordsError::MalformedRecord { .. }
            | RecordsError::Decompress { .. },
        ) => ResponseError::InvalidRecord,
        // Past the decompression cap: a producer splits the batch and retries.
        B::InvalidRecords(RecordsError::TooLarge { .. }) => ResponseError::MessageTooLarge,
        B::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        B::ControlBatchFromClient => ResponseError::InvalidRecord,
        B::MirrorTopicReadOnly { .. } => ResponseError::PolicyViolation,
        B::NotAMirror(_) => ResponseError::InvalidRequest,
        B::Transaction(code) => return *code,
        B::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        B::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        B::Log(_, LogError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        B::Log(..) | B::StorageFailed(_) | B::Io { .. } | B::DataDir(..) => {
            ResponseError::KafkaStorageError
        }
    };
    err.code()
}

/// The Kafka error for a batch whose framing or header is wrong.
fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        // Kafka: more than one batch per partition (or a bad record count) is INVALID_RECORD.
        BatchError::TrailingBytes(_) | BatchError::BadRecordCount { .. } => {
            ResponseError::InvalidRecord
        }
        // A CRC mismatch, and lengths that do not frame the batch.
        BatchError::CrcMismatch { .. }
        | BatchError::ShortHeader(_)
        | BatchError::BadLength(_)
        | BatchError::Truncated { .. }
        | BatchError::UnknownCompression(_) => ResponseError::CorruptMessage,
    }
}

/// Error message for responses that carry one (None when there is no error).
pub(crate) fn error_message(e: &BrokerError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny deterministic generator so failures reproduce from the printed seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn header(api: i16, version: i16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&api.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        f
    }

    #[test]
    fn huge_element_counts_are_errors_not_aborts() {
        // Metadata v4: topics array claiming 2^31-1 elements in a 4-byte body.
        let mut f = header(3, 4);
        f.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_request(Bytes::from(f)),
            Err(ProtocolError::Malformed { .. })
        ));
        // Metadata v12 (flexible): header tag byte, then a compact array of 2^32-2 elements.
        let mut f = header(3, 12);
        f.push(0);
        f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_request(Bytes::from(f)),
            Err(ProtocolError::Malformed { .. })
        ));
        // A string claiming more bytes than remain.
        let mut f = header(19, 4); // CreateTopics v4
        f.extend_from_slice(&1i32.to_be_bytes());
        f.extend_from_slice(&0x7fffi16.to_be_bytes());
        assert!(decode_request(Bytes::from(f)).is_err());
    }

    #[test]
    fn unknown_api_and_versions() {
        assert!(matches!(
            decode_request(Bytes::from(header(999, 0))),
            Err(ProtocolError::UnknownApiKey(999))
        ));
        // Produce v13 has no top-level error code: the connection is closed.
        assert!(matches!(
            decode_request(Bytes::from(header(0, 13))),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        // Fetch v13 (topic ids, not implemented) is answered with UNSUPPORTED_VERSION.
        match decode_request(Bytes::from(header(1, 13))) {
            Ok(Decoded::Reply(b)) => {
                use kafka_protocol::messages::FetchResponse;
                let mut body = b.freeze();
                let _len = bytes::Buf::get_i32(&mut body);
                let header = ResponseHeader::decode(&mut body, 1).unwrap();
                assert_eq!(header.correlation_id, 7);
                let r = FetchResponse::decode(&mut body, 13).unwrap();
                assert_eq!(r.error_code, 35);
            }
            _ => panic!("expected an UNSUPPORTED_VERSION Fetch reply"),
        }
        // ApiVersions v99: KIP-511 v0 reply with error 35
        match decode_request(Bytes::from(header(18, 99))) {
            Ok(Decoded::Reply(b)) => assert_eq!(&b[8..10], &35i16.to_be_bytes()),
            _ => panic!("expected an immediate ApiVersions reply"),
        }
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 3])),
            Err(ProtocolError::ShortFrame(2))
        ));
    }

    #[test]
    fn random_frames_never_panic() {
        let seed = std::env::var("STRAIT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_1234_u64);
        println!("seed {seed} (set STRAIT_SEED to reproduce)");
        let mut rng = Rng(seed | 1);
        let keys: Vec<i16> = ApiKey::iter()
            .filter(|k| advertised(*k).is_some())
            .map(|k| k as i16)
            .collect();
        for _ in 0..20_000 {
            let key = keys[(rng.next() % keys.len() as u64) as usize];
            let range = advertised(ApiKey::try_from(key).unwrap()).unwrap();
            let span = (range.max - range.min + 1) as u64;
            let version = range.min + (rng.next() % span) as i16;
            let mut f = header(key, version);
            let len = (rng.next() % 64) as usize;
            for _ in 0..len {
                // Bias towards 0x00 and 0xff, where lengths and counts are interesting.
                let b = match rng.next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
                f.push(b);
            }
            let _ = decode_request(Bytes::from(f));
        }
    }
}
