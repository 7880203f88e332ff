//! Record-level reading of one RecordBatch v2: the offset and timestamp of every record, and
//! bounded decompression of the records section.
//!
//! Strait stores and serves batches verbatim; the produce, fetch and mirror paths look at batch
//! headers only (see [`crate::batch`]). Two requests need to look inside a batch:
//!
//! * ListOffsets by timestamp: the exact offset of the first record whose timestamp is at or
//!   after the target ([`first_at_or_after`]);
//! * ListOffsets for the max timestamp: the offset of the record that holds the batch's largest
//!   timestamp ([`max_timestamp_record`]).
//!
//! This module is therefore the one place where compressed data sent by untrusted clients gets
//! decompressed. Every codec is decoded with a hard cap on its output given by the caller
//! ([`DEFAULT_MAX_DECOMPRESSED`] unless the caller knows better): going past the cap is a
//! [`RecordsError::TooLarge`], never an allocation of whatever size the data claims. Output
//! buffers never grow past the cap. The decoders' own working memory does not depend on the
//! data's size: gzip keeps a 32 KiB window, lz4 buffers of at most ~12 MiB (4 MiB blocks), and
//! zstd a window limited to max(cap, 8 MiB) rounded up to a power of two (at most 128 MiB,
//! zstd's own default maximum).
//!
//! Codecs, as Kafka clients write them:
//! * gzip (1): a gzip stream; several concatenated members are read as one stream.
//! * snappy (2): snappy-java's "xerial" framing, which the Java client and librdkafka write:
//!   the 16-byte stream header (`82 'SNAPPY' 00`, version, compatible version) followed by
//!   blocks of `[u32 big-endian length][raw snappy block]`. Data without that header is one raw
//!   snappy block, as snappy-java reads it.
//! * lz4 (3): the standard LZ4 frame format (concatenated frames are read one after another;
//!   the decoder accepts a frame cut off right after a block, so missing records are caught
//!   by the record checks below).
//! * zstd (4): standard zstd frames, with or without a content size.
//!
//! Record layout (after decompression), all integers zig-zag varints unless noted:
//! `length, attributes (int8), timestampDelta (varlong), offsetDelta, keyLength, key,
//! valueLength, value, headerCount, headers[keyLength, key, valueLength, value]`.
//! A negative key or value length means null (as Kafka reads it); a negative header count or
//! header key length is malformed. Every length is checked against the bytes that remain, each
//! record must use exactly its `length` bytes, and the records section must hold exactly
//! `recordsCount` records. A batch with `recordsCount` 0 (compaction can leave one) has no
//! records and its records section is not read.
//!
//! Nothing here verifies the batch CRC: batches were validated when they were appended.

use std::borrow::Cow;
use std::io::{self, Read};

use thiserror::Error;

use crate::batch::{BatchError, BatchHeader, HEADER_LEN};

/// Default cap on the decompressed size of one batch's records.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;

/// Where one record sits and when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub offset: i64,
    pub timestamp: i64,
}

/// Why the records of a batch could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordsError {
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("{codec} decompression failed: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("decompressed records exceed the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed records: {0}")]
    Malformed(String),
}

/// Offsets and timestamps of every record of one complete v2 batch (decompressing if needed,
/// output <= `max_decompressed`; uncompressed records are read in place).
///
/// Timestamps are `baseTimestamp + timestampDelta`, except when the batch's LogAppendTime bit
/// (attributes bit 3) is set: then every record's timestamp is the batch's `maxTimestamp`.
/// Offsets are `baseOffset + offsetDelta`.
pub fn record_metas(
    batch: &[u8],
    max_decompressed: usize,
) -> Result<Vec<RecordMeta>, RecordsError> {
    let decoded = Decoded::new(batch, max_decompressed)?;
    let mut metas = Vec::with_capacity(decoded.capacity_hint());
    for meta in decoded.records() {
        metas.push(meta?);
    }
    Ok(metas)
}

/// First record (in offset order) with timestamp >= `ts` (None if none in this batch).
///
/// Stops reading at that record: bytes after it are not checked.
pub fn first_at_or_after(
    batch: &[u8],
    ts: i64,
    max_decompressed: usize,
) -> Result<Option<RecordMeta>, RecordsError> {
    let decoded = Decoded::new(batch, max_decompressed)?;
    for meta in decoded.records() {
        let meta = meta?;
        if meta.timestamp >= ts {
            return Ok(Some(meta));
        }
    }
    Ok(None)
}

