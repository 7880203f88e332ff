//! Compression bombs: a Data frame whose zstd payload expands beyond what it declares, or
//! declares more than the limit, is rejected without allocating the expanded size. A counting
//! global allocator records the largest allocation made by the test's own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use mirror_protocol::*;

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

/// A Data body: codec zstd, the given declared length, then `compressed`.
fn zstd_body(declared: u32, compressed: &[u8]) -> Vec<u8> {
    let mut body = vec![0x21, CODEC_ZSTD];
    body.extend_from_slice(&declared.to_be_bytes());
    body.extend_from_slice(compressed);
    body
}

const EXPANDED: usize = 256 << 20;

#[test]
fn payload_larger_than_declared_is_rejected_without_expanding() {
    let zeros = vec![0u8; EXPANDED];
    // bulk compression records the content size in the frame header...
    let with_size = zstd::bulk::compress(&zeros, 3).unwrap();
    // ...a streaming encoder does not, so only the output cap can stop it.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(&zeros).unwrap();
    let without_size = encoder.finish().unwrap();
    drop(zeros);
    assert!(with_size.len() < 64 * 1024 && without_size.len() < 64 * 1024);

    for compressed in [&with_size, &without_size] {
        let body = zstd_body(100, compressed);
        let (result, largest) = largest_allocation(|| decode_body(&body, &Limits::default()));
        let error = result.unwrap_err();
        assert!(
            matches!(
                error,
                ProtocolError::ZstdDecompress(_) | ProtocolError::DecompressedTooLarge { .. }
            ),
            "{error}"
        );
        assert!(largest < 1 << 20, "allocated {largest} bytes");
    }
}

#[test]
fn declared_length_above_the_limit_is_rejected_before_allocating() {
    let compressed = zstd::bulk::compress(&[1u8; 1000], 3).unwrap();
    let limits = Limits::default();
    for declared in [limits.max_decompressed_bytes as u32 + 1, u32::MAX] {
        let body = zstd_body(declared, &compressed);
        let (result, largest) = largest_allocation(|| decode_body(&body, &limits));
        assert!(matches!(
            result,
            Err(ProtocolError::DecompressedTooLarge { .. })
        ));
        assert!(largest < 64 * 1024, "allocated {largest} bytes");
    }
}

#[test]
fn payload_shorter_than_declared_is_rejected() {
    let payload = vec![0u8, 0, 0, 0]; // zero entries
    let compressed = zstd::bulk::compress(&payload, 3).unwrap();
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(&payload).unwrap();
    let streamed = encoder.finish().unwrap();
    assert!(decode_body(&zstd_body(4, &compressed), &Limits::default()).is_ok());
    assert!(decode_body(&zstd_body(4, &streamed), &Limits::default()).is_ok());
    assert!(matches!(
        decode_body(&zstd_body(5, &streamed), &Limits::default()),
        Err(ProtocolError::PayloadLengthMismatch {
            declared: 5,
            actual: 4
        })
    ));
}
