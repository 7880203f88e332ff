//! The frames of the link protocol, their encoding (`encode_frame`) and decoding (`frame_len`,
//! `decode_body`, `decode_frame`, the buffered [`FrameDecoder`]), and the size [`Limits`] that
//! every decode enforces. The byte layout is specified in `PROTOCOL.md`.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{self, Reader, MIN_STRING_BYTES};
use crate::data::{self, Data};
use crate::error::{ErrorCode, ProtocolError};

/// The newest protocol version this crate speaks. Version 2 adds the continuity checks
/// (source topic ids in TopicsReply, resume points in Subscribe, the Diverged frame) and
/// `VerifyRequest`/`VerifyReply`; a version-1 peer never receives any of them.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The TLS ALPN protocol id of the link protocol.
pub const ALPN: &[u8] = b"strait-link/1";
/// Bytes before a frame body: the `u32` length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Longest message an [`ErrorFrame::new`] keeps (longer ones are cut at a char boundary).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// An offset in the source partition's log (for an offset-preserving link the destination stores
/// the record at the same offset, but the type keeps the two apart in code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceOffset(pub i64);

impl fmt::Display for SourceOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which end of the link a Hello's sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Destination = 0,
    Source = 1,
}

/// Capability bits exchanged in Hello/HelloOk; a feature is used only if both sides set it.
pub mod capabilities {
    /// The sender can decode zstd-compressed Data payloads.
    pub const ZSTD: u64 = 1;
    /// The sender supports source-initiated connections (the source dials the destination).
    pub const SOURCE_INITIATED: u64 = 2;
}

/// The highest version both we (`MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`) and a peer offering
/// `peer_min..=peer_max` speak, or `None` (answer `Reject(UnsupportedVersion)`).
pub fn negotiate_version(peer_min: u16, peer_max: u16) -> Option<u16> {
    let version = peer_max.min(PROTOCOL_VERSION);
    (version >= peer_min.max(MIN_PROTOCOL_VERSION)).then_some(version)
}

/// Size caps that a decoder enforces on what a peer sends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame (type byte + body) accepted or produced; default 16 MiB.
    pub max_frame_bytes: usize,
    /// Largest decompressed Data payload; default 64 MiB.
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// How frames are encoded.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// zstd level for Data payloads; 0 = never compress. Default 3.
    pub zstd_level: i32,
    /// Keep the zstd output only if it is smaller than `min_ratio` x the raw payload. Default 0.97.
    pub min_ratio: f64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 3,
            min_ratio: 0.97,
        }
    }
}

/// What one encoded frame cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeStats {
    /// Sum of the Data entries' batch lengths (0 for other frames).
    pub source_bytes: u64,
    /// Bytes appended to `out`, including the 5-byte frame header.
    pub wire_bytes: u64,
    /// Whether the Data payload was zstd-compressed.
    pub compressed: bool,
}

/// Handshake, sent first by the dialer on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub link_name: String,
    pub cluster_id: String,
    pub role: Role,
    pub capabilities: u64,
}

/// The acceptor's positive answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    pub cluster_id: String,
    pub capabilities: u64,
}

/// Body of `Reject` and `Error` frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorFrame {
    /// An error frame whose message is cut to [`MAX_ERROR_MESSAGE_BYTES`] (so it always encodes).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorFrame { code, message }
    }
}

impl From<&ProtocolError> for ErrorFrame {
    fn from(error: &ProtocolError) -> Self {
        ErrorFrame::new(error.code(), error.to_string())
    }
}

/// Destination -> source on the control stream: which topics to describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicsRequest {
    pub filter: crate::filter::TopicFilter,
}

/// Source -> destination: the matching topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicsReply {
    pub topics: Vec<TopicInfo>,
}

/// One source topic: partition count and its non-default configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(String, String)>,
    /// The source topic's id (version 2): a topic deleted and created again under the same
    /// name has a new id.
    pub topic_id: Option<TopicId>,
}

/// A topic's 16-byte id (a UUID on Strait and Kafka brokers), which changes when a topic is
/// deleted and created again under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 16]);

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The identity of one record batch at a known place in a partition's log: where it starts and
/// ends, the leader epoch it was written in and its CRC-32C. Two logs that hold the same batch
/// at the same offsets hold the same history up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAnchor {
    pub base_offset: SourceOffset,
    pub last_offset: SourceOffset,
    pub leader_epoch: i32,
    pub crc: u32,
}

