//! Codec tests on whole frames: round trips of every frame type with random values, Data
//! compression choices, truncations, random garbage, hostile counts and the buffered decoder.

mod common;

use bytes::Bytes;
use common::{encode, Rng};
use mirror_protocol::*;

fn body(encoded: &[u8]) -> &[u8] {
    &encoded[FRAME_PREFIX_BYTES..]
}

#[test]
fn every_frame_type_round_trips() {
    let mut rng = Rng::from_env("every_frame_type_round_trips");
    for i in 0..2_000u64 {
        let frame = rng.frame(i);
        let mut out = vec![0xAA]; // encode appends: existing bytes stay
        let stats = encode_frame(
            &frame,
            &EncodeOptions::default(),
            &Limits::default(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0], 0xAA);
        assert_eq!(stats.wire_bytes as usize, out.len() - 1);
        let encoded = &out[1..];
        let len = frame_len(encoded[..4].try_into().unwrap(), &Limits::default()).unwrap();
        assert_eq!(len, encoded.len() - 4);
        assert_eq!(encoded[4], frame.type_byte());
        let decoded = decode_body(body(encoded), &Limits::default()).unwrap();
        assert_eq!(decoded, frame, "frame {i}");
        if let Frame::Data(data) = &frame {
            assert_eq!(stats.source_bytes, data.source_bytes());
        } else {
            assert_eq!(stats.source_bytes, 0);
            assert!(!stats.compressed);
        }
    }
}

#[test]
fn unknown_error_codes_decode_and_reencode() {
    let frame = Frame::Error(ErrorFrame {
        code: ErrorCode::Unknown(999),
        message: "from the future".into(),
    });
    let encoded = encode(&frame);
    assert_eq!(&encoded[5..7], &999u16.to_be_bytes());
    assert_eq!(
        decode_body(body(&encoded), &Limits::default()).unwrap(),
        frame
    );
    assert_eq!(ErrorCode::from_u16(6), ErrorCode::OffsetOutOfRange);
    assert_eq!(ErrorCode::LinkRefused.as_u16(), 8);
}

#[test]
fn hello_ignores_trailing_bytes_but_other_frames_do_not() {
    let hello = Frame::Hello(Hello {
        min_version: 1,
        max_version: 2,
        link_name: "eu-to-us".into(),
        cluster_id: "src".into(),
        role: Role::Destination,
        capabilities: capabilities::ZSTD,
    });
    let mut encoded = encode(&hello);
    encoded.extend_from_slice(b"future fields");
    assert_eq!(
        decode_body(body(&encoded), &Limits::default()).unwrap(),
        hello
    );

    let mut ack = encode(&Frame::Ack(Ack { entries: vec![] }));
    ack.push(0);
    assert!(matches!(
        decode_body(body(&ack), &Limits::default()),
        Err(ProtocolError::TrailingBytes { .. })
    ));
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate_version(1, 1), Some(1));
    assert_eq!(negotiate_version(1, 7), Some(PROTOCOL_VERSION));
    assert_eq!(negotiate_version(2, 7), Some(2));
    assert_eq!(negotiate_version(3, 7), None);
    assert_eq!(negotiate_version(0, 0), None);
}

fn data_frame(batches: Vec<u8>) -> Frame {
    Frame::Data(Data {
        entries: vec![DataEntry {
            topic: "orders".into(),
            partition: 3,
            source_log_start: SourceOffset(0),
            source_high_watermark: SourceOffset(1000),
            batches: Bytes::from(batches),
        }],
    })
}

fn json_like(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 200);
    while text.len() < len {
        let record = format!(
            r#"{{"order_id":{},"customer":"c-{}","amount":{}.{:02},"currency":"EUR","status":"PAID"}}"#,
            rng.next() % 1_000_000,
            rng.next() % 5000,
            rng.next() % 1000,
            rng.next() % 100
        );
        text.extend_from_slice(record.as_bytes());
    }
    text.truncate(len);
    text
}

