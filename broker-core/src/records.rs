//! The records inside one RecordBatch v2: bounded streaming decompression, one record walker,
//! and on top of it the record-level validation of produced and mirrored batches.
//!
//! Strait stores and serves batches verbatim; the fetch path looks at batch headers only (see
//! [`crate::batch`]). Three things need to look inside a batch:
//!
//! * Produce and the mirror path: every record of every batch is checked before anything is
//!   stored ([`validate_records`]), as Kafka's broker does (its LogValidator), so a buggy or
//!   hostile producer, or a foreign source cluster, cannot store a batch that breaks the
//!   partition's consumers (and that a link would then copy into every region). The bytes are
//!   only read, never re-encoded.
//! * ListOffsets by timestamp: the exact offset of the first record whose timestamp is at or
//!   after the target ([`first_at_or_after`]);
//! * ListOffsets for the max timestamp: the offset of the record that holds the batch's largest
//!   timestamp ([`max_timestamp_record`]).
//!
//! This module is therefore the one place where compressed data sent by untrusted clients gets
//! decompressed. Compressed records are **streamed**: the walker pulls them through a 32 KiB
//! buffer and the decompressed section is never held whole. Every codec is read with a hard cap
//! on its output given by the caller ([`DEFAULT_MAX_DECOMPRESSED`] unless the caller knows
//! better): going past the cap is a [`RecordsError::TooLarge`] and decompression stops there.
//! The decoders' own working memory does not depend on the data's size: gzip keeps a 32 KiB
//! window, lz4 buffers of at most ~12 MiB (4 MiB blocks), snappy one block (at most the cap),
//! and zstd a window of at most 128 MiB (zstd's own default maximum, which Kafka accepts too).
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
//! A negative key, value or header value length means null (as Kafka reads it); a negative
//! record length, header count or header key length is malformed. Every field must fit inside
//! its record's `length`, each record must use exactly its `length` bytes, and the records
//! section must hold exactly `recordsCount` records with nothing after them. A batch with
//! `recordsCount` 0 (compaction can leave one) has no records and its section is not read.
//!
//! Nothing here verifies the batch CRC: [`crate::batch::validate`] does, before this runs.

use std::io::{self, Read};
use std::ops::ControlFlow;

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

/// Who wrote a batch, which decides the offset rules its records must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrigin {
    /// A client's batch on Produce: `recordsCount` >= 1 and the records' offset deltas are
    /// exactly 0, 1, ..., `recordsCount` - 1 (Kafka: "inner records must have incremental
    /// offsets").
    Producer,
    /// A batch copied from a source partition's log by a link. Compaction on the source may
    /// have removed records (or all of them), so offset deltas need only increase strictly
    /// within [0, `lastOffsetDelta`], and `recordsCount` may be anything up to
    /// `lastOffsetDelta` + 1.
    Mirror,
}

/// Why the records of a batch could not be read or were refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordsError {
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("{codec} decompression failed: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("decompressed records exceed the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The batch as a whole is wrong (its record count, bytes after the last record).
    #[error("malformed records: {0}")]
    Malformed(String),
    /// One record is wrong; `index` is its position in the batch (Kafka's `batch_index`).
    #[error("malformed records: record {index} of {count}: {reason}")]
    MalformedRecord {
        index: u32,
        count: u32,
        reason: String,
    },
}