/// The record with the largest timestamp (the first one on ties); None for an empty batch.
pub fn max_timestamp_record(
    batch: &[u8],
    max_decompressed: usize,
) -> Result<Option<RecordMeta>, RecordsError> {
    let decoded = Decoded::new(batch, max_decompressed)?;
    let mut best: Option<RecordMeta> = None;
    for meta in decoded.records() {
        let meta = meta?;
        if best.is_none_or(|b| meta.timestamp > b.timestamp) {
            best = Some(meta);
        }
    }
    Ok(best)
}

/// Decompresses the records section (the bytes after the 61-byte header) of a batch with
/// compression codec `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd; 0 returns the bytes as they
/// are). The output never exceeds `max_decompressed` bytes: data that would decompress to more
/// is refused with [`RecordsError::TooLarge`] without being decompressed any further.
pub fn decompress(
    codec: u8,
    data: &[u8],
    max_decompressed: usize,
) -> Result<Vec<u8>, RecordsError> {
    let limit = max_decompressed;
    match codec {
        0 if data.len() > limit => Err(RecordsError::TooLarge { limit }),
        0 => Ok(data.to_vec()),
        1 => read_bounded(flate2::read::MultiGzDecoder::new(data), limit, GZIP),
        2 => snappy(data, limit),
        3 => read_bounded(
            Lz4Frames(lz4_flex::frame::FrameDecoder::new(data)),
            limit,
            LZ4,
        ),
        4 => zstd(data, limit),
        other => Err(BatchError::UnknownCompression(other).into()),
    }
}

const GZIP: &str = "gzip";
const SNAPPY: &str = "snappy";
const LZ4: &str = "lz4";
const ZSTD: &str = "zstd";

/// Smallest record: a 1-byte length and 6 one-byte fields (attributes, timestampDelta,
/// offsetDelta, keyLength, valueLength, headerCount).
const MIN_RECORD_LEN: usize = 7;

/// The header of one batch and its records, decompressed if they were compressed.
struct Decoded<'a> {
    header: BatchHeader,
    records: Cow<'a, [u8]>,
}

impl<'a> Decoded<'a> {
    fn new(batch: &'a [u8], max_decompressed: usize) -> Result<Self, RecordsError> {
        let header = BatchHeader::parse(batch)?;
        let total = header.total_len();
        if batch.len() < total {
            return Err(BatchError::Truncated {
                claimed: total,
                available: batch.len(),
            }
            .into());
        }
        if batch.len() > total {
            return Err(BatchError::TrailingBytes(batch.len() - total).into());
        }
        if header.records_count < 0 {
            return Err(RecordsError::Malformed(format!(
                "negative recordsCount {}",
                header.records_count
            )));
        }
        let section = batch.get(HEADER_LEN..).unwrap_or_default();
        let records = match header.compression() {
            // An empty batch (left by compaction) has nothing worth decompressing.
            _ if header.records_count == 0 => Cow::Borrowed(&[][..]),
            0 => Cow::Borrowed(section),
            codec => Cow::Owned(decompress(codec, section, max_decompressed)?),
        };
        Ok(Decoded { header, records })
    }

    /// How many records to make room for: the count claimed, but no more than the bytes hold.
    fn capacity_hint(&self) -> usize {
        let claimed = usize::try_from(self.header.records_count).unwrap_or(0);
        claimed.min(self.records.len() / MIN_RECORD_LEN)
    }

    fn records(&self) -> RecordIter<'_> {
        RecordIter {
            header: &self.header,
            cursor: Cursor::new(&self.records),
            index: 0,
            count: usize::try_from(self.header.records_count).unwrap_or(0),
            done: false,
        }
    }
}

/// Walks the records of a decoded section, yielding each record's offset and timestamp; after
/// the last one, checks that no bytes are left over.
struct RecordIter<'a> {
    header: &'a BatchHeader,
    cursor: Cursor<'a>,
    index: usize,
    count: usize,
    done: bool,
}

impl RecordIter<'_> {
    fn next_record(&mut self) -> Result<RecordMeta, String> {
        let length = self.cursor.varint("record length")?;
        let length = usize::try_from(length).map_err(|_| format!("negative length {length}"))?;
        let body = self.cursor.take(length, "record")?;
        let mut body = Cursor::new(body);
        let (timestamp_delta, offset_delta) = read_record_body(&mut body)?;
        if body.remaining() != 0 {
            return Err(format!(
                "length is {length} but the fields use {} bytes",
                length - body.remaining()
            ));
        }
        let offset = self
            .header
            .base_offset
            .checked_add(i64::from(offset_delta))
            .ok_or_else(|| format!("offsetDelta {offset_delta} overflows the offset"))?;
        let timestamp = if self.header.is_log_append_time() {
            self.header.max_timestamp
        } else {
            self.header
                .base_timestamp
                .checked_add(timestamp_delta)
                .ok_or_else(|| {
                    format!("timestampDelta {timestamp_delta} overflows the timestamp")
                })?
        };
        Ok(RecordMeta { offset, timestamp })
    }
}

