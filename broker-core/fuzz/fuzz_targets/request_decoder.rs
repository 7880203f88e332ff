//! Fuzz target: any byte string as a Kafka request frame must decode to a request or an
//! error, never panic, abort or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = broker_core::protocol::decode_request(bytes::Bytes::copy_from_slice(data));
});