impl RecordsError {
    /// The index of the record at fault, when one record is (Produce's `record_errors`).
    pub fn record_index(&self) -> Option<u32> {
        match self {
            RecordsError::MalformedRecord { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Offsets and timestamps of every record of one complete v2 batch (decompressing if needed,
/// output <= `max_decompressed`).
///
/// Timestamps are `baseTimestamp + timestampDelta`, except when the batch's LogAppendTime bit
/// (attributes bit 3) is set: then every record's timestamp is the batch's `maxTimestamp`.
/// Offsets are `baseOffset + offsetDelta`.
pub fn record_metas(
    batch: &[u8],
    max_decompressed: usize,
) -> Result<Vec<RecordMeta>, RecordsError> {
    let mut metas = Vec::new();
    walk_batch(batch, None, max_decompressed, |meta| {
        metas.push(meta);
        ControlFlow::Continue(())
    })?;
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
    let mut found = None;
    walk_batch(batch, None, max_decompressed, |meta| {
        if meta.timestamp >= ts {
            found = Some(meta);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// The record with the largest timestamp (the first one on ties); None for an empty batch.
pub fn max_timestamp_record(
    batch: &[u8],
    max_decompressed: usize,
) -> Result<Option<RecordMeta>, RecordsError> {
    let mut best: Option<RecordMeta> = None;
    walk_batch(batch, None, max_decompressed, |meta| {
        if best.is_none_or(|b| meta.timestamp > b.timestamp) {
            best = Some(meta);
        }
        ControlFlow::Continue(())
    })?;
    Ok(best)
}

/// Checks every record of one complete batch whose header and CRC were already validated:
/// the structure described in the module doc, plus `origin`'s offset rules. Reads the bytes
/// only (compressed sections are streamed, output <= `max_decompressed`); returns the number
/// of records.
pub fn validate_records(
    batch: &[u8],
    origin: BatchOrigin,
    max_decompressed: usize,
) -> Result<u32, RecordsError> {
    let mut records = 0u32;
    walk_batch(batch, Some(origin), max_decompressed, |_| {
        records += 1;
        ControlFlow::Continue(())
    })?;
    Ok(records)
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
        _ => {
            let (reader, name) = decompressing_reader(codec, data, limit)?;
            read_bounded(reader, limit, name)
        }
    }
}

const GZIP: &str = "gzip";
const SNAPPY: &str = "snappy";
const LZ4: &str = "lz4";
const ZSTD: &str = "zstd";

/// A reader of the decompressed bytes of `data` and the codec's name. Readers may produce
/// more than `limit` bytes: the caller counts (only allocations are bounded here).
fn decompressing_reader<'a>(
    codec: u8,
    data: &'a [u8],
    limit: usize,
) -> Result<(Box<dyn Read + 'a>, &'static str), RecordsError> {
    Ok(match codec {
        1 => (Box::new(flate2::read::MultiGzDecoder::new(data)), GZIP),
        2 => (snappy_reader(data, limit)?, SNAPPY),
        3 => (
            Box::new(Lz4Frames(lz4_flex::frame::FrameDecoder::new(data))),
            LZ4,
        ),
        4 => (zstd_reader(data, limit)?, ZSTD),
        other => return Err(BatchError::UnknownCompression(other).into()),
    })
}

/// Bytes of decompressed records the walker holds at a time.
const STREAM_BUFFER: usize = 32 * 1024;

/// Parses the batch at `batch` and walks its records, giving each one's offset and timestamp
/// to `visit` until it breaks. With an `origin`, the offset rules of that origin are checked
/// too (validation); without, offsets are only read (ListOffsets).
fn walk_batch(
    batch: &[u8],
    origin: Option<BatchOrigin>,
    max_decompressed: usize,
    visit: impl FnMut(RecordMeta) -> ControlFlow<()>,
) -> Result<(), RecordsError> {
    let header = crate::batch::parse_exact(batch)?;
    if header.records_count < 0 {
        return Err(RecordsError::Malformed(format!(
            "negative recordsCount {}",
            header.records_count
        )));
    }
    let rules = origin
        .map(|origin| OffsetRules::new(origin, &header))
        .transpose()?;
    let section = batch.get(HEADER_LEN..).unwrap_or_default();
    // An empty batch (left by compaction) has no records: Kafka writes it as a bare header.
    // Reading skips whatever it holds; validation refuses bytes there (consumers that read
    // records until the batch's bytes run out would choke on them).
    if header.records_count == 0 {
        if rules.is_some() && !section.is_empty() {
            return Err(RecordsError::Malformed(format!(
                "recordsCount is 0 but {} bytes of records follow the header",
                section.len()
            )));
        }
        return Ok(());
    }
    let walker = Walker {
        header: &header,
        rules,
        count: header.records_count as u32,
    };
    match header.compression() {
        0 => walker.walk(&mut SliceInput(section), visit),
        codec => {
            let (reader, name) = decompressing_reader(codec, section, max_decompressed)?;
            let mut input = StreamInput::new(reader, name, max_decompressed);
            walker.walk(&mut input, visit)
        }
    }
}

/// What an origin requires of the offset deltas of one batch's records.
#[derive(Debug, Clone, Copy)]
struct OffsetRules {
    origin: BatchOrigin,
    last_offset_delta: i32,
}

impl OffsetRules {
    /// Checks the header's count against `origin`'s rules.
    fn new(origin: BatchOrigin, header: &BatchHeader) -> Result<Self, RecordsError> {
        if header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta))
            .is_none()
        {
            return Err(RecordsError::Malformed(format!(
                "baseOffset {} + lastOffsetDelta {} overflows the offset",
                header.base_offset, header.last_offset_delta
            )));
        }
        let count = i64::from(header.records_count);
        let span = i64::from(header.last_offset_delta) + 1;
        let fits = match origin {
            BatchOrigin::Producer => count >= 1 && count == span,
            BatchOrigin::Mirror => count <= span,
        };
        if !fits {
            return Err(BatchError::BadRecordCount {
                count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            }
            .into());
        }
        Ok(OffsetRules {
            origin,
            last_offset_delta: header.last_offset_delta,
        })
    }

    /// Checks the offset delta of record `index`, given the previous record's delta.
    fn check(&self, index: u32, delta: i32, previous: Option<i32>) -> Result<(), String> {
        match self.origin {
            BatchOrigin::Producer if i64::from(delta) != i64::from(index) => Err(format!(
                "offsetDelta {delta} where {index} was expected (a producer's records must have \
                 offset deltas 0, 1, 2, ... in order)"
            )),
            BatchOrigin::Mirror if previous.is_some_and(|p| delta <= p) || delta < 0 => {
                Err(format!(
                    "offsetDelta {delta} does not increase (previous record: {})",
                    previous.map_or_else(|| "none".to_string(), |p| p.to_string())
                ))
            }
            BatchOrigin::Mirror if delta > self.last_offset_delta => Err(format!(
                "offsetDelta {delta} is past the batch's lastOffsetDelta {}",
                self.last_offset_delta
            )),
            _ => Ok(()),
        }
    }
}

/// Reads the records of one batch from an [`Input`].
struct Walker<'h> {
    header: &'h BatchHeader,
    rules: Option<OffsetRules>,
    count: u32,
}

/// A fault found while walking: the input failed (decompression), or the record is wrong.
enum Fault {
    Input(RecordsError),
    Record(String),
}

impl From<RecordsError> for Fault {
    fn from(e: RecordsError) -> Self {
        Fault::Input(e)
    }
}

impl Walker<'_> {
    fn walk<I: Input>(
        &self,
        input: &mut I,
        mut visit: impl FnMut(RecordMeta) -> ControlFlow<()>,
    ) -> Result<(), RecordsError> {
        let mut previous_delta = None;
        for index in 0..self.count {
            let meta = match self.next_record(input, index, &mut previous_delta) {
                Ok(meta) => meta,
                Err(Fault::Input(e)) => return Err(e),
                Err(Fault::Record(reason)) => {
                    return Err(RecordsError::MalformedRecord {
                        index,
                        count: self.count,
                        reason,
                    })
                }
            };
            if visit(meta).is_break() {
                return Ok(());
            }
        }
        let left = input.skip(usize::MAX)?;
        if left != 0 {
            return Err(RecordsError::Malformed(format!(
                "{left} bytes left after the {} records the batch declares",
                self.count
            )));
        }
        Ok(())
    }

    fn next_record<I: Input>(
        &self,
        input: &mut I,
        index: u32,
        previous_delta: &mut Option<i32>,
    ) -> Result<RecordMeta, Fault> {
        if input.at_end()? {
            return Err(Fault::Record(format!(
                "missing: the records end after {index} of the {} the batch declares",
                self.count
            )));
        }
        let length = {
            let mut unbounded = Record {
                input: &mut *input,
                left: usize::MAX,
            };
            unbounded.varint("record length")?
        };
        let length = usize::try_from(length)
            .map_err(|_| Fault::Record(format!("negative length {length}")))?;
        if let Some(remaining) = input.remaining() {
            if length > remaining {
                return Err(Fault::Record(format!(
                    "length {length}: the record needs {length} bytes but {remaining} remain"
                )));
            }
        }
        // Most records lie whole in the bytes at hand (always for uncompressed sections):
        // their fields are read from one slice. The rest are read through the input.
        let (timestamp_delta, offset_delta) = match input.contiguous(length) {
            Some(body) => read_fields(&mut SliceFields(body), length)?,
            None => read_fields(
                &mut Record {
                    input: &mut *input,
                    left: length,
                },
                length,
            )?,
        };
        if let Some(rules) = &self.rules {
            rules
                .check(index, offset_delta, *previous_delta)
                .map_err(Fault::Record)?;
        }
        *previous_delta = Some(offset_delta);
        let offset = self
            .header
            .base_offset
            .checked_add(i64::from(offset_delta))
            .ok_or_else(|| {
                Fault::Record(format!("offsetDelta {offset_delta} overflows the offset"))
            })?;
        let timestamp = if self.header.is_log_append_time() {
            self.header.max_timestamp
        } else {
            self.header
                .base_timestamp
                .checked_add(timestamp_delta)
                .ok_or_else(|| {
                    Fault::Record(format!(
                        "timestampDelta {timestamp_delta} overflows the timestamp"
                    ))
                })?
        };
        Ok(RecordMeta { offset, timestamp })
    }
}

/// Reads the fields of one record of `length` bytes (after its length prefix); returns
/// (timestampDelta, offsetDelta). Every field must fit, and the fields must use exactly
/// `length` bytes.
fn read_fields<F: Fields>(record: &mut F, length: usize) -> Result<(i64, i32), Fault> {
    record.skip(1, "attributes")?;
    let timestamp_delta = record.varlong("timestampDelta")?;
    let offset_delta = record.varint("offsetDelta")?;
    record.skip_nullable("key")?;
    record.skip_nullable("value")?;
    let headers = record.varint("header count")?;
    let headers = usize::try_from(headers)
        .map_err(|_| Fault::Record(format!("negative header count {headers}")))?;
    // Each header uses at least two bytes, so a lying count is caught before any header.
    if headers > record.left() / 2 {
        return Err(Fault::Record(format!(
            "header count {headers} needs at least {} bytes but the record has {} left",
            headers.saturating_mul(2),
            record.left()
        )));
    }
    for _ in 0..headers {
        let key_len = record.varint("header key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| Fault::Record(format!("negative header key length {key_len}")))?;
        record.skip(key_len, "header key")?;
        record.skip_nullable("header value")?;
    }
    if record.left() != 0 {
        return Err(Fault::Record(format!(
            "length is {length} but the fields use {} bytes",
            length - record.left()
        )));
    }
    Ok((timestamp_delta, offset_delta))
}

/// The bytes of one record's fields: every read is checked against what the record's length
/// leaves (and, when streaming, against the end of the input).
trait Fields {
    fn byte(&mut self, what: &str) -> Result<u8, Fault>;
    fn skip(&mut self, n: usize, what: &str) -> Result<(), Fault>;
    /// Bytes of the record not read yet.
    fn left(&self) -> usize;

    /// A varint-length-prefixed byte string where a negative length means null.
    fn skip_nullable(&mut self, what: &str) -> Result<(), Fault> {
        let len = self.varint(what)?;
        if let Ok(len) = usize::try_from(len) {
            self.skip(len, what)?;
        }
        Ok(())
    }

    /// An unsigned LEB128 value of at most `max_bytes` bytes (bits past 64 are dropped).
    #[inline]
    fn unsigned(&mut self, max_bytes: u32, what: &str) -> Result<u64, Fault> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.byte(what)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Fault::Record(format!(
            "{what}: varint longer than {max_bytes} bytes"
        )))
    }

    /// A zig-zag varint (at most 5 bytes; like Kafka, bits past 32 are dropped).
    #[inline]
    fn varint(&mut self, what: &str) -> Result<i32, Fault> {
        let raw = self.unsigned(5, what)? as u32;
        Ok((raw >> 1) as i32 ^ -((raw & 1) as i32))
    }

    /// A zig-zag varlong (at most 10 bytes).
    #[inline]
    fn varlong(&mut self, what: &str) -> Result<i64, Fault> {
        let raw = self.unsigned(10, what)?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }
}

fn past_the_length(what: &str) -> Fault {
    Fault::Record(format!("{what} runs past the record's length"))
}

fn too_long(what: &str, n: usize, left: usize) -> Fault {
    Fault::Record(format!(
        "{what} needs {n} bytes but the record has {left} left"
    ))
}

/// A whole record in one slice (the fast path).
struct SliceFields<'a>(&'a [u8]);

impl Fields for SliceFields<'_> {
    #[inline]
    fn byte(&mut self, what: &str) -> Result<u8, Fault> {
        let (&b, rest) = self.0.split_first().ok_or_else(|| past_the_length(what))?;
        self.0 = rest;
        Ok(b)
    }