impl Iterator for RecordIter<'_> {
    type Item = Result<RecordMeta, RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            let left = self.cursor.remaining();
            return (left != 0).then(|| {
                Err(RecordsError::Malformed(format!(
                    "{left} bytes left after the {} records the batch declares",
                    self.count
                )))
            });
        }
        let index = self.index;
        self.index += 1;
        let result = self.next_record().map_err(|reason| {
            self.done = true;
            RecordsError::Malformed(format!("record {index} of {}: {reason}", self.count))
        });
        Some(result)
    }
}

/// Reads the fields after the length prefix; returns (timestampDelta, offsetDelta).
fn read_record_body(body: &mut Cursor<'_>) -> Result<(i64, i32), String> {
    body.take(1, "attributes")?;
    let timestamp_delta = body.varlong("timestampDelta")?;
    let offset_delta = body.varint("offsetDelta")?;
    body.skip_nullable("key")?;
    body.skip_nullable("value")?;
    let headers = body.varint("header count")?;
    if headers < 0 {
        return Err(format!("negative header count {headers}"));
    }
    for _ in 0..headers {
        // Each header uses at least two bytes, so a lying count runs out of bytes quickly.
        let key_len = body.varint("header key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| format!("negative header key length {key_len}"))?;
        body.take(key_len, "header key")?;
        body.skip_nullable("header value")?;
    }
    Ok((timestamp_delta, offset_delta))
}

/// A read position in a byte slice; every read is checked against the bytes left.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        match self.buf.split_at_checked(n) {
            Some((taken, rest)) => {
                self.buf = rest;
                Ok(taken)
            }
            None => Err(format!(
                "{what} needs {n} bytes but {} remain",
                self.buf.len()
            )),
        }
    }

    /// A varint-length-prefixed byte string where a negative length means null.
    fn skip_nullable(&mut self, what: &str) -> Result<(), String> {
        let len = self.varint(what)?;
        if let Ok(len) = usize::try_from(len) {
            self.take(len, what)?;
        }
        Ok(())
    }

    /// An unsigned LEB128 value of at most `max_bytes` bytes (bits past 64 are dropped).
    fn unsigned(&mut self, max_bytes: u32, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(format!("{what}: truncated varint"));
            };
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what}: varint longer than {max_bytes} bytes"))
    }

    /// A zig-zag varint (at most 5 bytes; like Kafka, bits past 32 are dropped).
    fn varint(&mut self, what: &str) -> Result<i32, String> {
        let raw = self.unsigned(5, what)? as u32;
        Ok((raw >> 1) as i32 ^ -((raw & 1) as i32))
    }

    /// A zig-zag varlong (at most 10 bytes).
    fn varlong(&mut self, what: &str) -> Result<i64, String> {
        let raw = self.unsigned(10, what)?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }
}

/// Makes room for `additional` more bytes in `out` without its capacity passing `limit`
/// (`out.len() + additional <= limit` is the caller's to check).
fn reserve_bounded(out: &mut Vec<u8>, additional: usize, limit: usize) {
    let needed = out.len().saturating_add(additional);
    if needed > out.capacity() {
        let target = out.capacity().saturating_mul(2).min(limit).max(needed);
        out.reserve_exact(target - out.len());
    }
}

/// Reads a decompressing reader to its end, refusing to produce more than `limit` bytes.
fn read_bounded<R: Read>(
    mut reader: R,
    limit: usize,
    codec: &'static str,
) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 32 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(RecordsError::Decompress {
                    codec,
                    reason: e.to_string(),
                })
            }
        };
        let Some(got) = chunk.get(..n) else {
            return Err(RecordsError::Decompress {
                codec,
                reason: format!(
                    "decoder reported {n} bytes for a {}-byte buffer",
                    chunk.len()
                ),
            });
        };
        if n > limit - out.len() {
            return Err(RecordsError::TooLarge { limit });
        }
        reserve_bounded(&mut out, n, limit);
        out.extend_from_slice(got);
    }
}

fn decompress_error(codec: &'static str, reason: impl ToString) -> RecordsError {
    RecordsError::Decompress {
        codec,
        reason: reason.to_string(),
    }
}

