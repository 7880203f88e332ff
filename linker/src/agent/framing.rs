//! Reading and writing mirror-protocol frames on QUIC streams: the only place where the agent
//! turns stream bytes into [`Frame`]s. Length prefixes are checked against the limits before
//! anything is allocated; a malformed frame is an error for that stream, never a panic.

use anyhow::{bail, Context, Result};
use mirror_protocol::{
    decode_body, encode_frame, frame_len, EncodeOptions, EncodeStats, Frame, Limits,
};
use quinn::{ReadExactError, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of frame bodies and decompressed payloads all data streams of an agent may hold at
/// once (`MEMORY_BUDGET_KIB` KiB). A stream waits for budget before reading a large frame, so
/// many streams at the frame cap cannot exhaust memory together.
pub const MEMORY_BUDGET_KIB: usize = 192 * 1024;

/// A frame read under the memory budget; the budget is given back when this is dropped.
pub struct BudgetedFrame {
    pub frame: Frame,
    pub wire_bytes: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Like [`read_frame`], but charges the frame body and, for a compressed Data frame, its
/// declared decompressed size to `budget` before allocating either.
pub async fn read_frame_budgeted(
    recv: &mut RecvStream,
    limits: &Limits,
    budget: &std::sync::Arc<Semaphore>,
) -> Result<Option<BudgetedFrame>> {
    let Some(len) = read_len(recv, limits).await? else {
        return Ok(None);
    };
    let mut permit = budget
        .clone()
        .acquire_many_owned(kib(len))
        .await
        .context("memory budget closed")?;
    let body = read_body(recv, len).await?;
    // Data frame body: type, codec, u32 declared decompressed length (capped by the limits
    // inside the decoder; charged here so the budget covers it).
    if body.first() == Some(&mirror_protocol::frame_type::DATA)
        && body.get(1) == Some(&mirror_protocol::CODEC_ZSTD)
    {
        if let Some(declared) = body.get(2..6) {
            let declared =
                u32::from_be_bytes([declared[0], declared[1], declared[2], declared[3]]) as usize;
            let declared = declared.min(limits.max_decompressed_bytes);
            let more = budget
                .clone()
                .acquire_many_owned(kib(declared))
                .await
                .context("memory budget closed")?;
            permit.merge(more);
        }
    }
    let frame = decode_body(&body, limits)?;
    Ok(Some(BudgetedFrame {
        frame,
        wire_bytes: 4 + len as u64,
        _permit: Some(permit),
    }))
}

/// Reads a frame's length prefix and checks it against the limits. `Ok(None)` when the peer
/// finished the stream cleanly between frames.
async fn read_len(recv: &mut RecvStream, limits: &Limits) -> Result<Option<usize>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => Ok(Some(frame_len(prefix, limits)?)),
        Err(ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(ReadExactError::FinishedEarly(n)) => {
            bail!("stream ended inside a frame's length prefix ({n} of 4 bytes)")
        }
        Err(ReadExactError::ReadError(e)) => Err(e).context("reading a frame"),
    }
}

/// Reads the `len` bytes of a frame body.
async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(body),
        Err(ReadExactError::FinishedEarly(n)) => {
            bail!("stream ended inside a frame: {n} of {len} bytes")
        }
        Err(ReadExactError::ReadError(e)) => Err(e).context("reading a frame"),
    }
}

/// Reads one frame and its size on the wire (prefix included). `Ok(None)` when the peer
/// finished the stream cleanly between frames.
pub async fn read_frame(recv: &mut RecvStream, limits: &Limits) -> Result<Option<(Frame, u64)>> {
    let Some(len) = read_len(recv, limits).await? else {
        return Ok(None);
    };
    let body = read_body(recv, len).await?;
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