/// What a resubscribing destination claims about a partition (version 2): which source topic
/// it mirrors and the last batch it holds. The source checks both before sending anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumeCheck {
    pub source_topic_id: Option<TopicId>,
    pub last_batch: Option<BatchAnchor>,
}

impl ResumeCheck {
    /// Whether the destination claims nothing (a version-1 destination, or an empty mirror
    /// that records no source topic yet).
    pub fn is_empty(&self) -> bool {
        self.source_topic_id.is_none() && self.last_batch.is_none()
    }
}

/// Why the source refuses to continue a partition's mirror: its history is not the one the
/// mirror holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DivergenceKind {
    /// The source topic of that name has another topic id (deleted and created again).
    TopicRecreated = 1,
    /// The source's batch at the mirror's last batch offset is a different batch (its log was
    /// truncated and rewritten: unclean election, restore from backup, lost disk).
    HistoryRewritten = 2,
    /// The source's log now ends below the mirror's end (records the mirror holds are gone).
    SourceTruncated = 3,
}

impl DivergenceKind {
    fn from_u8(value: u8) -> Result<Self, ProtocolError> {
        match value {
            1 => Ok(DivergenceKind::TopicRecreated),
            2 => Ok(DivergenceKind::HistoryRewritten),
            3 => Ok(DivergenceKind::SourceTruncated),
            other => Err(ProtocolError::InvalidValue {
                field: "divergence kind",
                value: u64::from(other),
            }),
        }
    }

    /// Short kebab-case name (status, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::TopicRecreated => "topic-recreated",
            DivergenceKind::HistoryRewritten => "history-rewritten",
            DivergenceKind::SourceTruncated => "source-truncated",
        }
    }
}

/// Source -> destination on a data stream (version 2): this partition's source history is not
/// the mirror's; the source sends nothing more for it on this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged {
    pub topic: String,
    pub partition: i32,
    pub kind: DivergenceKind,
    /// The mirror's end offset (next offset it expected) as subscribed.
    pub mirror_end: SourceOffset,
    /// The source partition's log start and log end offsets when it checked.
    pub source_log_start: SourceOffset,
    pub source_log_end: SourceOffset,
    /// Human-readable detail (at most 1024 bytes).
    pub message: String,
}

/// Destination -> source, first frame of a verify stream (version 2): the checksums of the
/// source's batches of one partition that end after `from` and start before `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    pub topic: String,
    pub partition: i32,
    pub from: SourceOffset,
    pub to: SourceOffset,
}

/// One batch's place and the CRC-32C of all its bytes (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDigest {
    pub base_offset: SourceOffset,
    pub last_offset: SourceOffset,
    pub checksum: u32,
}

/// Source -> destination, the answer to a VerifyRequest: digests of consecutive batches from
/// the one holding `from` on (at most [`MAX_VERIFY_DIGESTS`]); the requester asks again from
/// after the last one for more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReply {
    pub source_log_start: SourceOffset,
    pub source_high_watermark: SourceOffset,
    pub batches: Vec<BatchDigest>,
}

/// Most batch digests one VerifyReply carries (20 bytes each: 1.3 MB).
pub const MAX_VERIFY_DIGESTS: usize = 65_536;

/// Destination -> source, first frame of a data stream: what to stream from where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub partitions: Vec<SubscribePartition>,
    pub options: StreamOptions,
}

/// How the destination wants a data stream's Data frames built (the source may clamp them to
/// its own limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// zstd level for Data payloads; 0 = never compress.
    pub zstd_level: i32,
    /// Flush a Data frame once this many source bytes are pending.
    pub max_bytes: u32,
    /// Flush a Data frame once its first entry has waited this long (milliseconds).
    pub linger_ms: u32,
}

impl Default for StreamOptions {
    /// zstd level 3, 1 MiB, 5 ms (the `EncodeOptions` and `PackerConfig` defaults).
    fn default() -> Self {
        StreamOptions {
            zstd_level: 3,
            max_bytes: 1 << 20,
            linger_ms: 5,
        }
    }
}

/// One subscribed partition and the first source offset the destination wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribePartition {
    pub topic: String,
    pub partition: i32,
    pub start: SourceOffset,
    /// Version 2: what the source must check before continuing from `start`.
    pub resume: ResumeCheck,
}

