//! Fuzz target: any byte string, decoded as one frame body and as a stream fed to
//! `FrameDecoder` in pieces, must give frames or errors, never panic, abort or allocate without
//! bound; whatever decodes must encode and decode back to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_protocol::{decode_body, encode_frame, EncodeOptions, FrameDecoder, Limits};

/// Small limits keep each run fast while exercising the same checks as the defaults.
const LIMITS: Limits = Limits {
    max_frame_bytes: 1 << 20,
    max_decompressed_bytes: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_body(data, &LIMITS) {
        let mut out = Vec::new();
        if encode_frame(&frame, &EncodeOptions::default(), &LIMITS, &mut out).is_ok() {
            let again = decode_body(&out[4..], &LIMITS).expect("re-encoded frame must decode");
            assert_eq!(again, frame);
        }
    }

    // The first byte picks the piece size, the rest is the stream.
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut decoder = FrameDecoder::new(LIMITS);
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
