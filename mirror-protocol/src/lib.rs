//! The wire protocol between two Strait link agents.
//!
//! Partition logs are mirrored byte for byte from a source Kafka-compatible broker to a
//! destination broker over QUIC with mutual TLS. This crate is sans-IO: it turns [`Frame`]s into
//! bytes and back ([`encode_frame`], [`FrameDecoder`]), batches record data for a stream
//! ([`DataPacker`]), selects topics ([`TopicFilter`]) and builds the quinn endpoint
//! configurations ([`server_config`], [`client_config`]). Sockets, clocks and tasks stay in
//! `linker`. Every decode is bounded by [`Limits`]: a hostile peer cannot make it allocate more
//! than one frame and one capped decompressed payload, nor panic it.
//!
//! The byte layout, the stream usage and the connection state machine are specified in
//! `PROTOCOL.md` next to this crate's `Cargo.toml`.

mod codec;
mod data;
mod endpoint;
mod error;
mod filter;
mod frame;
mod packer;

pub use data::{Data, DataEntry, CODEC_NONE, CODEC_ZSTD};
pub use endpoint::{
    client_config, server_config, transport_config, Congestion, Identity, TransportSettings,
    MAX_PEM_BYTES,
};
pub use error::{ErrorCode, ProtocolError, TlsError};
pub use filter::{CompiledFilter, TopicFilter};
pub use frame::{
    capabilities, decode_body, decode_frame, encode_frame, frame_len, frame_type,
    negotiate_version, Ack, AckEntry, BatchAnchor, BatchDigest, Diverged, DivergenceKind,
    EncodeOptions, EncodeStats, ErrorFrame, Frame, FrameDecoder, Hello, HelloOk, Limits,
    ResumeCheck, Role, SourceOffset, StreamOptions, Subscribe, SubscribePartition, TopicId,
    TopicInfo, TopicsReply, TopicsRequest, VerifyReply, VerifyRequest, ALPN, FRAME_PREFIX_BYTES,
    MAX_ERROR_MESSAGE_BYTES, MAX_VERIFY_DIGESTS, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use packer::{DataPacker, PackerConfig};
