//! Fuzz target: the record validator and the record reader on any records section.
//!
//! The input is `[codec byte][origin byte][recordsCount: 4 bytes][section...]`; a valid batch
//! header with a correct CRC is put around the section, so the fuzzer spends its time on the
//! records (and the decompressors) instead of on CRCs. Neither function may panic, abort or
//! allocate without bound, and they must agree: a batch the validator accepts with N records
//! reads as exactly N records, with the offsets and timestamps that kafka-protocol's own
//! decoder finds in it (a pair assertion against an independent implementation).
#![no_main]

use broker_core::batch::{self, BatchHeader};
use broker_core::records::{self, BatchOrigin};
use kafka_protocol::records::RecordBatchDecoder;
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer finds the cap quickly.
const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&[codec, origin, c0, c1, c2, c3], section)) = data.split_first_chunk::<6>() else {
        return;
    };
    let count = i32::from_be_bytes([c0, c1, c2, c3]);
    let origin = if origin & 1 == 0 {
        BatchOrigin::Producer
    } else {
        BatchOrigin::Mirror
    };
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes: i16::from(codec % 8),
        last_offset_delta: count.saturating_sub(1).max(0),
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: count,
    };
    let batch = batch::assemble(&header, section);
    let validated = records::validate_records(&batch, origin, LIMIT);
    let read = records::record_metas(&batch, LIMIT);
    let Ok(n) = validated else {
        return;
    };
    let metas = match read {
        Ok(metas) => metas,
        Err(e) => panic!("validated {n} records but reading failed: {e}"),
    };
    assert_eq!(metas.len(), n as usize, "validated and read counts differ");
    // An independent decoder (kafka-protocol's, not Strait's walker) must see the same records
    // in a batch the validator accepted. It is only asked once the count is proven true (it
    // reserves room for the declared count), and its own refusals are not ours to judge.
    let mut bytes = bytes::Bytes::from(batch);
    if let Ok(set) = RecordBatchDecoder::decode(&mut bytes) {
        let theirs: Vec<(i64, i64)> = set.records.iter().map(|r| (r.offset, r.timestamp)).collect();
        let ours: Vec<(i64, i64)> = metas.iter().map(|m| (m.offset, m.timestamp)).collect();
        assert_eq!(ours, theirs, "the walker and kafka-protocol read different records");
    }
});
