//! The UDP relay (for QUIC links): clients send datagrams to the relay's address; each client
//! address gets a session with its own upstream socket connected to the target, so the target
//! sees one peer per client and its replies find their way back.
//!
//! Data path, per direction: ingress (the listening socket for `forward`, the sessions'
//! upstream sockets for `backward`) copies each datagram into a bounded channel; one scheduler
//! task per direction applies the [`PacketModel`] and keeps a `BinaryHeap` of packets by due
//! time, sending each when due. If the channel is full the datagram is dropped and counted as
//! `dropped_overload` (the relay itself is the bottleneck; the self-benchmark measures where).
//! The heap is bounded in bytes (overflow counted as `dropped_queue`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::model::{DropCause, Fate, PacketModel};
use super::{Direction, DirectionStats, SettingsCache, WanControl, WanError};

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Limits and addresses of a [`UdpRelay`].
#[derive(Debug, Clone)]
pub struct UdpRelayConfig {
    /// Where clients send (use port 0 to let the OS pick).
    pub listen: SocketAddr,
    /// Where datagrams are forwarded.
    pub target: SocketAddr,
    /// Most client sessions at once; datagrams from further clients are dropped.
    pub max_sessions: usize,
    /// A session with no forward traffic for this long is closed.
    pub session_idle_timeout: Duration,
    /// Datagrams waiting between ingress and scheduler, per direction.
    pub channel_capacity: usize,
    /// Bytes held in the delay heap, per direction.
    pub max_scheduled_bytes: usize,
}

impl UdpRelayConfig {
    /// Defaults: 1024 sessions, 120 s idle timeout, 16 384 queued datagrams, 256 MiB in
    /// flight per direction.
    pub fn new(listen: SocketAddr, target: SocketAddr) -> UdpRelayConfig {
        UdpRelayConfig {
            listen,
            target,
            max_sessions: 1024,
            session_idle_timeout: Duration::from_secs(120),
            channel_capacity: 16_384,
            max_scheduled_bytes: 256 << 20,
        }
    }
}

/// A datagram on its way through a scheduler.
#[derive(Debug)]
struct Packet {
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    /// `None`: the socket is connected (upstream); else the client address.
    to: Option<SocketAddr>,
}