/// snappy-java's stream magic; the stream header adds a version and a compatible version.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    let mut decoder = snap::raw::Decoder::new();
    if !data.starts_with(&XERIAL_MAGIC) {
        let len = snap::raw::decompress_len(data).map_err(|e| decompress_error(SNAPPY, e))?;
        if len > limit {
            return Err(RecordsError::TooLarge { limit });
        }
        let mut out = vec![0u8; len];
        let written = decoder
            .decompress(data, &mut out)
            .map_err(|e| decompress_error(SNAPPY, e))?;
        out.truncate(written);
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(&XERIAL_MAGIC) {
            // The stream header, or the header of a second stream appended to the first
            // (snappy-java reads concatenated streams as one).
            rest = rest
                .get(XERIAL_HEADER_LEN..)
                .ok_or_else(|| decompress_error(SNAPPY, "truncated xerial stream header"))?;
            continue;
        }
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| decompress_error(SNAPPY, "truncated block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let (block, after) = after.split_at_checked(len).ok_or_else(|| {
            decompress_error(
                SNAPPY,
                format!("block of {len} bytes but only {} remain", after.len()),
            )
        })?;
        rest = after;
        let block_len =
            snap::raw::decompress_len(block).map_err(|e| decompress_error(SNAPPY, e))?;
        if block_len > limit - out.len() {
            return Err(RecordsError::TooLarge { limit });
        }
        let start = out.len();
        reserve_bounded(&mut out, block_len, limit);
        out.resize(start + block_len, 0);
        let written = decoder
            .decompress(block, &mut out[start..])
            .map_err(|e| decompress_error(SNAPPY, e))?;
        out.truncate(start + written);
    }
    Ok(out)
}

/// Reads LZ4 frames one after another until the input is used up (the frame decoder alone
/// stops at the end of the first frame, which would silently ignore what follows).
struct Lz4Frames<'a>(lz4_flex::frame::FrameDecoder<&'a [u8]>);

impl Read for Lz4Frames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            // Every frame header read consumes input, so this ends.
            if n > 0 || buf.is_empty() || self.0.get_ref().is_empty() {
                return Ok(n);
            }
        }
    }
}

/// zstd's largest default window (2^27); also the decoder's default maximum.
const ZSTD_WINDOW_LOG_CAP: u32 = 27;
/// The window of compression levels up to 19 when the input size is not known up front
/// (2^23 = 8 MiB): always accepted, whatever the output limit.
const ZSTD_WINDOW_LOG_FLOOR: u32 = 23;

/// The largest window log accepted for output capped at `limit`: enough to cover the limit,
/// within [`ZSTD_WINDOW_LOG_FLOOR`, `ZSTD_WINDOW_LOG_CAP`].
fn zstd_window_log_max(limit: usize) -> u32 {
    let covering = usize::BITS - limit.saturating_sub(1).leading_zeros();
    covering.clamp(ZSTD_WINDOW_LOG_FLOOR, ZSTD_WINDOW_LOG_CAP)
}

