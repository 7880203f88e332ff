//! The TCP side of the broker: accept connections, read length-prefixed request frames, hand
//! them to [`crate::protocol::handle`] and write the responses back in request order.
//!
//! Limits: a frame's declared size is checked against `max_frame_bytes` before anything is
//! allocated, and the body buffer grows only as bytes actually arrive, so a peer that claims a
//! huge frame and sends little costs little. Each connection has at most
//! `max_in_flight` requests between reading and writing, and the broker at most
//! `max_connections` connections.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::protocol::{self, Reply};

/// Kafka's default `socket.request.max.bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Connection limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: 64,
            max_connections: 10_000,
        }
    }
}

/// Serves Kafka clients on `listener` until `shutdown` completes, then closes every partition
/// log cleanly.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::BrokerError> {
    let limits = Arc::new(limits);
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: log, back off a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.load(Ordering::Relaxed) >= limits.max_connections {
                    tracing::warn!(%peer, limit = limits.max_connections, "connection refused: too many connections");
                    continue;
                }
                connections.fetch_add(1, Ordering::Relaxed);
                let broker = broker.clone();
                let limits = limits.clone();
                let connections = connections.clone();
                tokio::spawn(async move {
                    let host = format!("/{}", peer.ip());
                    if let Err(e) = handle_connection(broker, stream, &host, &limits).await {
                        tracing::debug!(%peer, error = %e, "connection closed");
                    }
                    connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    tracing::info!("shutting down: closing partition logs");
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.shutdown())
        .await
        .map_err(|e| crate::BrokerError::StorageFailed(format!("shutdown task failed: {e}")))?
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
}

/// Reads one frame body, growing the buffer only as data arrives. `Ok(None)` on a clean EOF
/// before a frame starts.
async fn read_frame(
    reader: &mut OwnedReadHalf,
    max: usize,
) -> Result<Option<Bytes>, ConnectionError> {
    let mut len_buf = [0u8; 4];
    match reader.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len_buf);
    if len < 0 {
        return Err(ConnectionError::NegativeLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(ConnectionError::FrameTooLarge { len, max });
    }
    let mut body = BytesMut::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        body.reserve(want);
        let n = (&mut *reader).take(want as u64).read_buf(&mut body).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of {len} frame bytes",
                    body.len()
                ),
            )
            .into());
        }
    }
    Ok(Some(body.freeze()))
}

async fn handle_connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    client_host: &str,
    limits: &ServerLimits,
) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Reply>(limits.max_in_flight);
    let writer_task = tokio::spawn(write_replies(writer, rx));
    let result = async {
        while let Some(frame) = read_frame(&mut reader, limits.max_frame_bytes).await? {
            let reply = protocol::handle(&broker, frame, client_host)?;
            if tx.send(reply).await.is_err() {
                break; // the writer failed: the peer is gone
            }
        }
        Ok::<(), ConnectionError>(())
    }
    .await;
    if let Err(e) = &result {
        match e {
            ConnectionError::Io(_) => {}
            other => tracing::warn!(error = %other, "closing connection"),
        }
    }
    drop(tx);
    // Answer what was accepted before the error, then close.
    match writer_task.await {
        Ok(Err(e)) if result.is_ok() => return Err(e),
        _ => {}
    }
    result
}

async fn write_replies(
    writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Reply>,
) -> Result<(), ConnectionError> {
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    while let Some(reply) = rx.recv().await {
        let bytes = match reply {
            Reply::Now(b) => Some(b),
            Reply::Later(fut) => fut.await?,
            Reply::Nothing => None,
        };
        if let Some(b) = bytes {
            writer.write_all(&b).await?;
        }
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    writer.shutdown().await.ok();
    Ok(())
}