/// Destination -> source on a data stream: offsets now durable at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub entries: Vec<AckEntry>,
}

/// Every record below `durable` of this partition is durable at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEntry {
    pub topic: String,
    pub partition: i32,
    pub durable: SourceOffset,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello(Hello),
    HelloOk(HelloOk),
    Reject(ErrorFrame),
    TopicsRequest(TopicsRequest),
    TopicsReply(TopicsReply),
    Subscribe(Subscribe),
    Data(Data),
    Ack(Ack),
    Diverged(Diverged),
    VerifyRequest(VerifyRequest),
    VerifyReply(VerifyReply),
    Error(ErrorFrame),
}

/// Frame type bytes.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_OK: u8 = 0x02;
    pub const REJECT: u8 = 0x03;
    pub const TOPICS_REQUEST: u8 = 0x10;
    pub const TOPICS_REPLY: u8 = 0x11;
    pub const SUBSCRIBE: u8 = 0x20;
    pub const DATA: u8 = 0x21;
    pub const ACK: u8 = 0x22;
    pub const DIVERGED: u8 = 0x23;
    pub const VERIFY_REQUEST: u8 = 0x40;
    pub const VERIFY_REPLY: u8 = 0x41;
    pub const ERROR: u8 = 0x30;
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => frame_type::HELLO,
            Frame::HelloOk(_) => frame_type::HELLO_OK,
            Frame::Reject(_) => frame_type::REJECT,
            Frame::TopicsRequest(_) => frame_type::TOPICS_REQUEST,
            Frame::TopicsReply(_) => frame_type::TOPICS_REPLY,
            Frame::Subscribe(_) => frame_type::SUBSCRIBE,
            Frame::Data(_) => frame_type::DATA,
            Frame::Ack(_) => frame_type::ACK,
            Frame::Diverged(_) => frame_type::DIVERGED,
            Frame::VerifyRequest(_) => frame_type::VERIFY_REQUEST,
            Frame::VerifyReply(_) => frame_type::VERIFY_REPLY,
            Frame::Error(_) => frame_type::ERROR,
        }
    }

    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::HelloOk(_) => "HelloOk",
            Frame::Reject(_) => "Reject",
            Frame::TopicsRequest(_) => "TopicsRequest",
            Frame::TopicsReply(_) => "TopicsReply",
            Frame::Subscribe(_) => "Subscribe",
            Frame::Data(_) => "Data",
            Frame::Ack(_) => "Ack",
            Frame::Diverged(_) => "Diverged",
            Frame::VerifyRequest(_) => "VerifyRequest",
            Frame::VerifyReply(_) => "VerifyReply",
            Frame::Error(_) => "Error",
        }
    }
}

