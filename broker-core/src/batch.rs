//! Kafka RecordBatch v2 (magic 2) headers: parsing, validation and the few in-place rewrites a
//! broker is allowed to make.
//!
//! Strait never decodes and re-encodes records on the produce, fetch or mirror paths: batches are
//! stored and served exactly as the producer sent them. Only `baseOffset` and
//! `partitionLeaderEpoch` are stamped (both outside the CRC), plus, for topics with
//! `message.timestamp.type=LogAppendTime`, the timestamp-type bit and `maxTimestamp`, after which
//! the CRC-32C is recomputed.
//!
//! Layout (big-endian), from Kafka's "Message Format" documentation:
//!
//! | offset | size | field                                      |
//! |-------:|-----:|--------------------------------------------|
//! | 0      | 8    | baseOffset                                 |
//! | 8      | 4    | batchLength (bytes after this field)       |
//! | 12     | 4    | partitionLeaderEpoch                       |
//! | 16     | 1    | magic (2)                                  |
//! | 17     | 4    | crc: CRC-32C of bytes [21, end)            |
//! | 21     | 2    | attributes                                 |
//! | 23     | 4    | lastOffsetDelta                            |
//! | 27     | 8    | baseTimestamp                              |
//! | 35     | 8    | maxTimestamp                               |
//! | 43     | 8    | producerId                                 |
//! | 51     | 2    | producerEpoch                              |
//! | 53     | 4    | baseSequence                               |
//! | 57     | 4    | recordsCount                               |
//! | 61     | ...  | records (compressed as one blob if any)    |

use thiserror::Error;

pub const BASE_OFFSET: usize = 0;
pub const BATCH_LENGTH: usize = 8;
pub const PARTITION_LEADER_EPOCH: usize = 12;
pub const MAGIC: usize = 16;
pub const CRC: usize = 17;
pub const ATTRIBUTES: usize = 21;
pub const LAST_OFFSET_DELTA: usize = 23;
pub const BASE_TIMESTAMP: usize = 27;
pub const MAX_TIMESTAMP: usize = 35;
pub const PRODUCER_ID: usize = 43;
pub const PRODUCER_EPOCH: usize = 51;
pub const BASE_SEQUENCE: usize = 53;
pub const RECORDS_COUNT: usize = 57;
/// Size of the fixed batch header; records start here.
pub const HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the bytes not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why a batch was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch is {0} bytes, shorter than the 61-byte v2 header")]
    ShortHeader(usize),
    #[error("record batch magic {0} is not supported (only magic 2, Kafka 0.11+ clients)")]
    UnsupportedMagic(i8),
    #[error("batchLength {0} is invalid")]
    BadLength(i32),
    #[error("batch claims {claimed} bytes but only {available} are present")]
    Truncated { claimed: usize, available: usize },
    #[error("CRC-32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("recordsCount {count} does not match lastOffsetDelta {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
    #[error("{0} trailing bytes after the batch (exactly one batch per partition is allowed)")]
    TrailingBytes(usize),
    #[error("compression codec {0} is unknown")]
    UnknownCompression(u8),
}

/// The parsed fixed header of one batch. Does not borrow the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads `batchLength` of the batch starting at `b` (needs 12 bytes) and returns the whole
/// batch's size, or `None` when fewer than 12 bytes are present.
pub fn total_len_at(b: &[u8]) -> Option<Result<usize, BatchError>> {
    if b.len() < LOG_OVERHEAD {
        return None;
    }
    let len = be_i32(b, BATCH_LENGTH);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Some(Err(BatchError::BadLength(len)));
    }
    Some(Ok(len as usize + LOG_OVERHEAD))
}