fn zstd(data: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    // A frame that states its size can be refused before any decoding.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > limit as u64 {
            return Err(RecordsError::TooLarge { limit });
        }
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| decompress_error(ZSTD, e))?;
    decoder
        .window_log_max(zstd_window_log_max(limit))
        .map_err(|e| decompress_error(ZSTD, e))?;
    read_bounded(decoder, limit, ZSTD)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::batch::{self, test_batches};

    const BASE_OFFSET: i64 = 1000;
    const MB: usize = 1 << 20;

    /// Timestamps that go up and down, with the maximum reached more than once.
    fn timestamp(i: usize) -> i64 {
        1_700_000_000_000 + ((i * 7) % 23) as i64 * 100
    }

    fn expected(n: usize) -> Vec<RecordMeta> {
        (0..n)
            .map(|i| RecordMeta {
                offset: BASE_OFFSET + i as i64,
                timestamp: timestamp(i),
            })
            .collect()
    }

    /// A batch of `n` records encoded as a client does (kafka-protocol's encoder), with keys,
    /// values and headers of varied sizes, stamped at [`BASE_OFFSET`].
    fn client_batch(compression: Compression, n: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| {
                let mut headers = kafka_protocol::indexmap::IndexMap::new();
                for h in 0..i % 3 {
                    let value = (h != 1).then(|| Bytes::from(vec![b'h'; i]));
                    headers.insert(StrBytes::from_string(format!("header-{h}")), value);
                }
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: i as i32,
                    timestamp: timestamp(i),
                    key: (i % 4 != 0).then(|| Bytes::from(format!("key-{i}"))),
                    value: (i % 5 != 0).then(|| Bytes::from(vec![b'v'; i * 13])),
                    headers,
                }
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        let mut b = buf.to_vec();
        let header = batch::validate_produced(&b).expect("one valid batch");
        assert_eq!(header.compression(), compression as u8);
        assert_eq!(header.records_count, n as i32);
        batch::stamp_offset_and_epoch(&mut b, BASE_OFFSET, 3);
        b
    }

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn zigzag(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push(z as u8 | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// One record with its length prefix: `fields` are the bytes after the length.
    fn framed(fields: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        zigzag(&mut r, fields.len() as i64);
        r.extend_from_slice(fields);
        r
    }

    /// The fields of a record with a null key, a 1-byte value and no headers.
    fn fields(ts_delta: i64, offset_delta: i64) -> Vec<u8> {
        let mut f = vec![0];
        zigzag(&mut f, ts_delta);
        zigzag(&mut f, offset_delta);
        zigzag(&mut f, -1);
        zigzag(&mut f, 1);
        f.push(b'x');
        zigzag(&mut f, 0);
        f
    }

    /// A batch around a hand-made records section.
    fn raw_batch(section: &[u8], count: i32, codec: u8, base_ts: i64) -> Vec<u8> {
        let mut b = test_batches::build(&[b"x"], base_ts);
        b.truncate(batch::HEADER_LEN);
        b.extend_from_slice(section);
        let len = (b.len() - batch::LOG_OVERHEAD) as i32;
        b[batch::BATCH_LENGTH..batch::BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        b[batch::BASE_OFFSET..batch::BASE_OFFSET + 8].copy_from_slice(&BASE_OFFSET.to_be_bytes());
        b[batch::RECORDS_COUNT..batch::RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        let attributes = i16::from(codec);
        b[batch::ATTRIBUTES..batch::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = batch::compute_crc(&b);
        b[batch::CRC..batch::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn malformed(batch: &[u8]) -> String {
        match record_metas(batch, MB) {
            Err(RecordsError::Malformed(reason)) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn every_codec_round_trips_offsets_and_timestamps() {
        for codec in CODECS {
            let b = client_batch(codec, 50);
            let metas = record_metas(&b, DEFAULT_MAX_DECOMPRESSED)
                .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
            assert_eq!(metas, expected(50), "{codec:?}");
        }
    }

    #[test]
    fn first_at_or_after_is_exact() {
        let want = expected(50);
        let min = want.iter().map(|m| m.timestamp).min().unwrap();
        let max = want.iter().map(|m| m.timestamp).max().unwrap();
        for codec in [Compression::None, Compression::Zstd, Compression::Snappy] {
            let b = client_batch(codec, 50);
            for target in (min - 150..=max + 150).step_by(50) {
                let brute = want.iter().copied().find(|m| m.timestamp >= target);
                let got = first_at_or_after(&b, target, MB).unwrap();
                assert_eq!(got, brute, "{codec:?} target {target}");
            }
            assert_eq!(first_at_or_after(&b, i64::MIN, MB).unwrap(), Some(want[0]));
            assert_eq!(first_at_or_after(&b, max + 1, MB).unwrap(), None);
            // Record 2 (+1400) comes before record 5 (+1200) in offset order.
            let got = first_at_or_after(&b, want[5].timestamp, MB).unwrap();
            assert_eq!(got, Some(want[2]));
        }
    }

    #[test]
    fn max_timestamp_is_the_first_record_holding_it() {
        let want = expected(50);
        let max = want.iter().map(|m| m.timestamp).max().unwrap();
        let first_max = *want.iter().find(|m| m.timestamp == max).unwrap();
        assert!(
            want.iter().filter(|m| m.timestamp == max).count() > 1,
            "ties exist"
        );
        for codec in CODECS {
            let b = client_batch(codec, 50);
            assert_eq!(
                max_timestamp_record(&b, MB).unwrap(),
                Some(first_max),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn log_append_time_gives_every_record_the_max_timestamp() {
        for codec in [Compression::None, Compression::Gzip] {
            let mut b = client_batch(codec, 10);
            batch::stamp_log_append_time(&mut b, 42_000);
            let metas = record_metas(&b, MB).unwrap();
            let offsets: Vec<i64> = metas.iter().map(|m| m.offset).collect();
            assert_eq!(offsets, (BASE_OFFSET..BASE_OFFSET + 10).collect::<Vec<_>>());
            assert!(metas.iter().all(|m| m.timestamp == 42_000));
            let first = Some(metas[0]);
            assert_eq!(first_at_or_after(&b, 42_000, MB).unwrap(), first);
            assert_eq!(first_at_or_after(&b, 42_001, MB).unwrap(), None);
            assert_eq!(max_timestamp_record(&b, MB).unwrap(), first);
        }
    }

    #[test]
    fn hand_built_batch_and_empty_batch() {
        let b = test_batches::build(&[b"a", b"bb", b"ccc"], 500);
        let metas = record_metas(&b, MB).unwrap();
        let want: Vec<_> = (0..3)
            .map(|i| RecordMeta {
                offset: i,
                timestamp: 500 + i,
            })
            .collect();
        assert_eq!(metas, want);

        // recordsCount 0 (what compaction can leave behind): no records, nothing decoded.
        let empty = raw_batch(b"not even compressed", 0, 4, 7);
        assert_eq!(record_metas(&empty, MB).unwrap(), vec![]);
        assert_eq!(first_at_or_after(&empty, 0, MB).unwrap(), None);
        assert_eq!(max_timestamp_record(&empty, MB).unwrap(), None);
    }

    #[test]
    fn offset_deltas_need_not_be_dense() {
        // Compaction keeps baseOffset and drops records: deltas 2 and 9 remain.
        let mut section = framed(&fields(5, 2));
        section.extend(framed(&fields(-3, 9)));
        let b = raw_batch(&section, 2, 0, 100);
        let want = vec![
            RecordMeta {
                offset: BASE_OFFSET + 2,
                timestamp: 105,
            },
            RecordMeta {
                offset: BASE_OFFSET + 9,
                timestamp: 97,
            },
        ];
        assert_eq!(record_metas(&b, MB).unwrap(), want);
        assert_eq!(first_at_or_after(&b, 100, MB).unwrap(), Some(want[0]));
        assert_eq!(first_at_or_after(&b, 97, MB).unwrap(), Some(want[0]));
        assert_eq!(max_timestamp_record(&b, MB).unwrap(), Some(want[0]));
    }

    #[test]
    fn records_over_the_limit_are_refused() {
        let b = client_batch(Compression::Zstd, 50);
        let size = decompress(4, &b[batch::HEADER_LEN..], MB).unwrap().len();
        assert_eq!(record_metas(&b, size).unwrap().len(), 50);
        assert_eq!(
            record_metas(&b, size - 1),
            Err(RecordsError::TooLarge { limit: size - 1 })
        );
    }

    /// What a decompression gave, without printing megabytes when an assertion fails.
    fn len_of(result: Result<Vec<u8>, RecordsError>) -> Result<usize, RecordsError> {
        result.map(|v| v.len())
    }

    #[test]
    fn compression_bombs_are_refused() {
        let zeros = vec![0u8; MB];
        let limit = MB;
        let too_large: Result<usize, _> = Err(RecordsError::TooLarge { limit });

        // zstd, streamed without a content size (as the Java client writes it): 100 MiB.
        let mut z = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        io::copy(&mut io::repeat(0).take(100 * MB as u64), &mut z).unwrap();
        let zstd_bomb = z.finish().unwrap();
        assert!(zstd_bomb.len() < 64 * 1024, "{}", zstd_bomb.len());
        assert_eq!(len_of(decompress(4, &zstd_bomb, limit)), too_large);

        // zstd with the content size in the frame header: refused before decoding.
        let mut z = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        z.set_pledged_src_size(Some(100 * MB as u64)).unwrap();
        z.include_contentsize(true).unwrap();
        io::copy(&mut io::repeat(0).take(100 * MB as u64), &mut z).unwrap();
        let sized = z.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&sized).ok(),
            Some(Some(100 * MB as u64))
        );
        assert_eq!(len_of(decompress(4, &sized, limit)), too_large);

        // gzip: 100 members of 1 MiB each, read as one stream.
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(&zeros).unwrap();
        let gzip_bomb = g.finish().unwrap().repeat(100);
        assert_eq!(len_of(decompress(1, &gzip_bomb, limit)), too_large);

        // lz4: 100 frames of 1 MiB.
        let mut l = lz4_flex::frame::FrameEncoder::new(Vec::new());
        l.write_all(&zeros).unwrap();
        let lz4_bomb = l.finish().unwrap().repeat(100);
        assert_eq!(len_of(decompress(3, &lz4_bomb, limit)), too_large);

        // snappy: a raw block, and xerial framing with blocks that add up past the limit.
        let block = snap::raw::Encoder::new()
            .compress_vec(&zeros[..MB / 2])
            .unwrap();
        let big = snap::raw::Encoder::new()
            .compress_vec(&[0u8; 4 * MB])
            .unwrap();
        assert_eq!(len_of(decompress(2, &big, limit)), too_large);
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for _ in 0..3 {
            xerial.extend_from_slice(&(block.len() as u32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        assert_eq!(len_of(decompress(2, &xerial, limit)), too_large);
        assert_eq!(len_of(decompress(2, &xerial, 3 * MB / 2)), Ok(3 * MB / 2));

        // Through a whole batch too.
        let b = raw_batch(&zstd_bomb, 1, 4, 0);
        assert_eq!(
            record_metas(&b, limit),
            Err(RecordsError::TooLarge { limit })
        );
    }

    #[test]
    fn bounded_reads_stop_on_endless_input_and_keep_capacity_within_the_limit() {
        // An endless stream: returning at all proves it was not read to its end.
        let limit = 3 * MB + 17;
        assert_eq!(
            len_of(read_bounded(io::repeat(7), limit, "test")),
            Err(RecordsError::TooLarge { limit })
        );
        let out = read_bounded(io::repeat(7).take(limit as u64), limit, "test").unwrap();
        assert_eq!(out.len(), limit);
        assert!(out.capacity() <= limit, "capacity {}", out.capacity());

        let data = vec![1u8; 1_000_000];
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(&data).unwrap();
        let gz = g.finish().unwrap();
        let out = decompress(1, &gz, 1_000_000).unwrap();
        assert!(out == data);
        assert!(out.capacity() <= 1_000_000);
        let too_large = Err(RecordsError::TooLarge { limit: 999_999 });
        assert_eq!(len_of(decompress(1, &gz, 999_999)), too_large);
        assert_eq!(len_of(decompress(0, &data, 999_999)), too_large);
        assert!(decompress(0, &data, 1_000_000).unwrap() == data);
    }

    #[test]
    fn the_window_of_zstd_frames_is_capped() {
        assert_eq!(zstd_window_log_max(0), 23);
        assert_eq!(zstd_window_log_max(MB), 23);
        assert_eq!(zstd_window_log_max(DEFAULT_MAX_DECOMPRESSED), 26);
        assert_eq!(zstd_window_log_max(DEFAULT_MAX_DECOMPRESSED + 1), 27);
        assert_eq!(zstd_window_log_max(usize::MAX), 27);
    }

    #[test]
    fn truncated_and_garbage_compressed_data_are_errors() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = client_batch(codec, 50);
            let section = &b[batch::HEADER_LEN..];
            let code = codec as u8;
            assert!(decompress(code, section, MB).is_ok());
            let half = &section[..section.len() / 2];
            assert!(
                matches!(
                    decompress(code, half, MB),
                    Err(RecordsError::Decompress { .. })
                ),
                "{codec:?} truncated: {:?}",
                decompress(code, half, MB).map(|v| v.len())
            );
            let garbage = b"\x00\x01\x02 this is not compressed data at all \xff\xfe";
            assert!(
                matches!(
                    decompress(code, garbage, MB),
                    Err(RecordsError::Decompress { .. })
                ),
                "{codec:?} garbage"
            );
            assert!(decompress(code, b"", MB).unwrap_or_default().is_empty());
            // Every truncation of the compressed section fails cleanly or yields records
            // that do not add up; none panics.
            for cut in 0..section.len() {
                let b = raw_batch(&section[..cut], 50, code, timestamp(0));
                match record_metas(&b, MB) {
                    Err(_) => {}
                    // lz4_flex reads a frame that stops right after its last block (end mark
                    // and content checksum cut off) as complete: all the records are there.
                    Ok(metas) if code == 3 && cut + 8 >= section.len() => {
                        assert_eq!(metas, expected(50));
                    }
                    Ok(_) => panic!("{codec:?} cut at {cut} of {} was accepted", section.len()),
                }
            }
        }
        assert_eq!(
            decompress(5, b"", MB),
            Err(RecordsError::Batch(BatchError::UnknownCompression(5)))
        );
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        for codec in CODECS {
            let b = client_batch(codec, 20);
            for at in batch::HEADER_LEN..b.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = b.clone();
                    bad[at] ^= flip;
                    let _ = record_metas(&bad, 64 * 1024);
                    let _ = first_at_or_after(&bad, 0, 64 * 1024);
                }
            }
        }
    }

    #[test]
    fn xerial_snappy_streams_may_be_concatenated() {
        let b = client_batch(Compression::Snappy, 30);
        let section = &b[batch::HEADER_LEN..];
        assert!(section.starts_with(&XERIAL_MAGIC));
        let whole = decompress(2, section, MB).unwrap();
        let doubled = decompress(2, &section.repeat(2), MB).unwrap();
        assert!(doubled == whole.repeat(2));
        // Without the xerial header, the data is one raw snappy block.
        let raw = snap::raw::Encoder::new().compress_vec(&whole).unwrap();
        assert!(decompress(2, &raw, MB).unwrap() == whole);
        assert_eq!(
            record_metas(&raw_batch(&raw, 30, 2, 0), MB).unwrap().len(),
            30
        );
        // A header cut short, and a block longer than what remains.
        assert!(decompress(2, &section[..12], MB).is_err());
        let mut lying = section[..XERIAL_HEADER_LEN].to_vec();
        lying.extend_from_slice(&1000u32.to_be_bytes());
        lying.extend_from_slice(&[0; 10]);
        assert!(decompress(2, &lying, MB).is_err());
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = framed(&fields(0, 0));

        // The declared count does not match the records present.
        let b = raw_batch(&good, 2, 0, 0);
        assert!(malformed(&b).contains("record 1 of 2"));
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(malformed(&raw_batch(&two, 1, 0, 0)).contains("left after"));
        // A huge count with a few bytes: fails without reserving room for the count.
        assert!(malformed(&raw_batch(&good, i32::MAX, 0, 0)).contains("record 1 of"));
        assert!(malformed(&raw_batch(&good, -1, 0, 0)).contains("negative recordsCount"));

        // Record lengths: past the end, negative, longer than the fields.
        let mut past = vec![];
        zigzag(&mut past, 100);
        past.extend_from_slice(&fields(0, 0));
        assert!(malformed(&raw_batch(&past, 1, 0, 0)).contains("needs 100 bytes"));
        let mut negative = vec![];
        zigzag(&mut negative, -5);
        negative.extend_from_slice(&fields(0, 0));
        assert!(malformed(&raw_batch(&negative, 1, 0, 0)).contains("negative length"));
        let mut padded = fields(0, 0);
        padded.push(0);
        assert!(malformed(&raw_batch(&framed(&padded), 1, 0, 0)).contains("fields use"));
        let short = fields(0, 0);
        let short = framed(&short[..short.len() - 1]);
        assert!(malformed(&raw_batch(&short, 1, 0, 0)).contains("truncated varint"));

        // A key longer than the record.
        let mut f = vec![0];
        zigzag(&mut f, 0);
        zigzag(&mut f, 0);
        zigzag(&mut f, 50);
        f.extend_from_slice(b"key");
        assert!(malformed(&raw_batch(&framed(&f), 1, 0, 0)).contains("key needs 50"));

        // A varint that does not end.
        let mut f = vec![0];
        f.extend_from_slice(&[0xff; 11]);
        assert!(malformed(&raw_batch(&framed(&f), 1, 0, 0)).contains("longer than 10"));
        let mut f = vec![0, 0];
        f.extend_from_slice(&[0xff; 6]);
        assert!(malformed(&raw_batch(&framed(&f), 1, 0, 0)).contains("longer than 5"));

        // Headers: a negative count, a negative key length, more headers than bytes.
        let without_headers = {
            let mut f = fields(0, 0);
            f.pop();
            f
        };
        let with = |tail: &[i64]| {
            let mut f = without_headers.clone();
            for v in tail {
                zigzag(&mut f, *v);
            }
            raw_batch(&framed(&f), 1, 0, 0)
        };
        assert!(malformed(&with(&[-1])).contains("negative header count"));
        assert!(malformed(&with(&[1, -1])).contains("negative header key length"));
        assert!(malformed(&with(&[i32::MAX as i64, 0, -1])).contains("truncated varint"));
        // A null header value and null key/value are fine.
        assert_eq!(record_metas(&with(&[1, 0, -1]), MB).unwrap().len(), 1);

        // Deltas that overflow.
        let b = raw_batch(&framed(&fields(i64::MAX, 0)), 1, 0, 1);
        assert!(malformed(&b).contains("overflows the timestamp"));
        let mut b = raw_batch(&framed(&fields(0, 1)), 1, 0, 0);
        b[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(malformed(&b).contains("overflows the offset"));
    }

    #[test]
    fn invalid_batches_are_refused() {
        let b = client_batch(Compression::Gzip, 5);
        let batch_err = |r: Result<Vec<RecordMeta>, RecordsError>| match r {
            Err(RecordsError::Batch(e)) => e,
            other => panic!("expected a batch error, got {other:?}"),
        };
        assert!(matches!(
            batch_err(record_metas(&b[..b.len() - 1], MB)),
            BatchError::Truncated { .. }
        ));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            batch_err(record_metas(&long, MB)),
            BatchError::TrailingBytes(1)
        );
        assert!(matches!(
            batch_err(record_metas(&b[..30], MB)),
            BatchError::ShortHeader(30)
        ));
        let mut magic1 = b.clone();
        magic1[batch::MAGIC] = 1;
        assert_eq!(
            batch_err(record_metas(&magic1, MB)),
            BatchError::UnsupportedMagic(1)
        );
        let codec6 = raw_batch(&framed(&fields(0, 0)), 1, 6, 0);
        assert_eq!(
            batch_err(record_metas(&codec6, MB)),
            BatchError::UnknownCompression(6)
        );
    }
}