/// Appends one frame (length prefix, type byte, body) to `out`.
///
/// Fails, leaving `out` as it was, if a field is too long for its prefix, the frame would be
/// longer than `limits.max_frame_bytes`, or a Data payload longer than
/// `limits.max_decompressed_bytes` (the peer would reject either).
pub fn encode_frame(
    frame: &Frame,
    opts: &EncodeOptions,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<EncodeStats, ProtocolError> {
    let start = out.len();
    let result = encode_unchecked(frame, opts, limits, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_unchecked(
    frame: &Frame,
    opts: &EncodeOptions,
    limits: &Limits,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<EncodeStats, ProtocolError> {
    codec::put_u32(out, 0);
    codec::put_u8(out, frame.type_byte());
    let mut stats = EncodeStats::default();
    match frame {
        Frame::Hello(hello) => {
            codec::put_u16(out, hello.min_version);
            codec::put_u16(out, hello.max_version);
            codec::put_string(out, &hello.link_name, "link_name")?;
            codec::put_string(out, &hello.cluster_id, "cluster_id")?;
            codec::put_u8(out, hello.role as u8);
            codec::put_u64(out, hello.capabilities);
        }
        Frame::HelloOk(ok) => {
            codec::put_u16(out, ok.version);
            codec::put_string(out, &ok.cluster_id, "cluster_id")?;
            codec::put_u64(out, ok.capabilities);
        }
        Frame::Reject(error) | Frame::Error(error) => {
            codec::put_u16(out, error.code.as_u16());
            codec::put_string(out, &error.message, "message")?;
        }
        Frame::TopicsRequest(request) => {
            let filter = &request.filter;
            put_strings(out, &filter.names, "names")?;
            put_strings(out, &filter.prefixes, "prefixes")?;
            put_strings(out, &filter.regexes, "regexes")?;
        }
        Frame::TopicsReply(reply) => {
            codec::put_count(out, reply.topics.len(), "topics")?;
            for topic in &reply.topics {
                codec::put_string(out, &topic.name, "topic")?;
                codec::put_i32(out, topic.partitions);
                codec::put_count(out, topic.configs.len(), "configs")?;
                for (key, value) in &topic.configs {
                    codec::put_string(out, key, "config_key")?;
                    codec::put_string(out, value, "config_value")?;
                }
            }
            // Version 2 extension: one optional topic id per topic, in the same order.
            if reply.topics.iter().any(|t| t.topic_id.is_some()) {
                codec::put_count(out, reply.topics.len(), "topic_ids")?;
                for topic in &reply.topics {
                    put_topic_id(out, topic.topic_id);
                }
            }
        }
        Frame::Subscribe(subscribe) => {
            codec::put_count(out, subscribe.partitions.len(), "partitions")?;
            for partition in &subscribe.partitions {
                codec::put_string(out, &partition.topic, "topic")?;
                codec::put_i32(out, partition.partition);
                codec::put_i64(out, partition.start.0);
            }
            codec::put_i32(out, subscribe.options.zstd_level);
            codec::put_u32(out, subscribe.options.max_bytes);
            codec::put_u32(out, subscribe.options.linger_ms);
            // Version 2 extension: one resume check per partition, in the same order.
            if subscribe.partitions.iter().any(|p| !p.resume.is_empty()) {
                codec::put_count(out, subscribe.partitions.len(), "resume")?;
                for partition in &subscribe.partitions {
                    put_resume_check(out, &partition.resume);
                }
            }
        }
        Frame::Diverged(diverged) => {
            codec::put_string(out, &diverged.topic, "topic")?;
            codec::put_i32(out, diverged.partition);
            codec::put_u8(out, diverged.kind as u8);
            codec::put_i64(out, diverged.mirror_end.0);
            codec::put_i64(out, diverged.source_log_start.0);
            codec::put_i64(out, diverged.source_log_end.0);
            codec::put_string(out, &diverged.message, "message")?;
        }
        Frame::VerifyRequest(request) => {
            codec::put_string(out, &request.topic, "topic")?;
            codec::put_i32(out, request.partition);
            codec::put_i64(out, request.from.0);
            codec::put_i64(out, request.to.0);
        }
        Frame::VerifyReply(reply) => {
            codec::put_i64(out, reply.source_log_start.0);
            codec::put_i64(out, reply.source_high_watermark.0);
            codec::put_count(out, reply.batches.len(), "batches")?;
            for digest in &reply.batches {
                codec::put_i64(out, digest.base_offset.0);
                codec::put_i64(out, digest.last_offset.0);
                codec::put_u32(out, digest.checksum);
            }
        }
        Frame::Data(data) => {
            let (source_bytes, compressed) = data::encode_data_body(data, opts, limits, out)?;
            stats.source_bytes = source_bytes;
            stats.compressed = compressed;
        }
        Frame::Ack(ack) => {
            codec::put_count(out, ack.entries.len(), "entries")?;
            for entry in &ack.entries {
                codec::put_string(out, &entry.topic, "topic")?;
                codec::put_i32(out, entry.partition);
                codec::put_i64(out, entry.durable.0);
            }
        }
    }
    let frame_bytes = out.len() - start - FRAME_PREFIX_BYTES;
    let prefix = u32::try_from(frame_bytes)
        .ok()
        .filter(|_| frame_bytes <= limits.max_frame_bytes)
        .ok_or(ProtocolError::FrameTooLarge {
            len: frame_bytes,
            max: limits.max_frame_bytes,
        })?;
    if let Some(slot) = out.get_mut(start..start + FRAME_PREFIX_BYTES) {
        slot.copy_from_slice(&prefix.to_be_bytes());
    }
    stats.wire_bytes = (out.len() - start) as u64;
    Ok(stats)
}

/// Encoded size of one optional topic id: a presence byte and 16 bytes (zero when absent).
const TOPIC_ID_BYTES: u64 = 17;
/// Encoded size of one resume check: flags, topic id, base and last offset, epoch, CRC.
const RESUME_CHECK_BYTES: u64 = 1 + 16 + 8 + 8 + 4 + 4;
const RESUME_HAS_TOPIC_ID: u8 = 1;
const RESUME_HAS_LAST_BATCH: u8 = 2;

fn put_topic_id(out: &mut Vec<u8>, id: Option<TopicId>) {
    codec::put_u8(out, u8::from(id.is_some()));
    out.extend_from_slice(&id.map_or([0; 16], |id| id.0));
}

fn put_resume_check(out: &mut Vec<u8>, check: &ResumeCheck) {
    let mut flags = 0;
    if check.source_topic_id.is_some() {
        flags |= RESUME_HAS_TOPIC_ID;
    }
    if check.last_batch.is_some() {
        flags |= RESUME_HAS_LAST_BATCH;
    }
    codec::put_u8(out, flags);
    out.extend_from_slice(&check.source_topic_id.map_or([0; 16], |id| id.0));
    let anchor = check.last_batch.unwrap_or(BatchAnchor {
        base_offset: SourceOffset(0),
        last_offset: SourceOffset(0),
        leader_epoch: 0,
        crc: 0,
    });
    codec::put_i64(out, anchor.base_offset.0);
    codec::put_i64(out, anchor.last_offset.0);
    codec::put_i32(out, anchor.leader_epoch);
    codec::put_u32(out, anchor.crc);
}

fn read_uuid(reader: &mut Reader<'_>, field: &'static str) -> Result<[u8; 16], ProtocolError> {
    let hi = reader.u64(field)?;
    let lo = reader.u64(field)?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hi.to_be_bytes());
    id[8..].copy_from_slice(&lo.to_be_bytes());
    Ok(id)
}

fn read_topic_id(reader: &mut Reader<'_>) -> Result<Option<TopicId>, ProtocolError> {
    let present = reader.u8("topic_id present")?;
    let id = read_uuid(reader, "topic_id")?;
    match present {
        0 => Ok(None),
        1 => Ok(Some(TopicId(id))),
        other => Err(ProtocolError::InvalidValue {
            field: "topic_id present",
            value: u64::from(other),
        }),
    }
}

fn read_resume_check(reader: &mut Reader<'_>) -> Result<ResumeCheck, ProtocolError> {
    let flags = reader.u8("resume flags")?;
    if flags & !(RESUME_HAS_TOPIC_ID | RESUME_HAS_LAST_BATCH) != 0 {
        return Err(ProtocolError::InvalidValue {
            field: "resume flags",
            value: u64::from(flags),
        });
    }
    let id = read_uuid(reader, "source_topic_id")?;
    let anchor = BatchAnchor {
        base_offset: SourceOffset(reader.i64("last_batch base_offset")?),
        last_offset: SourceOffset(reader.i64("last_batch last_offset")?),
        leader_epoch: reader.i32("last_batch leader_epoch")?,
        crc: reader.u32("last_batch crc")?,
    };
    Ok(ResumeCheck {
        source_topic_id: (flags & RESUME_HAS_TOPIC_ID != 0).then_some(TopicId(id)),
        last_batch: (flags & RESUME_HAS_LAST_BATCH != 0).then_some(anchor),
    })
}

fn put_strings(
    out: &mut Vec<u8>,
    values: &[String],
    field: &'static str,
) -> Result<(), ProtocolError> {
    codec::put_count(out, values.len(), field)?;
    for value in values {
        codec::put_string(out, value, field)?;
    }
    Ok(())
}

/// Validates a frame length prefix and returns the number of bytes that follow it.
pub fn frame_len(prefix: [u8; 4], limits: &Limits) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(prefix);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > limits.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: limits.max_frame_bytes,
        });
    }
    Ok(len)
}