    #[inline]
    fn skip(&mut self, n: usize, what: &str) -> Result<(), Fault> {
        self.0 = self
            .0
            .get(n..)
            .ok_or_else(|| too_long(what, n, self.0.len()))?;
        Ok(())
    }

    fn left(&self) -> usize {
        self.0.len()
    }

    /// The same as the trait's, without a `Result` per byte (this is the hot path of
    /// validation: about ten varints per record).
    #[inline]
    fn unsigned(&mut self, max_bytes: u32, what: &str) -> Result<u64, Fault> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().take(max_bytes as usize).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.0.len() < max_bytes as usize {
            past_the_length(what)
        } else {
            Fault::Record(format!("{what}: varint longer than {max_bytes} bytes"))
        })
    }
}

/// A record read through the input, byte by byte (it straddles the stream's buffer).
struct Record<'i, I> {
    input: &'i mut I,
    left: usize,
}

impl<I: Input> Fields for Record<'_, I> {
    fn byte(&mut self, what: &str) -> Result<u8, Fault> {
        if self.left == 0 {
            return Err(past_the_length(what));
        }
        match self.input.byte()? {
            Some(b) => {
                self.left -= 1;
                Ok(b)
            }
            None => Err(Fault::Record(format!(
                "{what}: truncated varint (the records end inside it)"
            ))),
        }
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), Fault> {
        if n > self.left {
            return Err(too_long(what, n, self.left));
        }
        let skipped = self.input.skip(n)?;
        self.left -= skipped;
        if skipped < n {
            return Err(Fault::Record(format!(
                "{what} needs {n} bytes but the records end after {skipped}"
            )));
        }
        Ok(())
    }

    fn left(&self) -> usize {
        self.left
    }
}

