//! Data frames: record batches of several partitions packed in one payload, optionally
//! compressed with zstd as a whole, and decompressed under a hard size cap.

use std::ops::Range;

use bytes::Bytes;

use crate::codec::{self, Reader, MIN_STRING_BYTES};
use crate::error::ProtocolError;
use crate::frame::{EncodeOptions, Limits, SourceOffset};

/// Payload codec byte: raw entries.
pub const CODEC_NONE: u8 = 0;
/// Payload codec byte: one zstd frame holding the entries.
pub const CODEC_ZSTD: u8 = 1;

/// Bytes of the Data header before the payload: codec (u8) + uncompressed_len (u32).
const DATA_HEADER_BYTES: usize = 5;
/// Smallest encoded entry: topic (string) + partition + log start + high watermark + batches len.
const MIN_ENTRY_BYTES: u64 = MIN_STRING_BYTES + 4 + 8 + 8 + 4;

/// Source -> destination on a data stream: batches of one or more subscribed partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Data {
    pub entries: Vec<DataEntry>,
}

/// Batches of one partition, contiguous and in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    pub topic: String,
    pub partition: i32,
    /// The source partition's log start offset and high watermark when this was read (for lag;
    /// a destination behind log_start must reset - see OffsetOutOfRange).
    pub source_log_start: SourceOffset,
    pub source_high_watermark: SourceOffset,
    /// Whole Kafka RecordBatch v2 bytes, unchanged, in offset order; may be empty (progress only).
    pub batches: Bytes,
}

impl Data {
    /// Sum of the entries' batch lengths.
    pub fn source_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.batches.len() as u64).sum()
    }
}

