//! Errors of the codec ([`ProtocolError`]), the wire error codes peers exchange ([`ErrorCode`])
//! and TLS configuration errors ([`TlsError`]).

use std::fmt;

/// A numeric error code carried by `Reject` and `Error` frames (`u16` on the wire).
///
/// Codes this version does not know decode as [`ErrorCode::Unknown`] instead of failing, so a
/// newer peer can add codes without breaking an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No protocol version in common (handshake).
    UnsupportedVersion,
    /// A frame could not be decoded (bad field, truncated, trailing bytes, unknown type...).
    MalformedFrame,
    /// A frame length prefix above the receiver's limit.
    FrameTooLarge,
    /// A Data payload that would decompress beyond the receiver's limit.
    DecompressedTooLarge,
    /// A subscribed topic or partition does not exist on the source.
    UnknownTopicOrPartition,
    /// A subscribed start offset is outside the source partition's log.
    OffsetOutOfRange,
    /// The Hello's role is not the one the acceptor expects.
    RoleMismatch,
    /// The acceptor does not serve this link (unknown link name, wrong cluster...).
    LinkRefused,
    /// Any other failure on the sender's side.
    Internal,
    /// A code this version does not know (never one of the values above).
    Unknown(u16),
}

impl ErrorCode {
    /// The value sent on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::MalformedFrame => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::DecompressedTooLarge => 4,
            ErrorCode::UnknownTopicOrPartition => 5,
            ErrorCode::OffsetOutOfRange => 6,
            ErrorCode::RoleMismatch => 7,
            ErrorCode::LinkRefused => 8,
            ErrorCode::Internal => 9,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// The code for a wire value; unassigned values give [`ErrorCode::Unknown`].
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::MalformedFrame,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::DecompressedTooLarge,
            5 => ErrorCode::UnknownTopicOrPartition,
            6 => ErrorCode::OffsetOutOfRange,
            7 => ErrorCode::RoleMismatch,
            8 => ErrorCode::LinkRefused,
            9 => ErrorCode::Internal,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(code) => write!(f, "unknown error code {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// Why a frame could not be encoded or decoded, or a topic filter not compiled.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A length prefix of 0 (a frame has at least its type byte).
    #[error("empty frame (length prefix 0)")]
    EmptyFrame,
    /// A frame longer than `Limits::max_frame_bytes` (decoding or encoding).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// The body ended inside a field.
    #[error("frame truncated in field `{field}`")]
    Truncated { field: &'static str },
    /// Bytes left over after the last field of a frame.
    #[error("{count} unexpected trailing bytes after {frame}")]
    TrailingBytes { frame: &'static str, count: usize },
    /// A frame type byte this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// A string field that is not valid UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// An array count that cannot fit in the bytes left (checked before allocating).
    #[error(
        "field `{field}`: count {count} needs at least {needed} bytes but only {remaining} remain"
    )]
    CountExceedsRemaining {
        field: &'static str,
        count: u32,
        needed: u64,
        remaining: usize,
    },
    /// A field with a value outside its domain (role, codec...).
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
    /// A Data payload whose declared or real decompressed size exceeds the limit.
    #[error("data payload decompresses to {len} bytes, over the limit of {max} bytes")]
    DecompressedTooLarge { len: u64, max: usize },
    /// The decompressed (or raw) payload length differs from the declared length.
    #[error("data payload is {actual} bytes but declares {declared}")]
    PayloadLengthMismatch { declared: u64, actual: u64 },
    /// zstd failed to decompress a payload (corrupt data, or output above the declared size).
    #[error("zstd decompression failed: {0}")]
    ZstdDecompress(std::io::Error),
    /// zstd failed to compress (only when encoding).
    #[error("zstd compression failed: {0}")]
    ZstdCompress(std::io::Error),
    /// A string or array too long for its length prefix (only when encoding).
    #[error("field `{field}` is too long to encode ({len})")]
    FieldTooLong { field: &'static str, len: usize },
    /// A topic-filter regex that does not compile.
    #[error("invalid topic regex {pattern:?}: {source}")]
    BadRegex {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
}

impl ProtocolError {
    /// The wire error code to send to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::DecompressedTooLarge { .. } => ErrorCode::DecompressedTooLarge,
            ProtocolError::ZstdCompress(_) | ProtocolError::FieldTooLong { .. } => {
                ErrorCode::Internal
            }
            ProtocolError::EmptyFrame
            | ProtocolError::Truncated { .. }
            | ProtocolError::TrailingBytes { .. }
            | ProtocolError::UnknownFrameType(_)
            | ProtocolError::InvalidUtf8 { .. }
            | ProtocolError::CountExceedsRemaining { .. }
            | ProtocolError::InvalidValue { .. }
            | ProtocolError::PayloadLengthMismatch { .. }
            | ProtocolError::ZstdDecompress(_)
            | ProtocolError::BadRegex { .. } => ErrorCode::MalformedFrame,
        }
    }
}

/// Why TLS material could not be loaded or a QUIC endpoint configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A PEM input is larger than [`crate::endpoint::MAX_PEM_BYTES`].
    #[error("{what} in {origin} is larger than {max} bytes")]
    TooLarge {
        what: &'static str,
        origin: String,
        max: usize,
    },
    /// PEM syntax error, or no item of the expected kind.
    #[error("{what} in {origin}: {reason}")]
    Pem {
        what: &'static str,
        origin: String,
        reason: String,
    },
    /// rustls refused a certificate or key.
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built (e.g. no usable CA).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}