/// Where the walker reads a records section from: a slice (uncompressed) or a decompressing
/// stream.
trait Input {
    /// The next byte; None at the end of the section.
    fn byte(&mut self) -> Result<Option<u8>, RecordsError>;
    /// Skips up to `n` bytes; returns how many were skipped (fewer only at the end).
    fn skip(&mut self, n: usize) -> Result<usize, RecordsError>;
    /// Whether the section is used up.
    fn at_end(&mut self) -> Result<bool, RecordsError>;
    /// The bytes left, when known without reading them.
    fn remaining(&self) -> Option<usize>;
    /// The next `n` bytes as one slice, consumed, if they are at hand without copying.
    fn contiguous(&mut self, n: usize) -> Option<&[u8]>;
}

/// An uncompressed records section, read in place.
struct SliceInput<'a>(&'a [u8]);

impl Input for SliceInput<'_> {
    #[inline]
    fn byte(&mut self) -> Result<Option<u8>, RecordsError> {
        Ok(self.0.split_first().map(|(&b, rest)| {
            self.0 = rest;
            b
        }))
    }

    fn skip(&mut self, n: usize) -> Result<usize, RecordsError> {
        let n = n.min(self.0.len());
        self.0 = &self.0[n..];
        Ok(n)
    }

    fn at_end(&mut self) -> Result<bool, RecordsError> {
        Ok(self.0.is_empty())
    }

    fn remaining(&self) -> Option<usize> {
        Some(self.0.len())
    }

    fn contiguous(&mut self, n: usize) -> Option<&[u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }
}

