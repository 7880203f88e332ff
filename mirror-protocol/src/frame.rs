//! The frames of the link protocol, their encoding (`encode_frame`) and decoding (`frame_len`,
//! `decode_body`, `decode_frame`, the buffered [`FrameDecoder`]), and the size [`Limits`] that
//! every decode enforces. The byte layout is specified in `PROTOCOL.md`.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{self, Reader, MIN_STRING_BYTES};
use crate::data::{self, Data};
use crate::error::{ErrorCode, ProtocolError};

/// The newest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
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
}

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
                });
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
                });
            }
            let options = StreamOptions {
                zstd_level: reader.i32("zstd_level")?,
                max_bytes: reader.u32("max_bytes")?,
                linger_ms: reader.u32("linger_ms")?,
            };
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