/// Writes the Data body (after the type byte) and returns (source bytes, compressed?).
pub(crate) fn encode_data_body(
    data: &Data,
    opts: &EncodeOptions,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(u64, bool), ProtocolError> {
    let header_at = out.len();
    codec::put_u8(out, CODEC_NONE);
    codec::put_u32(out, 0);
    let payload_at = out.len();
    codec::put_count(out, data.entries.len(), "entries")?;
    for entry in &data.entries {
        codec::put_string(out, &entry.topic, "topic")?;
        codec::put_i32(out, entry.partition);
        codec::put_i64(out, entry.source_log_start.0);
        codec::put_i64(out, entry.source_high_watermark.0);
        codec::put_bytes(out, &entry.batches, "batches")?;
    }
    let raw_len = out.len() - payload_at;
    let declared_len = u32::try_from(raw_len)
        .ok()
        .filter(|_| raw_len <= limits.max_decompressed_bytes)
        .ok_or(ProtocolError::DecompressedTooLarge {
            len: raw_len as u64,
            max: limits.max_decompressed_bytes,
        })?;

    let mut codec_byte = CODEC_NONE;
    if opts.zstd_level != 0 {
        let raw = out.get(payload_at..).unwrap_or_default();
        let compressed =
            zstd::bulk::compress(raw, opts.zstd_level).map_err(ProtocolError::ZstdCompress)?;
        if (compressed.len() as f64) < opts.min_ratio * raw_len as f64 {
            out.truncate(payload_at);
            out.extend_from_slice(&compressed);
            codec_byte = CODEC_ZSTD;
        }
    }
    if let Some(header) = out.get_mut(header_at..header_at + DATA_HEADER_BYTES) {
        header[0] = codec_byte;
        header[1..].copy_from_slice(&declared_len.to_be_bytes());
    }
    Ok((data.source_bytes(), codec_byte == CODEC_ZSTD))
}

/// Reads a Data body; `reader` is positioned after the type byte of `body`.
pub(crate) fn decode_data_body(
    body: &Bytes,
    reader: &mut Reader<'_>,
    limits: &Limits,
) -> Result<Data, ProtocolError> {
    let codec_byte = reader.u8("codec")?;
    let declared = reader.u32("uncompressed_len")?;
    let declared_len = usize::try_from(declared).unwrap_or(usize::MAX);
    let payload_at = body.len() - reader.remaining();
    let wire_payload = reader.rest();
    let payload = match codec_byte {
        CODEC_NONE => {
            if wire_payload.len() != declared_len {
                return Err(ProtocolError::PayloadLengthMismatch {
                    declared: u64::from(declared),
                    actual: wire_payload.len() as u64,
                });
            }
            slice(body, payload_at..body.len(), "payload")?
        }
        CODEC_ZSTD => Bytes::from(decompress(wire_payload, declared_len, limits)?),
        other => {
            return Err(ProtocolError::InvalidValue {
                field: "codec",
                value: u64::from(other),
            })
        }
    };
    decode_entries(&payload)
}

/// Decompresses a zstd payload that must expand to exactly `declared_len` bytes, never
/// allocating more than `declared_len` (itself capped by `limits.max_decompressed_bytes`).
fn decompress(
    compressed: &[u8],
    declared_len: usize,
    limits: &Limits,
) -> Result<Vec<u8>, ProtocolError> {
    let too_large = |len: u64| ProtocolError::DecompressedTooLarge {
        len,
        max: limits.max_decompressed_bytes,
    };
    if declared_len > limits.max_decompressed_bytes {
        return Err(too_large(declared_len as u64));
    }
    // The zstd frame header usually states the content size: refuse an obvious lie before
    // reserving the output buffer.
    if let Ok(Some(content_size)) = zstd::zstd_safe::get_frame_content_size(compressed) {
        if content_size > declared_len as u64 {
            return Err(too_large(content_size));
        }
    }
    let capacity = declared_len.min(limits.max_decompressed_bytes);
    let output =
        zstd::bulk::decompress(compressed, capacity).map_err(ProtocolError::ZstdDecompress)?;
    if output.len() != declared_len {
        return Err(ProtocolError::PayloadLengthMismatch {
            declared: declared_len as u64,
            actual: output.len() as u64,
        });
    }
    Ok(output)
}

fn decode_entries(payload: &Bytes) -> Result<Data, ProtocolError> {
    let mut reader = Reader::new(payload);
    let count = reader.count("entries", MIN_ENTRY_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = reader.string("topic")?;
        let partition = reader.i32("partition")?;
        let source_log_start = SourceOffset(reader.i64("source_log_start")?);
        let source_high_watermark = SourceOffset(reader.i64("source_high_watermark")?);
        let range = reader.bytes_range("batches")?;
        entries.push(DataEntry {
            topic,
            partition,
            source_log_start,
            source_high_watermark,
            batches: slice(payload, range, "batches")?,
        });
    }
    reader.finish("Data")?;
    Ok(Data { entries })
}

/// `bytes[range]` without a panic path.
fn slice(bytes: &Bytes, range: Range<usize>, field: &'static str) -> Result<Bytes, ProtocolError> {
    if range.start > range.end || range.end > bytes.len() {
        return Err(ProtocolError::Truncated { field });
    }
    Ok(bytes.slice(range))
}

/// Offsets covered by a run of RecordBatch v2 batches: (base offset of the first, offset after
/// the last). `None` if `batches` is empty or not a clean sequence of batch headers in
/// ascending offset order (gaps are allowed: compacted logs have them).
pub(crate) fn batch_offset_range(batches: &[u8]) -> Option<(i64, i64)> {
    // baseOffset: i64 at 0, batchLength: i32 at 8 (bytes after offset 12), lastOffsetDelta: i32
    // at 23.
    const LAST_OFFSET_DELTA_END: usize = 27;
    let mut position = 0usize;
    let mut first = None;
    let mut next = None;
    while position < batches.len() {
        let header = batches.get(position..position + LAST_OFFSET_DELTA_END)?;
        let base = i64::from_be_bytes(header.get(0..8)?.try_into().ok()?);
        let length = i32::from_be_bytes(header.get(8..12)?.try_into().ok()?);
        let last_delta = i32::from_be_bytes(header.get(23..27)?.try_into().ok()?);
        let total = 12usize.checked_add(usize::try_from(length).ok()?)?;
        if total < LAST_OFFSET_DELTA_END || last_delta < 0 {
            return None;
        }
        if next.is_some_and(|expected| base < expected) {
            return None;
        }
        first.get_or_insert(base);
        next = Some(base.checked_add(i64::from(last_delta))?.checked_add(1)?);
        position = position.checked_add(total)?;
    }
    if position != batches.len() {
        return None;
    }
    Some((first?, next?))
}