/// Decodes a frame body (type byte + body, i.e. the `len` bytes after the prefix).
///
/// Copies the body once; [`decode_frame`] avoids that copy when the caller owns a `Bytes`.
pub fn decode_body(body: &[u8], limits: &Limits) -> Result<Frame, ProtocolError> {
    decode_frame(Bytes::copy_from_slice(body), limits)
}

/// Decodes a frame body (type byte + body); the batches of a raw Data frame are slices of
/// `body`, not copies.
pub fn decode_frame(body: Bytes, limits: &Limits) -> Result<Frame, ProtocolError> {
    if body.len() > limits.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len(),
            max: limits.max_frame_bytes,
        });
    }
    let mut reader = Reader::new(&body);
    let frame = match reader.u8("frame type")? {
        frame_type::HELLO => {
            // Hello and HelloOk may gain fields in later versions: trailing bytes are ignored.
            let hello = Hello {
                min_version: reader.u16("min_version")?,
                max_version: reader.u16("max_version")?,
                link_name: reader.string("link_name")?,
                cluster_id: reader.string("cluster_id")?,
                role: match reader.u8("role")? {
                    0 => Role::Destination,
                    1 => Role::Source,
                    other => {
                        return Err(ProtocolError::InvalidValue {
                            field: "role",
                            value: u64::from(other),
                        })
                    }
                },
                capabilities: reader.u64("capabilities")?,
            };
            return Ok(Frame::Hello(hello));
        }
        frame_type::HELLO_OK => {
            let ok = HelloOk {
                version: reader.u16("version")?,
                cluster_id: reader.string("cluster_id")?,
                capabilities: reader.u64("capabilities")?,
            };
            return Ok(Frame::HelloOk(ok));
        }
        frame_type::REJECT => Frame::Reject(read_error(&mut reader)?),
        frame_type::ERROR => Frame::Error(read_error(&mut reader)?),
        frame_type::TOPICS_REQUEST => Frame::TopicsRequest(TopicsRequest {
            filter: crate::filter::TopicFilter {
                names: read_strings(&mut reader, "names")?,
                prefixes: read_strings(&mut reader, "prefixes")?,
                regexes: read_strings(&mut reader, "regexes")?,
            },
        }),
        frame_type::TOPICS_REPLY => {
            // name (string) + partitions (i32) + configs count (u32)
            let count = reader.count("topics", MIN_STRING_BYTES + 8)?;
            let mut topics = Vec::with_capacity(count);
            for _ in 0..count {
                let name = reader.string("topic")?;
                let partitions = reader.i32("partitions")?;
                let config_count = reader.count("configs", 2 * MIN_STRING_BYTES)?;
                let mut configs = Vec::with_capacity(config_count);
                for _ in 0..config_count {
                    configs.push((reader.string("config_key")?, reader.string("config_value")?));
                }
                topics.push(TopicInfo {
                    name,
                    partitions,
                    configs,
                    topic_id: None,
                });
            }
            if reader.remaining() > 0 {
                let ids = reader.count("topic_ids", TOPIC_ID_BYTES)?;
                if ids != topics.len() {
                    return Err(ProtocolError::InvalidValue {
                        field: "topic_ids count",
                        value: ids as u64,
                    });
                }
                for topic in topics.iter_mut() {
                    topic.topic_id = read_topic_id(&mut reader)?;
                }
            }
            Frame::TopicsReply(TopicsReply { topics })
        }
        frame_type::SUBSCRIBE => {
            let count = reader.count("partitions", MIN_STRING_BYTES + 4 + 8)?;
            let mut partitions = Vec::with_capacity(count);
            for _ in 0..count {
                partitions.push(SubscribePartition {
                    topic: reader.string("topic")?,
                    partition: reader.i32("partition")?,
                    start: SourceOffset(reader.i64("start")?),
                    resume: ResumeCheck::default(),
                });
            }
            let options = StreamOptions {
                zstd_level: reader.i32("zstd_level")?,
                max_bytes: reader.u32("max_bytes")?,
                linger_ms: reader.u32("linger_ms")?,
            };
            if reader.remaining() > 0 {
                let checks = reader.count("resume", RESUME_CHECK_BYTES)?;
                if checks != partitions.len() {
                    return Err(ProtocolError::InvalidValue {
                        field: "resume count",
                        value: checks as u64,
                    });
                }
                for partition in partitions.iter_mut() {
                    partition.resume = read_resume_check(&mut reader)?;
                }
            }
            Frame::Subscribe(Subscribe {
                partitions,
                options,
            })
        }
        frame_type::DATA => {
            let data = data::decode_data_body(&body, &mut reader, limits)?;
            Frame::Data(data)
        }
        frame_type::ACK => {
            let count = reader.count("entries", MIN_STRING_BYTES + 4 + 8)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(AckEntry {
                    topic: reader.string("topic")?,
                    partition: reader.i32("partition")?,
                    durable: SourceOffset(reader.i64("durable")?),
                });
            }
            Frame::Ack(Ack { entries })
        }
        frame_type::DIVERGED => Frame::Diverged(Diverged {
            topic: reader.string("topic")?,
            partition: reader.i32("partition")?,
            kind: DivergenceKind::from_u8(reader.u8("kind")?)?,
            mirror_end: SourceOffset(reader.i64("mirror_end")?),
            source_log_start: SourceOffset(reader.i64("source_log_start")?),
            source_log_end: SourceOffset(reader.i64("source_log_end")?),
            message: reader.string("message")?,
        }),
        frame_type::VERIFY_REQUEST => Frame::VerifyRequest(VerifyRequest {
            topic: reader.string("topic")?,
            partition: reader.i32("partition")?,
            from: SourceOffset(reader.i64("from")?),
            to: SourceOffset(reader.i64("to")?),
        }),
        frame_type::VERIFY_REPLY => {
            let source_log_start = SourceOffset(reader.i64("source_log_start")?);
            let source_high_watermark = SourceOffset(reader.i64("source_high_watermark")?);
            let count = reader.count("batches", 20)?;
            let mut batches = Vec::with_capacity(count);
            for _ in 0..count {
                batches.push(BatchDigest {
                    base_offset: SourceOffset(reader.i64("base_offset")?),
                    last_offset: SourceOffset(reader.i64("last_offset")?),
                    checksum: reader.u32("checksum")?,
                });
            }
            Frame::VerifyReply(VerifyReply {
                source_log_start,
                source_high_watermark,
                batches,
            })
        }
        other => return Err(ProtocolError::UnknownFrameType(other)),
    };
    reader.finish(frame.name())?;
    Ok(frame)
}

