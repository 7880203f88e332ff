//! Reading and writing mirror-protocol frames on QUIC streams: the only place where the agent
//! turns stream bytes into [`Frame`]s. Length prefixes are checked against the limits before
//! anything is allocated; a malformed frame is an error for that stream, never a panic.

use anyhow::{bail, Context, Result};
use mirror_protocol::{
    decode_body, encode_frame, frame_len, EncodeOptions, EncodeStats, Frame, Limits,
};
use quinn::{ReadExactError, RecvStream, SendStream};

/// Reads one frame and its size on the wire (prefix included). `Ok(None)` when the peer
/// finished the stream cleanly between frames.
pub async fn read_frame(recv: &mut RecvStream, limits: &Limits) -> Result<Option<(Frame, u64)>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(n)) => {
            bail!("stream ended inside a frame's length prefix ({n} of 4 bytes)")
        }
        Err(ReadExactError::ReadError(e)) => return Err(e).context("reading a frame"),
    }
    let len = frame_len(prefix, limits)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(n)) => {
            bail!("stream ended inside a frame: {n} of {len} bytes")
        }
        Err(ReadExactError::ReadError(e)) => return Err(e).context("reading a frame"),
    }
    let frame = decode_body(&body, limits)?;
    Ok(Some((frame, 4 + len as u64)))
}

/// Encodes and writes one frame; waits while QUIC flow control says the peer is full, which
/// is what bounds the sender's memory.
pub async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    opts: &EncodeOptions,
    limits: &Limits,
    scratch: &mut Vec<u8>,
) -> Result<EncodeStats> {
    scratch.clear();
    let stats = encode_frame(frame, opts, limits, scratch)?;
    send.write_all(scratch).await.context("writing a frame")?;
    // Large scratch buffers are not kept between frames.
    if scratch.capacity() > 4 * limits.max_frame_bytes.min(16 << 20) {
        *scratch = Vec::new();
    }
    Ok(stats)
}