/// A compressed records section, decompressed [`STREAM_BUFFER`] bytes at a time; more than
/// `limit` decompressed bytes in all is [`RecordsError::TooLarge`].
struct StreamInput<R> {
    reader: R,
    codec: &'static str,
    limit: usize,
    produced: usize,
    buffer: Vec<u8>,
    position: usize,
    filled: usize,
    ended: bool,
}

impl<R: Read> StreamInput<R> {
    fn new(reader: R, codec: &'static str, limit: usize) -> Self {
        StreamInput {
            reader,
            codec,
            limit,
            produced: 0,
            buffer: vec![0; STREAM_BUFFER],
            position: 0,
            filled: 0,
            ended: false,
        }
    }

    /// Makes at least one byte available unless the stream has ended; false at the end.
    fn fill(&mut self) -> Result<bool, RecordsError> {
        while self.position == self.filled {
            if self.ended {
                return Ok(false);
            }
            let n = match self.reader.read(&mut self.buffer) {
                Ok(0) => {
                    self.ended = true;
                    return Ok(false);
                }
                Ok(n) if n <= self.buffer.len() => n,
                Ok(n) => {
                    return Err(decompress_error(
                        self.codec,
                        format!(
                            "decoder reported {n} bytes for a {}-byte buffer",
                            self.buffer.len()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(self.codec, e, self.limit)),
            };
            if n > self.limit - self.produced {
                return Err(RecordsError::TooLarge { limit: self.limit });
            }
            self.produced += n;
            self.position = 0;
            self.filled = n;
        }
        Ok(true)
    }
}

impl<R: Read> Input for StreamInput<R> {
    #[inline]
    fn byte(&mut self) -> Result<Option<u8>, RecordsError> {
        if self.position == self.filled && !self.fill()? {
            return Ok(None);
        }
        let b = self.buffer.get(self.position).copied();
        self.position += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<usize, RecordsError> {
        let mut skipped = 0;
        while skipped < n && self.fill()? {
            let step = (self.filled - self.position).min(n - skipped);
            self.position += step;
            skipped += step;
        }
        Ok(skipped)
    }

    fn at_end(&mut self) -> Result<bool, RecordsError> {
        Ok(!self.fill()?)
    }

    fn remaining(&self) -> Option<usize> {
        None
    }

    fn contiguous(&mut self, n: usize) -> Option<&[u8]> {
        if self.filled - self.position < n {
            return None;
        }
        let start = self.position;
        self.position += n;
        self.buffer.get(start..start + n)
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

/// Reads a decompressing reader to its end, refusing to produce more than `limit` bytes: the
/// walker's [`StreamInput`] (which owns the limit and the error mapping), drained into a Vec
/// whose capacity never passes the limit.
fn read_bounded<R: Read>(
    reader: R,
    limit: usize,
    codec: &'static str,
) -> Result<Vec<u8>, RecordsError> {
    let mut input = StreamInput::new(reader, codec, limit);
    let mut out = Vec::new();
    while input.fill()? {
        let got = &input.buffer[input.position..input.filled];
        reserve_bounded(&mut out, got.len(), limit);
        out.extend_from_slice(got);
        input.position = input.filled;
    }
    Ok(out)
}

fn decompress_error(codec: &'static str, reason: impl ToString) -> RecordsError {
    RecordsError::Decompress {
        codec,
        reason: reason.to_string(),
    }
}

/// A decoder's read error: [`ExceedsLimit`] (a snappy block larger than what the cap leaves)
/// is [`RecordsError::TooLarge`], anything else a decompression failure.
fn read_error(codec: &'static str, e: io::Error, limit: usize) -> RecordsError {
    if e.get_ref().is_some_and(|inner| inner.is::<ExceedsLimit>()) {
        RecordsError::TooLarge { limit }
    } else {
        decompress_error(codec, e)
    }
}

/// Raised inside a reader whose next piece of output would pass the cap.
#[derive(Debug, Error)]
#[error("decompressed output would exceed the limit")]
struct ExceedsLimit;

/// Whether a snappy block of `compressed` bytes can decode to `claimed` bytes: a copy element
/// yields at most 64 bytes for 2 bytes in, so nothing expands by more than 32x (plus a
/// margin). A block claiming more is lying and is refused before its output is allocated.
fn snappy_expansion_ok(compressed: usize, claimed: usize) -> bool {
    claimed <= compressed.saturating_mul(32).saturating_add(64)
}

/// snappy-java's stream magic; the stream header adds a version and a compatible version.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

/// A reader of snappy data: xerial-framed (block by block) or one raw block.
fn snappy_reader<'a>(data: &'a [u8], limit: usize) -> Result<Box<dyn Read + 'a>, RecordsError> {
    if data.starts_with(&XERIAL_MAGIC) {
        return Ok(Box::new(XerialSnappy {
            rest: data,
            decoder: snap::raw::Decoder::new(),
            block: Vec::new(),
            position: 0,
            produced: 0,
            limit,
        }));
    }
    let len = snap::raw::decompress_len(data).map_err(|e| decompress_error(SNAPPY, e))?;
    if len > limit {
        return Err(RecordsError::TooLarge { limit });
    }
    if !snappy_expansion_ok(data.len(), len) {
        return Err(decompress_error(
            SNAPPY,
            format!("a {}-byte block claims {len} bytes", data.len()),
        ));
    }
    let mut out = vec![0u8; len];
    let written = snap::raw::Decoder::new()
        .decompress(data, &mut out)
        .map_err(|e| decompress_error(SNAPPY, e))?;
    out.truncate(written);
    Ok(Box::new(io::Cursor::new(out)))
}

/// Reads xerial-framed snappy one block at a time (a block's declared size is checked against
/// what the cap leaves before it is allocated).
struct XerialSnappy<'a> {
    rest: &'a [u8],
    decoder: snap::raw::Decoder,
    block: Vec<u8>,
    position: usize,
    produced: usize,
    limit: usize,
}

impl XerialSnappy<'_> {
    /// Decodes the next block into `self.block`; false at the end of the data.
    fn next_block(&mut self) -> io::Result<bool> {
        let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
        loop {
            if self.rest.is_empty() {
                return Ok(false);
            }
            if self.rest.starts_with(&XERIAL_MAGIC) {
                // The stream header, or the header of a second stream appended to the first
                // (snappy-java reads concatenated streams as one).
                self.rest = self
                    .rest
                    .get(XERIAL_HEADER_LEN..)
                    .ok_or_else(|| invalid("truncated xerial stream header".into()))?;
                continue;
            }
            let (len, after) = self
                .rest
                .split_first_chunk::<4>()
                .ok_or_else(|| invalid("truncated block length".into()))?;
            let len = u32::from_be_bytes(*len) as usize;
            let (block, after) = after.split_at_checked(len).ok_or_else(|| {
                invalid(format!(
                    "block of {len} bytes but only {} remain",
                    after.len()
                ))
            })?;
            self.rest = after;
            let block_len = snap::raw::decompress_len(block).map_err(|e| invalid(e.to_string()))?;
            if block_len > self.limit - self.produced {
                return Err(io::Error::other(ExceedsLimit));
            }
            if !snappy_expansion_ok(block.len(), block_len) {
                return Err(invalid(format!(
                    "a {}-byte block claims {block_len} bytes",
                    block.len()
                )));
            }
            self.position = 0;
            self.block.clear();
            self.block.resize(block_len, 0);
            let written = self
                .decoder
                .decompress(block, &mut self.block)
                .map_err(|e| invalid(e.to_string()))?;
            self.block.truncate(written);
            self.produced += written;
            self.position = 0;
            if written > 0 {
                return Ok(true);
            }
        }
    }
}

impl Read for XerialSnappy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position == self.block.len() && !self.next_block()? {
            return Ok(0);
        }
        let available = &self.block[self.position..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.position += n;
        Ok(n)
    }
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

/// zstd's largest default window (2^27), the decoder's default maximum, accepted whatever the
/// output cap, as Kafka's decoder does: the Java client at `compression.zstd.level` 22 streams
/// frames with this window. It bounds the decoder's memory; the output cap bounds the work.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

fn zstd_reader<'a>(data: &'a [u8], limit: usize) -> Result<Box<dyn Read + 'a>, RecordsError> {
    // A frame that states its size can be refused before any decoding.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > limit as u64 {
            return Err(RecordsError::TooLarge { limit });
        }
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| decompress_error(ZSTD, e))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| decompress_error(ZSTD, e))?;
    Ok(Box::new(decoder))
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
            Err(e @ (RecordsError::Malformed(_) | RecordsError::MalformedRecord { .. })) => {
                e.to_string()
            }
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

        // Through a whole batch: zeros are not a record (a zero length), and the walker says
        // so after the first buffer, without decompressing the rest.
        let b = raw_batch(&zstd_bomb, 1, 4, 0);
        assert!(malformed(&b).contains("record 0 of 1"));
        // A well-formed record whose 100 MiB value compresses to almost nothing.
        let value_len = 100 * MB;
        let mut fields = vec![0, 0, 0, 1];
        zigzag(&mut fields, value_len as i64);
        let mut record = vec![];
        zigzag(&mut record, (fields.len() + value_len + 1) as i64);
        record.extend_from_slice(&fields);
        let mut z = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        z.write_all(&record).unwrap();
        io::copy(&mut io::repeat(0).take(value_len as u64), &mut z).unwrap();
        z.write_all(&[0]).unwrap();
        let bomb = raw_batch(&z.finish().unwrap(), 1, 4, 0);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert_eq!(
            record_metas(&bomb, limit),
            Err(RecordsError::TooLarge { limit })
        );
        assert_eq!(
            validate_records(&bomb, BatchOrigin::Producer, limit),
            Err(RecordsError::TooLarge { limit })
        );
        assert_eq!(
            validate_records(&bomb, BatchOrigin::Producer, 101 * MB),
            Ok(1)
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
                    let metas = record_metas(&bad, 64 * 1024);
                    let _ = first_at_or_after(&bad, 0, 64 * 1024);
                    // Pair assertion: what validation accepts, reading accepts too.
                    for origin in [BatchOrigin::Producer, BatchOrigin::Mirror] {
                        if let Ok(n) = validate_records(&bad, origin, 64 * 1024) {
                            let read = metas.as_ref().map(Vec::len);
                            assert_eq!(read, Ok(n as usize), "{codec:?} at {at} {origin:?}");
                        }
                    }
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
        assert!(malformed(&raw_batch(&short, 1, 0, 0)).contains("runs past the record's length"));
        // The section ends inside a varint.
        let mut cut = framed(&fields(0, 0));
        cut.truncate(2);
        cut[1] = 0x80;
        assert!(malformed(&raw_batch(&cut, 1, 0, 0)).contains("needs"));

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
        assert!(malformed(&with(&[1, -1, -1])).contains("negative header key length"));
        assert!(malformed(&with(&[i32::MAX as i64, 0, -1])).contains("needs at least"));
        // A null header value and null key/value are fine.
        assert_eq!(record_metas(&with(&[1, 0, -1]), MB).unwrap().len(), 1);

        // Deltas that overflow.
        let b = raw_batch(&framed(&fields(i64::MAX, 0)), 1, 0, 1);
        assert!(malformed(&b).contains("overflows the timestamp"));
        let mut b = raw_batch(&framed(&fields(0, 1)), 1, 0, 0);
        b[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(malformed(&b).contains("overflows the offset"));
    }

    /// `section` compressed with `codec` as a client would (snappy as one raw block).
    fn compress(codec: Compression, section: &[u8]) -> Vec<u8> {
        match codec {
            Compression::None => section.to_vec(),
            Compression::Gzip => {
                let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                g.write_all(section).unwrap();
                g.finish().unwrap()
            }
            Compression::Snappy => snap::raw::Encoder::new().compress_vec(section).unwrap(),
            Compression::Lz4 => {
                let mut l = lz4_flex::frame::FrameEncoder::new(Vec::new());
                l.write_all(section).unwrap();
                l.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(section, 1).unwrap(),
        }
    }

    /// A batch around `records` (framed records), compressed with `codec`, with `count` and
    /// `last_offset_delta` as given.
    fn lying_batch(
        codec: Compression,
        records: &[Vec<u8>],
        count: i32,
        last_offset_delta: i32,
    ) -> Vec<u8> {
        let section: Vec<u8> = records.concat();
        let mut b = raw_batch(&compress(codec, &section), count, codec as u8, 1_000);
        b[batch::LAST_OFFSET_DELTA..batch::LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&last_offset_delta.to_be_bytes());
        let crc = batch::compute_crc(&b);
        b[batch::CRC..batch::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn refused(b: &[u8], origin: BatchOrigin) -> RecordsError {
        match validate_records(b, origin, MB) {
            Err(e) => e,
            Ok(n) => panic!("{origin:?}: a batch of {n} records was accepted"),
        }
    }

    #[test]
    fn client_batches_of_every_codec_are_valid_from_both_origins() {
        for codec in CODECS {
            for n in [1, 2, 50] {
                let b = client_batch(codec, n);
                for origin in [BatchOrigin::Producer, BatchOrigin::Mirror] {
                    assert_eq!(
                        validate_records(&b, origin, MB),
                        Ok(n as u32),
                        "{codec:?} {origin:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn lying_batches_are_refused_in_every_codec_with_the_record_at_fault() {
        let rec = |offset_delta: i64| framed(&fields(0, offset_delta));
        for codec in CODECS {
            let what = format!("{codec:?}");
            let three = [rec(0), rec(1), rec(2)];
            assert_eq!(
                validate_records(&lying_batch(codec, &three, 3, 2), BatchOrigin::Producer, MB),
                Ok(3),
                "{what}"
            );

            // Declares 3 records, holds 1: the record that is missing is named.
            let e = refused(
                &lying_batch(codec, &three[..1], 3, 2),
                BatchOrigin::Producer,
            );
            assert_eq!(e.record_index(), Some(1), "{what}: {e}");
            assert!(
                e.to_string().contains("the records end after 1 of the 3"),
                "{what}: {e}"
            );
            // Declares 1 record, holds 3: bytes are left over.
            let e = refused(&lying_batch(codec, &three, 1, 0), BatchOrigin::Producer);
            assert!(matches!(e, RecordsError::Malformed(_)), "{what}: {e}");
            assert!(
                e.to_string().contains("left after the 1 records"),
                "{what}: {e}"
            );

            // A negative record length, and one longer than the data.
            let mut negative = vec![];
            zigzag(&mut negative, -3);
            negative.extend_from_slice(&fields(0, 1));
            let e = refused(
                &lying_batch(codec, &[rec(0), negative], 2, 1),
                BatchOrigin::Producer,
            );
            assert_eq!(e.record_index(), Some(1), "{what}: {e}");
            assert!(e.to_string().contains("negative length -3"), "{what}: {e}");
            let mut oversized = vec![];
            zigzag(&mut oversized, 5000);
            oversized.extend_from_slice(&fields(0, 0));
            let e = refused(
                &lying_batch(codec, &[oversized], 1, 0),
                BatchOrigin::Producer,
            );
            assert_eq!(e.record_index(), Some(0), "{what}: {e}");

            // A varint that never ends.
            let mut endless = vec![0, 0];
            endless.extend_from_slice(&[0xff; 6]);
            let e = refused(
                &lying_batch(codec, &[framed(&endless)], 1, 0),
                BatchOrigin::Producer,
            );
            assert!(
                e.to_string().contains("varint longer than 5 bytes"),
                "{what}: {e}"
            );

            // Offset deltas out of order, repeated, with gaps.
            let e = refused(
                &lying_batch(codec, &[rec(0), rec(2), rec(1)], 3, 2),
                BatchOrigin::Producer,
            );
            assert_eq!(e.record_index(), Some(1), "{what}: {e}");
            assert!(
                e.to_string().contains("offsetDelta 2 where 1 was expected"),
                "{what}: {e}"
            );
            let e = refused(
                &lying_batch(codec, &[rec(0), rec(0)], 2, 1),
                BatchOrigin::Producer,
            );
            assert_eq!(e.record_index(), Some(1), "{what}: {e}");

            // Trailing bytes after the last record.
            let e = refused(
                &lying_batch(codec, &[rec(0), vec![0, 0, 0]], 1, 0),
                BatchOrigin::Producer,
            );
            assert!(e.to_string().contains("3 bytes left"), "{what}: {e}");

            // A header count past the end of the record.
            let mut f = fields(0, 0);
            f.pop();
            zigzag(&mut f, 40);
            let e = refused(
                &lying_batch(codec, &[framed(&f)], 1, 0),
                BatchOrigin::Producer,
            );
            assert!(
                e.to_string()
                    .contains("header count 40 needs at least 80 bytes"),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn mirrored_batches_may_be_compacted_but_not_disordered() {
        let rec = |offset_delta: i64| framed(&fields(0, offset_delta));
        for codec in CODECS {
            let what = format!("{codec:?}");
            // Compaction left offset deltas 2 and 9 of 0..=9: fine from a source log, not from
            // a producer.
            let compacted = lying_batch(codec, &[rec(2), rec(9)], 2, 9);
            assert_eq!(
                validate_records(&compacted, BatchOrigin::Mirror, MB),
                Ok(2),
                "{what}"
            );
            assert!(matches!(
                refused(&compacted, BatchOrigin::Producer),
                RecordsError::Batch(BatchError::BadRecordCount {
                    count: 2,
                    last_offset_delta: 9
                })
            ));
            // Decreasing, repeated, negative, and past lastOffsetDelta.
            for (records, at) in [
                (vec![rec(5), rec(3)], 1),
                (vec![rec(3), rec(3)], 1),
                (vec![rec(-1), rec(3)], 0),
                (vec![rec(0), rec(10)], 1),
            ] {
                let e = refused(&lying_batch(codec, &records, 2, 9), BatchOrigin::Mirror);
                assert_eq!(e.record_index(), Some(at), "{what}: {e}");
            }
            // More records than offsets.
            let e = refused(
                &lying_batch(codec, &[rec(0), rec(1)], 2, 0),
                BatchOrigin::Mirror,
            );
            assert!(
                matches!(e, RecordsError::Batch(BatchError::BadRecordCount { .. })),
                "{what}: {e}"
            );
        }
        // A batch emptied by compaction is not read at all.
        let empty = raw_batch(b"", 0, 0, 7);
        assert_eq!(validate_records(&empty, BatchOrigin::Mirror, MB), Ok(0));
        // ... and must be empty: bytes after a header that declares no records are refused.
        let stuffed = raw_batch(b"whatever is left", 0, 0, 7);
        assert!(matches!(
            refused(&stuffed, BatchOrigin::Mirror),
            RecordsError::Malformed(_)
        ));
        assert_eq!(record_metas(&stuffed, MB), Ok(vec![]), "reading skips them");
        // An offset range past i64::MAX.
        let mut far = raw_batch(b"", 0, 0, 7);
        far[..8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        far[batch::LAST_OFFSET_DELTA..batch::LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&5i32.to_be_bytes());
        let crc = batch::compute_crc(&far);
        far[batch::CRC..batch::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(refused(&far, BatchOrigin::Mirror)
            .to_string()
            .contains("overflows"));
        // A snappy block that claims far more than it can hold.
        let mut lying = vec![];
        zigzag(&mut lying, 60 << 20); // the uncompressed length preamble: 60 MiB
        lying.extend_from_slice(&[0; 8]);
        let e = decompress(2, &lying, 256 << 20).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
    }

    #[test]
    fn corrupt_compressed_sections_are_decompression_errors() {
        let section = framed(&fields(0, 0));
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let mut compressed = compress(codec, &section);
            let mid = compressed.len() / 2;
            compressed.truncate(mid);
            let b = raw_batch(&compressed, 1, codec as u8, 0);
            let e = refused(&b, BatchOrigin::Producer);
            assert!(
                matches!(
                    e,
                    RecordsError::Decompress { .. } | RecordsError::MalformedRecord { .. }
                ),
                "{codec:?}: {e}"
            );
        }
        let b = raw_batch(b"\x00\x01\x02 not zstd", 1, 4, 0);
        assert!(matches!(
            refused(&b, BatchOrigin::Producer),
            RecordsError::Decompress { codec: "zstd", .. }
        ));
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