fn read_error(reader: &mut Reader<'_>) -> Result<ErrorFrame, ProtocolError> {
    Ok(ErrorFrame {
        code: ErrorCode::from_u16(reader.u16("code")?),
        message: reader.string("message")?,
    })
}

fn read_strings(
    reader: &mut Reader<'_>,
    field: &'static str,
) -> Result<Vec<String>, ProtocolError> {
    let count = reader.count(field, MIN_STRING_BYTES)?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(reader.string(field)?);
    }
    Ok(values)
}

/// Sans-IO buffered decoder for one stream: feed bytes with [`push`](Self::push), pop frames
/// with [`next_frame`](Self::next_frame).
///
/// The length prefix is checked as soon as its 4 bytes arrive, so an oversized frame fails
/// before its body is buffered, and nothing is ever reserved from a prefix: the buffer holds
/// only bytes pushed and not yet decoded. Draining `next_frame` until `Ok(None)` after every
/// push keeps it at most one frame plus one push. After an error the stream should be closed
/// (an invalid prefix keeps failing; an undecodable body is dropped).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    buffer: BytesMut,
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            buffer: BytesMut::new(),
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some(prefix) = self.buffer.get(..FRAME_PREFIX_BYTES) else {
            return Ok(None);
        };
        let prefix: [u8; 4] = prefix.try_into().map_err(|_| ProtocolError::Truncated {
            field: "length prefix",
        })?;
        let len = frame_len(prefix, &self.limits)?;
        if self.buffer.len() - FRAME_PREFIX_BYTES < len {
            return Ok(None);
        }
        self.buffer.advance(FRAME_PREFIX_BYTES);
        let body = self.buffer.split_to(len).freeze();
        decode_frame(body, &self.limits).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(
            frame,
            &EncodeOptions::default(),
            &Limits::default(),
            &mut out,
        )
        .expect("encodes");
        let decoded = decode_body(&out[FRAME_PREFIX_BYTES..], &Limits::default()).expect("decodes");
        assert_eq!(&decoded, frame);
        out
    }

    fn subscribe(resume: ResumeCheck) -> Frame {
        Frame::Subscribe(Subscribe {
            partitions: vec![SubscribePartition {
                topic: "orders".into(),
                partition: 3,
                start: SourceOffset(42),
                resume,
            }],
            options: StreamOptions::default(),
        })
    }

    #[test]
    fn version_one_layouts_are_unchanged_without_the_extensions() {
        // A version-1 peer rejects trailing bytes: without resume checks or topic ids the
        // encoding must be exactly the version-1 one.
        let plain = round_trip(&subscribe(ResumeCheck::default()));
        // prefix 4 + type 1 + count 4 + topic 2+6 + partition 4 + start 8 + options 12
        assert_eq!(plain.len(), 4 + 1 + 4 + 8 + 4 + 8 + 12);
        let reply = Frame::TopicsReply(TopicsReply {
            topics: vec![TopicInfo {
                name: "t".into(),
                partitions: 1,
                configs: vec![],
                topic_id: None,
            }],
        });
        assert_eq!(round_trip(&reply).len(), 4 + 1 + 4 + 3 + 4 + 4);
    }

    #[test]
    fn resume_checks_and_topic_ids_round_trip() {
        let id = TopicId([7; 16]);
        let anchor = BatchAnchor {
            base_offset: SourceOffset(30),
            last_offset: SourceOffset(41),
            leader_epoch: 5,
            crc: 0xdead_beef,
        };
        let with = round_trip(&subscribe(ResumeCheck {
            source_topic_id: Some(id),
            last_batch: Some(anchor),
        }));
        assert_eq!(with.len(), 4 + 1 + 4 + 8 + 4 + 8 + 12 + 4 + 41);
        round_trip(&subscribe(ResumeCheck {
            source_topic_id: None,
            last_batch: Some(anchor),
        }));
        round_trip(&Frame::TopicsReply(TopicsReply {
            topics: vec![
                TopicInfo {
                    name: "a".into(),
                    partitions: 2,
                    configs: vec![("retention.ms".into(), "1".into())],
                    topic_id: Some(id),
                },
                TopicInfo {
                    name: "b".into(),
                    partitions: 1,
                    configs: vec![],
                    topic_id: None,
                },
            ],
        }));
        assert_eq!(id.to_string(), "07070707-0707-0707-0707-070707070707");
    }

    #[test]
    fn extension_counts_must_match_and_flags_be_known() {
        let mut out = Vec::new();
        let frame = subscribe(ResumeCheck {
            source_topic_id: Some(TopicId([1; 16])),
            last_batch: None,
        });
        encode_frame(
            &frame,
            &EncodeOptions::default(),
            &Limits::default(),
            &mut out,
        )
        .unwrap();
        let body = &out[FRAME_PREFIX_BYTES..];
        // The resume count sits 41 + 4 bytes before the end: claim two checks for one partition.
        let mut two = body.to_vec();
        let at = two.len() - 45;
        two[at..at + 4].copy_from_slice(&2u32.to_be_bytes());
        assert!(decode_body(&two, &Limits::default()).is_err());
        // Unknown flag bits.
        let mut flags = body.to_vec();
        let at = flags.len() - 41;
        flags[at] = 0x80;
        assert!(matches!(
            decode_body(&flags, &Limits::default()),
            Err(ProtocolError::InvalidValue {
                field: "resume flags",
                ..
            })
        ));
        // A truncated extension is an error, not a version-1 frame.
        assert!(decode_body(&body[..body.len() - 1], &Limits::default()).is_err());
    }

    #[test]
    fn diverged_and_verify_frames_round_trip() {
        round_trip(&Frame::Diverged(Diverged {
            topic: "orders".into(),
            partition: 0,
            kind: DivergenceKind::HistoryRewritten,
            mirror_end: SourceOffset(900),
            source_log_start: SourceOffset(0),
            source_log_end: SourceOffset(1200),
            message: "batch at 880 differs".into(),
        }));
        round_trip(&Frame::VerifyRequest(VerifyRequest {
            topic: "orders".into(),
            partition: 1,
            from: SourceOffset(0),
            to: SourceOffset(i64::MAX),
        }));
        round_trip(&Frame::VerifyReply(VerifyReply {
            source_log_start: SourceOffset(0),
            source_high_watermark: SourceOffset(10),
            batches: vec![BatchDigest {
                base_offset: SourceOffset(0),
                last_offset: SourceOffset(9),
                checksum: 99,
            }],
        }));
        let mut bad = Vec::new();
        encode_frame(
            &Frame::Diverged(Diverged {
                topic: String::new(),
                partition: 0,
                kind: DivergenceKind::TopicRecreated,
                mirror_end: SourceOffset(0),
                source_log_start: SourceOffset(0),
                source_log_end: SourceOffset(0),
                message: String::new(),
            }),
            &EncodeOptions::default(),
            &Limits::default(),
            &mut bad,
        )
        .unwrap();
        bad[FRAME_PREFIX_BYTES + 1 + 2 + 4] = 9; // kind byte
        assert!(decode_body(&bad[FRAME_PREFIX_BYTES..], &Limits::default()).is_err());
    }
}