#[test]
fn compression_is_used_for_text_and_skipped_for_random_bytes() {
    let mut rng = Rng::from_env("compression_choice");
    let text = data_frame(json_like(&mut rng, 256 * 1024));
    let mut out = Vec::new();
    let stats = encode_frame(
        &text,
        &EncodeOptions::default(),
        &Limits::default(),
        &mut out,
    )
    .unwrap();
    assert!(stats.compressed);
    let ratio = stats.wire_bytes as f64 / stats.source_bytes as f64;
    assert!(ratio < 0.35, "ratio {ratio}");
    assert_eq!(out[5], CODEC_ZSTD);
    assert_eq!(decode_body(body(&out), &Limits::default()).unwrap(), text);

    let random = data_frame(rng.bytes(256 * 1024));
    let mut out = Vec::new();
    let stats = encode_frame(
        &random,
        &EncodeOptions::default(),
        &Limits::default(),
        &mut out,
    )
    .unwrap();
    assert!(!stats.compressed);
    assert_eq!(out[5], CODEC_NONE);
    assert!(stats.wire_bytes < stats.source_bytes + 64);
    assert_eq!(decode_body(body(&out), &Limits::default()).unwrap(), random);

    let never = EncodeOptions {
        zstd_level: 0,
        ..EncodeOptions::default()
    };
    let mut out = Vec::new();
    let stats = encode_frame(&text, &never, &Limits::default(), &mut out).unwrap();
    assert!(!stats.compressed);
}

/// The frame as a version-1 peer would send it (no topic ids, no resume checks).
fn without_extensions(frame: &Frame) -> Frame {
    let mut plain = frame.clone();
    match &mut plain {
        Frame::TopicsReply(reply) => reply.topics.iter_mut().for_each(|t| t.topic_id = None),
        Frame::Subscribe(sub) => sub
            .partitions
            .iter_mut()
            .for_each(|p| p.resume = ResumeCheck::default()),
        _ => {}
    }
    plain
}

#[test]
fn every_truncation_is_an_error() {
    let mut rng = Rng::from_env("every_truncation_is_an_error");
    for i in 0..12 * 20 {
        let frame = rng.frame(i);
        let encoded = encode(&frame);
        let full = body(&encoded);
        for cut in 0..full.len() {
            // The one exception: a version-2 extension cut off whole leaves the version-1
            // frame (the length prefix, not the body, tells a receiver where a frame ends).
            if let Ok(decoded) = decode_body(&full[..cut], &Limits::default()) {
                assert_eq!(
                    decoded,
                    without_extensions(&frame),
                    "frame type 0x{:02x} cut at {cut} of {} decoded",
                    full[0],
                    full.len()
                );
                assert_ne!(decoded, frame);
            }
        }
        // A stream cut short yields no frame, and no error either.
        let mut decoder = FrameDecoder::new(Limits::default());
        decoder.push(&encoded[..encoded.len() - 1]);
        assert!(decoder.next_frame().unwrap().is_none());
    }
}

#[test]
fn random_garbage_never_panics_and_what_decodes_round_trips() {
    let mut rng = Rng::from_env("random_garbage");
    let types = [
        0x01, 0x02, 0x03, 0x10, 0x11, 0x20, 0x21, 0x22, 0x23, 0x30, 0x40, 0x41,
    ];
    let mut decoded = 0;
    for _ in 0..20_000 {
        let len = rng.below(120) as usize;
        let mut garbage = rng.bytes(len);
        if let Some(first) = garbage.first_mut() {
            if rng.below(8) != 0 {
                *first = types[rng.below(types.len() as u64) as usize];
            }
        }
        // Small counts and lengths now and then, so decoding gets past the first field.
        for byte in garbage.iter_mut().skip(1) {
            if rng.below(3) == 0 {
                *byte = 0;
            }
        }
        if let Ok(frame) = decode_body(&garbage, &Limits::default()) {
            decoded += 1;
            let again = encode(&frame);
            assert_eq!(
                decode_body(body(&again), &Limits::default()).unwrap(),
                frame
            );
        }
    }
    println!("{decoded} of 20000 garbage bodies decoded");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    for frame_type in [0x10u8, 0x11, 0x20, 0x22] {
        let frame_body = [frame_type, 0xff, 0xff, 0xff, 0xff, 0, 0, 0];
        let error = decode_body(&frame_body, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                error,
                ProtocolError::CountExceedsRemaining {
                    count: u32::MAX,
                    ..
                }
            ),
            "type 0x{frame_type:02x}: {error}"
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }
    // Raw Data payload claiming 2^32-1 entries.
    let mut data_body = vec![0x21, CODEC_NONE, 0, 0, 0, 8];
    data_body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    assert!(matches!(
        decode_body(&data_body, &Limits::default()),
        Err(ProtocolError::CountExceedsRemaining { .. })
    ));
    // A batches length beyond the payload.
    let mut encoded = encode(&data_frame(vec![1, 2, 3]));
    let len = encoded.len();
    encoded[len - 7..len - 3].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_body(body(&encoded), &Limits::default()).is_err());
}

