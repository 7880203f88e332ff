//! Fuzz target: the record validator and the record reader on any records section.
//!
//! The input is `[codec byte][origin byte][recordsCount: 4 bytes][section...]`; a valid batch
//! header with a correct CRC is put around the section, so the fuzzer spends its time on the
//! records (and the decompressors) instead of on CRCs. Neither function may panic, abort or
//! allocate without bound, and the two must agree: a batch the validator accepts with N
//! records reads as exactly N records (a pair assertion).
#![no_main]

use broker_core::batch::{self, BatchHeader};
use broker_core::records::{self, BatchOrigin};
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
    if let Ok(n) = validated {
        match read {
            Ok(metas) => assert_eq!(metas.len(), n as usize, "validated and read counts differ"),
            Err(e) => panic!("validated {n} records but reading failed: {e}"),
        }
    }
});
