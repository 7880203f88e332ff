//! The TCP relay (for Kafka-protocol baselines and producer ↔ broker faults): accepts
//! connections, dials the target, and pumps bytes both ways in chunks, each chunk delayed by
//! the direction's one-way delay + jitter and the bandwidth cap's serialisation time. Order is
//! kept per connection (a chunk is never delivered before the one read before it).
//!
//! Loss cannot drop bytes from a stream; it is modelled per 1448-byte segment as a
//! retransmission stall of `max(200 ms, RTT)` (see [`super::model`]). A partition holds every
//! chunk (and new connections' dials) until heal, as TCP would keep retransmitting; a
//! partition longer than [`MAX_PARTITION_HOLD`] closes the connection.
//!
//! Memory per connection is bounded by `chunks_in_flight × chunk_bytes` per direction; when
//! that fills, the relay stops reading and TCP flow control pushes back on the sender.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::model::StreamModel;
use super::{Direction, DirectionStats, SettingsCache, WanControl, WanError};

/// A partition longer than this closes the connections it holds.
pub const MAX_PARTITION_HOLD: Duration = Duration::from_secs(600);
/// How long dialling the target may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a held chunk re-checks whether the partition healed.
const PARTITION_POLL: Duration = Duration::from_millis(5);

/// Limits and addresses of a [`TcpRelay`].
#[derive(Debug, Clone)]
pub struct TcpRelayConfig {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    /// Most connections at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Largest chunk read at once.
    pub chunk_bytes: usize,
    /// Chunks waiting for their due time, per connection and direction.
    pub chunks_in_flight: usize,
}

impl TcpRelayConfig {
    /// Defaults: 256 connections, 16 KiB chunks, 256 chunks in flight (4 MiB) per direction.
    pub fn new(listen: SocketAddr, target: SocketAddr) -> TcpRelayConfig {
        TcpRelayConfig {
            listen,
            target,
            max_connections: 256,
            chunk_bytes: 16 << 10,
            chunks_in_flight: 256,
        }
    }
}

/// A running TCP relay. Dropping it closes every relayed connection.
#[derive(Debug)]
pub struct TcpRelay {
    local_addr: SocketAddr,
    control: Arc<WanControl>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    config: TcpRelayConfig,
    control: Arc<WanControl>,
    forward_model: Mutex<StreamModel>,
    backward_model: Mutex<StreamModel>,
}

impl TcpRelay {
    /// Binds the listener and starts accepting on the current tokio runtime.
    pub async fn start(
        config: TcpRelayConfig,
        control: Arc<WanControl>,
    ) -> Result<TcpRelay, WanError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| WanError::io(format!("bind TCP {}", config.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| WanError::io("local_addr", e))?;
        let seed = control.seed();
        let shared = Arc::new(Shared {
            config,
            control: Arc::clone(&control),
            forward_model: Mutex::new(StreamModel::new(seed ^ 0x7C97_0001)),
            backward_model: Mutex::new(StreamModel::new(seed ^ 0x7C97_0002)),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared));
        Ok(TcpRelay {
            local_addr,
            control,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The control (settings and counters) of this relay.
    pub fn control(&self) -> &Arc<WanControl> {
        &self.control
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if connections.len() >= shared.config.max_connections {
                    drop(client);
                    continue;
                }
                connections.spawn(relay_connection(client, Arc::clone(&shared)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits while `direction` is partitioned; false if the partition outlasted the hold limit.
async fn wait_for_heal(control: &WanControl, direction: Direction) -> bool {
    let started = Instant::now();
    while control.settings().direction(direction).partitioned {
        if started.elapsed() > MAX_PARTITION_HOLD {
            return false;
        }
        tokio::time::sleep(PARTITION_POLL).await;
    }
    true
}

struct ActiveConnection(Arc<WanControl>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0
            .stats()
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn relay_connection(client: TcpStream, shared: Arc<Shared>) {
    let control = Arc::clone(&shared.control);
    control
        .stats()
        .sessions_active
        .fetch_add(1, Ordering::Relaxed);
    let _active = ActiveConnection(Arc::clone(&control));
    // A SYN sent into a partition is retransmitted until it heals.
    if !wait_for_heal(&control, Direction::Forward).await {
        return;
    }
    let server =
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(shared.config.target)).await {
            Ok(Ok(server)) => server,
            _ => return,
        };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut pumps = JoinSet::new();
    for (direction, read, write) in [
        (Direction::Forward, client_read, server_write),
        (Direction::Backward, server_read, client_write),
    ] {
        let capacity = shared.config.chunks_in_flight.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        pumps.spawn(read_chunks(direction, read, tx, Arc::clone(&shared)));
        pumps.spawn(write_chunks(direction, write, rx, Arc::clone(&control)));
    }
    while let Some(finished) = pumps.join_next().await {
        // An I/O error on either side ends the whole connection (dropping the JoinSet aborts
        // the other pumps and closes both sockets).
        if !matches!(finished, Ok(Ok(()))) {
            return;
        }
    }
}

enum Chunk {
    Data { at: Instant, bytes: Vec<u8> },
    End { at: Instant },
}

async fn read_chunks(
    direction: Direction,
    mut read: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let control = &shared.control;
    let stats = control.stats().direction(direction);
    let model = match direction {
        Direction::Forward => &shared.forward_model,
        Direction::Backward => &shared.backward_model,
    };
    let mut cache = SettingsCache::new(control);
    let mut buf = vec![0u8; shared.config.chunk_bytes.max(1)];
    let mut last_at = Instant::now();
    loop {
        let len = read.read(&mut buf).await?;
        let now = Instant::now();
        if len == 0 {
            let _ = tx
                .send(Chunk::End {
                    at: last_at.max(now),
                })
                .await;
            return Ok(());
        }
        let settings = cache.get(control);
        let rtt = Duration::from_secs_f64(
            (settings.forward.delay_ms + settings.backward.delay_ms).max(0.0) / 1000.0,
        );
        let schedule = {
            let mut model = match model.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            model.schedule(settings.direction(direction), rtt, now, len)
        };
        DirectionStats::add(&stats.packets_in, 1);
        DirectionStats::add(&stats.bytes_in, len as u64);
        DirectionStats::add(
            &stats.stalled_segments,
            u64::from(schedule.stalled_segments),
        );
        last_at = last_at.max(schedule.at);
        let bytes = buf.get(..len).map(<[u8]>::to_vec).unwrap_or_default();
        if tx.send(Chunk::Data { at: last_at, bytes }).await.is_err() {
            return Ok(());
        }
    }
}

async fn write_chunks(
    direction: Direction,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
    control: Arc<WanControl>,
) -> std::io::Result<()> {
    let stats = control.stats().direction(direction);
    while let Some(chunk) = rx.recv().await {
        let (at, bytes) = match chunk {
            Chunk::Data { at, bytes } => (at, Some(bytes)),
            Chunk::End { at } => (at, None),
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        if !wait_for_heal(&control, direction).await {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "partition outlasted the hold limit",
            ));
        }
        match bytes {
            Some(bytes) => {
                write.write_all(&bytes).await?;
                DirectionStats::add(&stats.packets_forwarded, 1);
                DirectionStats::add(&stats.bytes_forwarded, bytes.len() as u64);
            }
            None => {
                write.shutdown().await?;
                return Ok(());
            }
        }
    }
    Ok(())
}