impl BatchHeader {
    /// Parses the header at the start of `b`; looks at no record.
    pub fn parse(b: &[u8]) -> Result<Self, BatchError> {
        if b.len() < HEADER_LEN {
            // Check the magic first when we can: old clients send short magic-0/1 sets.
            if b.len() > MAGIC && b[MAGIC] != 2 {
                return Err(BatchError::UnsupportedMagic(b[MAGIC] as i8));
            }
            return Err(BatchError::ShortHeader(b.len()));
        }
        let magic = b[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            base_offset: be_i64(b, BASE_OFFSET),
            batch_length: be_i32(b, BATCH_LENGTH),
            partition_leader_epoch: be_i32(b, PARTITION_LEADER_EPOCH),
            magic,
            crc: be_i32(b, CRC) as u32,
            attributes: be_i16(b, ATTRIBUTES),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(b, BASE_TIMESTAMP),
            max_timestamp: be_i64(b, MAX_TIMESTAMP),
            producer_id: be_i64(b, PRODUCER_ID),
            producer_epoch: be_i16(b, PRODUCER_EPOCH),
            base_sequence: be_i32(b, BASE_SEQUENCE),
            records_count: be_i32(b, RECORDS_COUNT),
        };
        if header.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(header.batch_length));
        }
        if header.last_offset_delta < 0 {
            return Err(BatchError::BadRecordCount {
                count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// Size of the whole batch on disk and on the wire.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }
    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// CRC-32C over bytes [21, total_len) of a batch whose length was already checked.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Parses the header of a batch that `batch` must hold exactly (no byte more or less); checks
/// no CRC.
pub fn parse_exact(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header.total_len();
    if batch.len() < total {
        return Err(BatchError::Truncated {
            claimed: total,
            available: batch.len(),
        });
    }
    if batch.len() > total {
        return Err(BatchError::TrailingBytes(batch.len() - total));
    }
    Ok(header)
}

/// Checks one complete batch: header, length, CRC. `batch` must hold exactly the batch.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_exact(batch)?;
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Validates a batch sent by a producer: everything [`validate`] checks plus what Kafka's
/// broker requires of client batches (a known codec, a record count that matches the offsets).
pub fn validate_produced(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate(batch)?;
    if header.compression() > 4 {
        return Err(BatchError::UnknownCompression(header.compression()));
    }
    if header.records_count <= 0 || header.records_count - 1 != header.last_offset_delta {
        return Err(BatchError::BadRecordCount {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Writes the two broker-owned fields; neither is covered by the CRC.
pub fn stamp_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks the batch as LogAppendTime with `now_ms` as its max timestamp and recomputes the CRC
/// (both fields are inside it), as Kafka does for `message.timestamp.type=LogAppendTime`.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, ATTRIBUTES) | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates over the complete batches at the start of a buffer (a segment slice or a Fetch
/// response). Stops at a trailing partial batch, as Kafka clients do; yields an error for a
/// batch whose length field is invalid and then stops.
pub struct Batches<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Batches<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Batches {
            rest: bytes,
            failed: false,
        }
    }
    /// Bytes not yet yielded (a partial batch at the end, or what follows an error).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<&'a [u8], BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match total_len_at(self.rest)? {
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
            Ok(total) if total > self.rest.len() => None,
            Ok(total) => {
                let (batch, rest) = self.rest.split_at(total);
                self.rest = rest;
                Some(Ok(batch))
            }
        }
    }
}

/// One past the last offset of the last complete batch in `data` (what a read returned).
pub fn end_offset(data: &[u8]) -> Option<i64> {
    Batches::new(data)
        .filter_map(Result::ok)
        .last()
        .and_then(|b| BatchHeader::parse(b).ok())
        .map(|h| h.last_offset() + 1)
}

/// The two transaction markers (the control record key's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

/// Reads a zig-zag varint at `*at`, advancing it. None if truncated or longer than 10 bytes.
fn get_varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// Builds the control batch Kafka writes to end a transaction in one partition: one control
/// record, key `version 0 | type (ABORT 0, COMMIT 1)`, value `version 0 | coordinator epoch`,
/// attributes isControl + isTransactional, the producer's id and epoch, no sequence.
pub fn build_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    control: ControlType,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4);
    record.extend_from_slice(&0i16.to_be_bytes());
    let kind: i16 = match control {
        ControlType::Abort => 0,
        ControlType::Commit => 1,
    };
    record.extend_from_slice(&kind.to_be_bytes());
    put_varint(&mut record, 6);
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    put_varint(&mut record, 0); // headers
    let mut records = Vec::with_capacity(record.len() + 1);
    put_varint(&mut records, record.len() as i64);
    records.extend_from_slice(&record);
    assemble(
        &BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: ATTR_CONTROL | ATTR_TRANSACTIONAL,
            last_offset_delta: 0,
            base_timestamp: timestamp_ms,
            max_timestamp: timestamp_ms,
            producer_id,
            producer_epoch,
            base_sequence: -1,
            records_count: 1,
        },
        &records,
    )
}