#[test]
fn decoder_fed_byte_by_byte_or_in_chunks_yields_the_same_frames() {
    let mut rng = Rng::from_env("decoder_chunks");
    let frames: Vec<Frame> = (0..200).map(|i| rng.frame(i)).collect();
    let stream: Vec<u8> = frames.iter().flat_map(encode).collect();

    let mut decoder = FrameDecoder::new(Limits::default());
    let mut byte_by_byte = Vec::new();
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        while let Some(frame) = decoder.next_frame().unwrap() {
            byte_by_byte.push(frame);
        }
    }
    assert_eq!(byte_by_byte, frames);
    assert_eq!(decoder.buffered_len(), 0);

    let mut decoder = FrameDecoder::new(Limits::default());
    let mut chunked = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let take = (1 + rng.below(700) as usize).min(rest.len());
        decoder.push(&rest[..take]);
        rest = &rest[take..];
        while let Some(frame) = decoder.next_frame().unwrap() {
            chunked.push(frame);
        }
    }
    assert_eq!(chunked, frames);
}

#[test]
fn oversized_and_empty_frames_are_rejected_from_the_prefix() {
    let limits = Limits {
        max_frame_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        frame_len(1001u32.to_be_bytes(), &limits),
        Err(ProtocolError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    assert!(matches!(
        frame_len([0; 4], &limits),
        Err(ProtocolError::EmptyFrame)
    ));
    assert_eq!(frame_len(1000u32.to_be_bytes(), &limits).unwrap(), 1000);

    let mut decoder = FrameDecoder::new(limits);
    decoder.push(&u32::MAX.to_be_bytes());
    let error = decoder.next_frame().unwrap_err();
    assert_eq!(error.code(), ErrorCode::FrameTooLarge);
    assert_eq!(
        decoder.buffered_len(),
        4,
        "nothing reserved from the prefix"
    );
}

#[test]
fn encode_errors_leave_the_output_unchanged() {
    let limits = Limits {
        max_frame_bytes: 1000,
        ..Limits::default()
    };
    let never = EncodeOptions {
        zstd_level: 0,
        ..EncodeOptions::default()
    };
    let mut out = b"keep".to_vec();
    let error = encode_frame(&data_frame(vec![7; 2000]), &never, &limits, &mut out).unwrap_err();
    assert!(
        matches!(error, ProtocolError::FrameTooLarge { .. }),
        "{error}"
    );
    assert_eq!(out, b"keep");

    let long_name = Frame::Ack(Ack {
        entries: vec![AckEntry {
            topic: "t".repeat(70_000),
            partition: 0,
            durable: SourceOffset(1),
        }],
    });
    let error = encode_frame(&long_name, &never, &Limits::default(), &mut out).unwrap_err();
    assert!(matches!(
        error,
        ProtocolError::FieldTooLong { field: "topic", .. }
    ));
    assert_eq!(out, b"keep");

    let small_payload_limit = Limits {
        max_decompressed_bytes: 100,
        ..Limits::default()
    };
    let error = encode_frame(
        &data_frame(vec![0; 200]),
        &EncodeOptions::default(),
        &small_payload_limit,
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(error, ProtocolError::DecompressedTooLarge { .. }));
    assert_eq!(out, b"keep");
}

#[test]
fn error_frame_messages_are_capped() {
    let frame = ErrorFrame::new(ErrorCode::Internal, "é".repeat(5000));
    assert!(frame.message.len() <= MAX_ERROR_MESSAGE_BYTES);
    let from_error = ErrorFrame::from(&ProtocolError::UnknownFrameType(0x7f));
    assert_eq!(from_error.code, ErrorCode::MalformedFrame);
    assert!(from_error.message.contains("0x7f"));
}