/// A running UDP relay. Dropping it stops all its tasks.
#[derive(Debug)]
pub struct UdpRelay {
    local_addr: SocketAddr,
    control: Arc<WanControl>,
    tasks: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// Binds the listening socket and starts the relay tasks on the current tokio runtime.
    pub async fn start(
        config: UdpRelayConfig,
        control: Arc<WanControl>,
    ) -> Result<UdpRelay, WanError> {
        let listen = UdpSocket::bind(config.listen)
            .await
            .map_err(|e| WanError::io(format!("bind UDP {}", config.listen), e))?;
        let local_addr = listen
            .local_addr()
            .map_err(|e| WanError::io("local_addr", e))?;
        enlarge_socket_buffers(&listen);
        let listen = Arc::new(listen);
        let capacity = config.channel_capacity.max(1);
        let (forward_tx, forward_rx) = mpsc::channel(capacity);
        let (backward_tx, backward_rx) = mpsc::channel(capacity);
        let seed = control.seed();
        let tasks = vec![
            tokio::spawn(run_scheduler(
                Direction::Forward,
                Arc::clone(&control),
                forward_rx,
                config.max_scheduled_bytes,
                seed,
            )),
            tokio::spawn(run_scheduler(
                Direction::Backward,
                Arc::clone(&control),
                backward_rx,
                config.max_scheduled_bytes,
                seed ^ 0xB0B0_B0B0_B0B0_B0B0,
            )),
            tokio::spawn(run_forward_ingress(
                config,
                listen,
                Arc::clone(&control),
                forward_tx,
                backward_tx,
            )),
        ];
        Ok(UdpRelay {
            local_addr,
            control,
            tasks,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The control (settings and counters) of this relay.
    pub fn control(&self) -> &Arc<WanControl> {
        &self.control
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A client's session: the upstream socket and the task relaying the target's replies.
struct Session {
    upstream: Arc<UdpSocket>,
    last_seen: Instant,
    reply_task: JoinHandle<()>,
    control: Arc<WanControl>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reply_task.abort();
        self.control
            .stats()
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn offer(
    tx: &mpsc::Sender<Packet>,
    stats: &DirectionStats,
    packet: Packet,
) -> Result<(), mpsc::error::TrySendError<Packet>> {
    let len = packet.data.len() as u64;
    DirectionStats::add(&stats.packets_in, 1);
    DirectionStats::add(&stats.bytes_in, len);
    match tx.try_send(packet) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(p)) => {
            DirectionStats::add(&stats.dropped_overload, 1);
            drop(p);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn run_forward_ingress(
    config: UdpRelayConfig,
    listen: Arc<UdpSocket>,
    control: Arc<WanControl>,
    forward_tx: mpsc::Sender<Packet>,
    backward_tx: mpsc::Sender<Packet>,
) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_sweep = Instant::now();
    let sweep_every = (config.session_idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        let (len, from) = match listen.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors (e.g. a client that went away) surface here on Linux; keep going.
            Err(_) => continue,
        };
        let now = Instant::now();
        if now.duration_since(last_sweep) >= sweep_every {
            last_sweep = now;
            sessions.retain(|_, s| now.duration_since(s.last_seen) < config.session_idle_timeout);
        }
        let upstream = match sessions.get_mut(&from) {
            Some(session) => {
                session.last_seen = now;
                Arc::clone(&session.upstream)
            }
            None => {
                if sessions.len() >= config.max_sessions {
                    control
                        .stats()
                        .sessions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(session) =
                    open_session(&config, from, &listen, &control, backward_tx.clone(), now).await
                else {
                    continue;
                };
                let upstream = Arc::clone(&session.upstream);
                sessions.insert(from, session);
                upstream
            }
        };
        let Some(data) = buf.get(..len) else {
            continue;
        };
        let packet = Packet {
            data: data.to_vec(),
            socket: upstream,
            to: None,
        };
        if offer(&forward_tx, &control.stats().forward, packet).is_err() {
            return;
        }
    }
}

async fn open_session(
    config: &UdpRelayConfig,
    client: SocketAddr,
    listen: &Arc<UdpSocket>,
    control: &Arc<WanControl>,
    backward_tx: mpsc::Sender<Packet>,
    now: Instant,
) -> Result<Session, std::io::Error> {
    let bind: SocketAddr = if config.target.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    let upstream = UdpSocket::bind(bind).await?;
    upstream.connect(config.target).await?;
    enlarge_socket_buffers(&upstream);
    let upstream = Arc::new(upstream);
    let reply_task = tokio::spawn(run_backward_ingress(
        Arc::clone(&upstream),
        Arc::clone(listen),
        client,
        Arc::clone(control),
        backward_tx,
    ));
    control
        .stats()
        .sessions_active
        .fetch_add(1, Ordering::Relaxed);
    Ok(Session {
        upstream,
        last_seen: now,
        reply_task,
        control: Arc::clone(control),
    })
}

async fn run_backward_ingress(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    control: Arc<WanControl>,
    backward_tx: mpsc::Sender<Packet>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = match upstream.recv(&mut buf).await {
            Ok(len) => len,
            // ECONNREFUSED from an earlier send to a target not listening yet: keep going.
            Err(_) => continue,
        };
        let Some(data) = buf.get(..len) else {
            continue;
        };
        let packet = Packet {
            data: data.to_vec(),
            socket: Arc::clone(&listen),
            to: Some(client),
        };
        if offer(&backward_tx, &control.stats().backward, packet).is_err() {
            return;
        }
    }
}

/// A packet waiting in the delay heap, ordered by due time then arrival.
struct Scheduled {
    at: Instant,
    sequence: u64,
    packet: Packet,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

async fn send(packet: &Packet, stats: &DirectionStats) {
    let sent = match packet.to {
        None => packet.socket.send(&packet.data).await,
        Some(to) => packet.socket.send_to(&packet.data, to).await,
    };
    if sent.is_ok() {
        DirectionStats::add(&stats.packets_forwarded, 1);
        DirectionStats::add(&stats.bytes_forwarded, packet.data.len() as u64);
    }
}

/// Most datagrams taken from the channel per wake-up before due packets are sent again.
const ADMIT_BATCH: usize = 256;

async fn run_scheduler(
    direction: Direction,
    control: Arc<WanControl>,
    mut rx: mpsc::Receiver<Packet>,
    max_scheduled_bytes: usize,
    seed: u64,
) {
    let stats = control.stats().direction(direction);
    let mut cache = SettingsCache::new(&control);
    let mut model = PacketModel::new(seed);
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut heap_bytes = 0usize;
    let mut sequence = 0u64;
    loop {
        // Send everything due (dropping it if a partition began meanwhile).
        let now = Instant::now();
        while heap.peek().is_some_and(|top| top.0.at <= now) {
            let Some(Reverse(due)) = heap.pop() else {
                break;
            };
            heap_bytes = heap_bytes.saturating_sub(due.packet.data.len());
            if cache.get(&control).direction(direction).partitioned {
                DirectionStats::add(&stats.dropped_partition, 1);
            } else {
                send(&due.packet, stats).await;
            }
        }
        let next_due = heap.peek().map(|top| top.0.at);
        let first = tokio::select! {
            biased;
            received = rx.recv() => match received {
                Some(packet) => packet,
                None => return,
            },
            _ = sleep_until_opt(next_due), if next_due.is_some() => continue,
        };
        let mut batch = Some(first);
        let mut admitted = 0;
        while let Some(packet) = batch.take() {
            admitted += 1;
            let now = Instant::now();
            let settings = cache.get(&control).direction(direction);
            match model.admit(settings, now, packet.data.len()) {
                Fate::Drop(cause) => {
                    let counter = match cause {
                        DropCause::Partition => &stats.dropped_partition,
                        DropCause::Loss => &stats.dropped_loss,
                        DropCause::Burst => &stats.dropped_burst,
                        DropCause::Queue => &stats.dropped_queue,
                    };
                    DirectionStats::add(counter, 1);
                }
                Fate::Deliver(delivery) => {
                    if delivery.reordered {
                        DirectionStats::add(&stats.reordered, 1);
                    }
                    if delivery.copies > 1 {
                        DirectionStats::add(&stats.duplicated, 1);
                    }
                    if delivery.at <= now && heap.is_empty() {
                        send(&packet, stats).await;
                        if delivery.copies > 1 {
                            send(&packet, stats).await;
                        }
                    } else if heap_bytes + packet.data.len() * delivery.copies as usize
                        > max_scheduled_bytes
                    {
                        DirectionStats::add(&stats.dropped_queue, 1);
                    } else {
                        push_copies(
                            &mut heap,
                            &mut heap_bytes,
                            &mut sequence,
                            delivery.at,
                            packet,
                            delivery.copies,
                        );
                    }
                }
            }
            if admitted < ADMIT_BATCH {
                batch = rx.try_recv().ok();
            }
        }
    }
}

fn push_copies(
    heap: &mut BinaryHeap<Reverse<Scheduled>>,
    heap_bytes: &mut usize,
    sequence: &mut u64,
    at: Instant,
    packet: Packet,
    copies: u8,
) {
    for _ in 1..copies {
        let copy = Packet {
            data: packet.data.clone(),
            socket: Arc::clone(&packet.socket),
            to: packet.to,
        };
        *heap_bytes += copy.data.len();
        *sequence += 1;
        heap.push(Reverse(Scheduled {
            at,
            sequence: *sequence,
            packet: copy,
        }));
    }
    *heap_bytes += packet.data.len();
    *sequence += 1;
    heap.push(Reverse(Scheduled {
        at,
        sequence: *sequence,
        packet,
    }));
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// Socket buffer size asked for on every relay socket, so that bursts are queued by the
/// emulator's model rather than dropped by the kernel.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Raises `SO_RCVBUF`/`SO_SNDBUF` to [`SOCKET_BUFFER_BYTES`] (the `FORCE` variants work as
/// root beyond `net.core.rmem_max`; otherwise the kernel caps it). Best effort.
pub fn enlarge_socket_buffers(socket: &impl std::os::fd::AsRawFd) {
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for option in [force, plain] {
            // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its
            // exact size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}