/// Builds a complete batch from header fields and encoded records; batchLength and the CRC
/// are computed here (the header's values for them are ignored).
pub fn assemble(h: &BatchHeader, records: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + records.len());
    b.extend_from_slice(&h.base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&h.partition_leader_epoch.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]); // CRC, filled below
    b.extend_from_slice(&h.attributes.to_be_bytes());
    b.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    b.extend_from_slice(&h.base_timestamp.to_be_bytes());
    b.extend_from_slice(&h.max_timestamp.to_be_bytes());
    b.extend_from_slice(&h.producer_id.to_be_bytes());
    b.extend_from_slice(&h.producer_epoch.to_be_bytes());
    b.extend_from_slice(&h.base_sequence.to_be_bytes());
    b.extend_from_slice(&h.records_count.to_be_bytes());
    b.extend_from_slice(records);
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The marker type of a control batch (its first record's key), if it is a commit or abort
/// marker. Control batches are never compressed.
pub fn control_type(batch: &[u8]) -> Option<ControlType> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_control() || h.compression() != 0 {
        return None;
    }
    let mut at = HEADER_LEN;
    get_varint(batch, &mut at)?; // record length
    at += 1; // attributes
    get_varint(batch, &mut at)?; // timestamp delta
    get_varint(batch, &mut at)?; // offset delta
    let key_len = get_varint(batch, &mut at)?;
    if key_len < 4 {
        return None;
    }
    let key = batch.get(at..at + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(ControlType::Abort),
        1 => Some(ControlType::Commit),
        _ => None,
    }
}

/// Builds a valid, uncompressed, non-idempotent batch of `(key, value)` records with timestamps
/// `base_ts + i` (base offset 0: the log assigns it). For the demo and tests.
pub fn build_uncompressed(records: &[(Option<&[u8]>, &[u8])], base_ts: i64) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut r = Vec::with_capacity(16 + value.len() + key.map_or(0, <[u8]>::len));
        r.push(0); // attributes
        put_varint(&mut r, i as i64); // timestamp delta
        put_varint(&mut r, i as i64); // offset delta
        match key {
            Some(k) => {
                put_varint(&mut r, k.len() as i64);
                r.extend_from_slice(k);
            }
            None => put_varint(&mut r, -1),
        }
        put_varint(&mut r, value.len() as i64);
        r.extend_from_slice(value);
        put_varint(&mut r, 0); // no headers
        put_varint(&mut encoded, r.len() as i64);
        encoded.extend_from_slice(&r);
    }
    let n = records.len() as i32;
    assemble(
        &BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: base_ts,
            max_timestamp: base_ts + n as i64 - 1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: n,
        },
        &encoded,
    )
}

#[cfg(test)]
pub(crate) mod test_batches {
    //! Hand-built batches for unit tests (uncompressed records, valid CRC).
    use super::*;

    /// A valid batch of `values.len()` uncompressed records with timestamps `base_ts + i`.
    pub fn build(values: &[&[u8]], base_ts: i64) -> Vec<u8> {
        let records: Vec<(Option<&[u8]>, &[u8])> = values.iter().map(|v| (None, *v)).collect();
        build_uncompressed(&records, base_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::test_batches::build;
    use super::*;

    #[test]
    fn valid_batch_parses_and_stamping_keeps_crc() {
        let mut b = build(&[b"a", b"bb", b"ccc"], 1000);
        let h = validate_produced(&b).unwrap();
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        stamp_offset_and_epoch(&mut b, 42, 7);
        let h = validate(&b).unwrap();
        assert_eq!(
            (h.base_offset, h.partition_leader_epoch, h.last_offset()),
            (42, 7, 44)
        );
    }

    #[test]
    fn log_append_time_recomputes_crc() {
        let mut b = build(&[b"x"], 5);
        stamp_log_append_time(&mut b, 99);
        let h = validate(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99);
    }

    #[test]
    fn corruption_is_detected() {
        let mut b = build(&[b"hello"], 1);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(validate(&b), Err(BatchError::CrcMismatch { .. })));
        let b = build(&[b"hello"], 1);
        assert!(matches!(
            validate(&b[..b.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        let mut magic0 = b.clone();
        magic0[MAGIC] = 0;
        assert_eq!(validate(&magic0), Err(BatchError::UnsupportedMagic(0)));
        let mut neg = b.clone();
        neg[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&neg), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn control_batches_round_trip() {
        for kind in [ControlType::Abort, ControlType::Commit] {
            let b = build_control_batch(42, 3, kind, 0, 1000);
            let h = validate(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.records_count),
                (42, 3, 1)
            );
            assert_eq!(control_type(&b), Some(kind));
        }
        assert_eq!(control_type(&build(&[b"x"], 1)), None);
    }

    #[test]
    fn iterator_stops_at_partial_batch() {
        let a = build(&[b"1"], 1);
        let b = build(&[b"2", b"3"], 2);
        let mut buf = a.clone();
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&a[..20]);
        let mut it = Batches::new(&buf);
        assert_eq!(it.next().unwrap().unwrap(), &a[..]);
        assert_eq!(it.next().unwrap().unwrap(), &b[..]);
        assert!(it.next().is_none());
        assert_eq!(it.remainder().len(), 20);
    }
}
