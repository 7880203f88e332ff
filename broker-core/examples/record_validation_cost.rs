//! Benchmark: what record validation costs on the produce path, beside today's header + CRC
//! check in the same run (a ratio, as BENCHMARKS.md asks; never a timed test).
//!
//! Batches are encoded as clients encode them (kafka-protocol's encoder: keys, values of the
//! given size, no headers), 16 KiB and 1 MiB of records per batch, for every codec. Each round
//! times, interleaved, (a) `batch::validate_produced` alone (the path before issue 18) and
//! (b) `validate_produced` + `records::validate_records`, over the same batches; the ratio of
//! the two is reported per round, then median and range.
//!
//!   cargo run --release -p broker-core --example record_validation_cost [ROUNDS]

use std::time::Instant;

use broker_core::batch;
use broker_core::records::{self, BatchOrigin, DEFAULT_MAX_DECOMPRESSED};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

fn batch_of(codec: Compression, value_size: usize, batch_bytes: usize) -> (Vec<u8>, usize) {
    let n = (batch_bytes / (value_size + 20)).max(1);
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // offset - sequence constant keeps every record in one batch (base sequence -1).
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i:08}"))),
            // Text-like values so that compression does something realistic.
            value: Some(Bytes::from(
                format!("{{\"order\":{i},\"item\":\"widget-{}\",\"note\":\"", i % 97)
                    .into_bytes()
                    .into_iter()
                    .chain(std::iter::repeat(b'a' + (i % 26) as u8))
                    .take(value_size)
                    .collect::<Vec<u8>>(),
            )),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .expect("encode");
    (buf.to_vec(), n)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    println!("| codec | value B | batch | records/batch | header+CRC ns/record | + records ns/record | records/s ratio (validated / header+CRC) |");
    println!("|---|---|---|---|---|---|---|");
    for codec in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
        Compression::Gzip,
    ] {
        for value_size in [100usize, 1024] {
            for batch_bytes in [16 << 10, 1 << 20] {
                let (b, n) = batch_of(codec, value_size, batch_bytes);
                // About 200 MB of records per measurement.
                let reps = (200_000_000 / (n * value_size)).max(1);
                let mut base_ns = Vec::new();
                let mut full_ns = Vec::new();
                let mut ratios = Vec::new();
                for _ in 0..rounds {
                    let t = Instant::now();
                    for _ in 0..reps {
                        std::hint::black_box(batch::validate_produced(std::hint::black_box(&b)))
                            .expect("valid");
                    }
                    let base = t.elapsed().as_nanos() as f64 / (reps * n) as f64;
                    let t = Instant::now();
                    for _ in 0..reps {
                        let bb = std::hint::black_box(&b);
                        batch::validate_produced(bb).expect("valid");
                        let got = records::validate_records(
                            bb,
                            BatchOrigin::Producer,
                            DEFAULT_MAX_DECOMPRESSED,
                        )
                        .expect("valid records");
                        assert_eq!(got as usize, n);
                    }
                    let full = t.elapsed().as_nanos() as f64 / (reps * n) as f64;
                    base_ns.push(base);
                    full_ns.push(full);
                    ratios.push(base / full);
                }
                let med = |v: &mut Vec<f64>| {
                    v.sort_by(|a, b| a.total_cmp(b));
                    v[v.len() / 2]
                };
                let (lo, hi) = (
                    ratios.iter().cloned().fold(f64::INFINITY, f64::min),
                    ratios.iter().cloned().fold(0.0, f64::max),
                );
                println!(
                    "| {codec:?} | {value_size} | {} KiB | {n} | {:.1} | {:.1} | {:.3}× ({lo:.3}–{hi:.3}) |",
                    batch_bytes >> 10,
                    med(&mut base_ns),
                    med(&mut full_ns),
                    med(&mut ratios),
                );
            }
        }
    }
}
