//! Self-tests of the WAN emulator against real loopback sockets: measured delay, loss rate and
//! bandwidth within 10 % of the settings, partition and heal, duplication and reordering
//! counted, the TCP relay's delay and bandwidth cap, schedule timing and the HTTP control.
//! Every test is bounded (a few seconds) and prints its seed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::rng::Rng;
use chaos::wan::http::{ControlClient, ControlServer};
use chaos::wan::schedule::Schedule;
use chaos::wan::tcp::{TcpRelay, TcpRelayConfig};
use chaos::wan::udp::{UdpRelay, UdpRelayConfig};
use chaos::wan::{DirectionSettings, Settings, WanControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn seed(test: &str) -> u64 {
    let seed = Rng::seed_from_env();
    println!("[{test}] seed {seed} (rerun with STRAIT_CHAOS_SEED={seed})");
    seed
}

/// A datagram sink: the relay's target. Returns (address, receiver of (seq, one-way delay)).
struct Sink {
    addr: SocketAddr,
    received: tokio::sync::mpsc::UnboundedReceiver<(u64, Duration, usize)>,
}

async fn sink(epoch: Instant) -> Sink {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    chaos::wan::udp::enlarge_socket_buffers(&socket);
    let addr = socket.local_addr().unwrap();
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf).await {
            let seq = u64::from_be_bytes(buf[0..8].try_into().unwrap());
            let sent = Duration::from_nanos(u64::from_be_bytes(buf[8..16].try_into().unwrap()));
            let delay = epoch.elapsed().saturating_sub(sent);
            if tx.send((seq, delay, n)).is_err() {
                return;
            }
        }
    });
    Sink { addr, received }
}

fn datagram(seq: u64, epoch: Instant, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len.max(16)];
    d[0..8].copy_from_slice(&seq.to_be_bytes());
    d[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
    d
}

/// Sends `count` datagrams paced at roughly `per_ms` per millisecond.
async fn send_paced(
    socket: &UdpSocket,
    to: SocketAddr,
    epoch: Instant,
    count: u64,
    len: usize,
    per_ms: u64,
) {
    for seq in 0..count {
        socket
            .send_to(&datagram(seq, epoch, len), to)
            .await
            .unwrap();
        if seq % per_ms == per_ms - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Collects everything that arrives until nothing came for `quiet`.
async fn drain(sink: &mut Sink, quiet: Duration, limit: Duration) -> Vec<(u64, Duration, usize)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, sink.received.recv()).await {
            Ok(Some(item)) => out.push(item),
            _ => break,
        }
    }
    out
}

async fn udp_setup(settings: Settings, test: &str) -> (UdpRelay, Sink, UdpSocket, Instant) {
    let epoch = Instant::now();
    let control = WanControl::new(settings, seed(test)).unwrap();
    let sink = sink(epoch).await;
    let relay = UdpRelay::start(UdpRelayConfig::new(any_port(), sink.addr), control)
        .await
        .unwrap();
    let client = UdpSocket::bind(any_port()).await.unwrap();
    chaos::wan::udp::enlarge_socket_buffers(&client);
    (relay, sink, client, epoch)
}

fn within(measured: f64, want: f64, tolerance: f64) -> bool {
    (measured - want).abs() <= want * tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_delay_is_within_ten_percent() {
    let settings = Settings::symmetric(DirectionSettings {
        delay_ms: 40.0,
        jitter_ms: 5.0,
        jitter_distribution: chaos::wan::JitterDistribution::Normal,
        jitter_preserves_order: false,
        ..DirectionSettings::default()
    });
    let (relay, mut sink, client, epoch) = udp_setup(settings, "udp_delay").await;
    send_paced(&client, relay.local_addr(), epoch, 2000, 100, 2).await;
    let got = drain(
        &mut sink,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 2000);
    let delays: Vec<f64> = got.iter().map(|g| g.1.as_secs_f64() * 1000.0).collect();
    let mean = delays.iter().sum::<f64>() / delays.len() as f64;
    let sd = (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / delays.len() as f64).sqrt();
    println!("measured one-way delay mean {mean:.2} ms, sd {sd:.2} ms (want 40, 5)");
    assert!(within(mean, 40.0, 0.10), "mean delay {mean} ms");
    assert!(sd > 3.0 && sd < 7.5, "jitter sd {sd} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_rate_is_within_ten_percent() {
    let settings = Settings::symmetric(DirectionSettings {
        loss: 0.05,
        ..DirectionSettings::default()
    });
    let (relay, mut sink, client, epoch) = udp_setup(settings, "udp_loss").await;
    let n = 20_000u64;
    send_paced(&client, relay.local_addr(), epoch, n, 100, 10).await;
    let got = drain(
        &mut sink,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    let stats = relay.control().stats().snapshot();
    let loss = 1.0 - got.len() as f64 / n as f64;
    println!(
        "measured loss {:.4} (want 0.05); stats {:?}",
        loss, stats.forward
    );
    assert_eq!(stats.forward.dropped_overload, 0);
    assert_eq!(stats.forward.packets_in, n);
    assert!(within(loss, 0.05, 0.10), "loss {loss}");
    assert_eq!(stats.forward.dropped_loss, n - got.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_bandwidth_cap_is_within_ten_percent_and_queue_drops_tail() {
    // 16 Mbit/s = 2 MB/s; 3 MB sent quickly, the queue big enough to hold it all.
    let n = 3000u64;
    let settings = Settings::symmetric(DirectionSettings {
        rate_bps: 16_000_000,
        queue_limit_bytes: 4 << 20,
        ..DirectionSettings::default()
    });
    let (relay, mut sink, client, epoch) = udp_setup(settings, "udp_bandwidth").await;
    let start = Instant::now();
    send_paced(&client, relay.local_addr(), epoch, n, 1000, 50).await;
    let mut received_bytes = 0usize;
    let mut last_arrival = start;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), sink.received.recv()).await {
            Ok(Some((_, _, len))) => {
                received_bytes += len;
                last_arrival = Instant::now();
            }
            _ => break,
        }
    }
    let seconds = last_arrival.duration_since(start).as_secs_f64();
    let rate = received_bytes as f64 * 8.0 / seconds;
    println!(
        "measured rate {:.2} Mbit/s over {seconds:.2} s (want 16)",
        rate / 1e6
    );
    assert!(within(rate, 16e6, 0.10), "rate {rate}");

    // A 20 kB queue at 16 Mbit/s: a burst of 100 kB must lose most of its tail.
    relay
        .control()
        .patch(&serde_json::json!({"queue_limit_bytes": 20_000}))
        .unwrap();
    for seq in 0..100 {
        client
            .send_to(&datagram(seq, epoch, 1000), relay.local_addr())
            .await
            .unwrap();
    }
    let got = drain(
        &mut sink,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    let stats = relay.control().stats().snapshot();
    println!(
        "burst of 100 through a 20 kB queue: {} delivered, {} queue drops",
        got.len(),
        stats.forward.dropped_queue
    );
    assert!(
        got.len() >= 20 && got.len() <= 40,
        "{} delivered",
        got.len()
    );
    assert_eq!(stats.forward.dropped_queue, 100 - got.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_partition_stops_all_traffic_and_heal_restores_it() {
    let epoch = Instant::now();
    let control = WanControl::new(Settings::default(), seed("udp_partition")).unwrap();
    let mut sink = sink(epoch).await;
    let relay = UdpRelay::start(
        UdpRelayConfig::new(any_port(), sink.addr),
        Arc::clone(&control),
    )
    .await
    .unwrap();
    let server = ControlServer::start(any_port(), Arc::clone(&control))
        .await
        .unwrap();
    let http = ControlClient::new(server.local_addr());
    let client = UdpSocket::bind(any_port()).await.unwrap();

    send_paced(&client, relay.local_addr(), epoch, 100, 100, 10).await;
    assert_eq!(
        drain(
            &mut sink,
            Duration::from_millis(200),
            Duration::from_secs(5)
        )
        .await
        .len(),
        100
    );

    tokio::task::spawn_blocking({
        let http = http.clone();
        move || http.partition()
    })
    .await
    .unwrap()
    .unwrap();
    send_paced(&client, relay.local_addr(), epoch, 500, 100, 10).await;
    assert_eq!(
        drain(
            &mut sink,
            Duration::from_millis(300),
            Duration::from_secs(5)
        )
        .await
        .len(),
        0
    );

    tokio::task::spawn_blocking({
        let http = http.clone();
        move || http.heal()
    })
    .await
    .unwrap()
    .unwrap();
    send_paced(&client, relay.local_addr(), epoch, 100, 100, 10).await;
    assert_eq!(
        drain(
            &mut sink,
            Duration::from_millis(200),
            Duration::from_secs(5)
        )
        .await
        .len(),
        100
    );
    let stats = tokio::task::spawn_blocking(move || http.stats())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.forward.dropped_partition, 500);
    assert_eq!(stats.forward.packets_forwarded, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_duplication_and_reordering_are_counted() {
    let settings = Settings::symmetric(DirectionSettings {
        delay_ms: 2.0,
        duplicate: 0.1,
        reorder: 0.1,
        reorder_delay_ms: 20.0,
        ..DirectionSettings::default()
    });
    let (relay, mut sink, client, epoch) = udp_setup(settings, "udp_dup_reorder").await;
    let n = 5000u64;
    send_paced(&client, relay.local_addr(), epoch, n, 100, 2).await;
    let got = drain(
        &mut sink,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    let mut overtaken = 0u64;
    let mut max_seq = None;
    for (seq, _, _) in &got {
        if !seen.insert(*seq) {
            duplicates += 1;
            continue;
        }
        if max_seq.is_some_and(|m| *seq < m) {
            overtaken += 1;
        }
        max_seq = max_seq.max(Some(*seq));
    }
    let stats = relay.control().stats().snapshot();
    println!(
        "received {} (unique {}), duplicates {duplicates}, arrived late {overtaken}; stats dup {} reord {}",
        got.len(),
        seen.len(),
        stats.forward.duplicated,
        stats.forward.reordered
    );
    assert_eq!(seen.len() as u64, n);
    assert_eq!(duplicates, stats.forward.duplicated);
    assert!(within(stats.forward.duplicated as f64, 500.0, 0.15));
    assert!(within(stats.forward.reordered as f64, 500.0, 0.15));
    // Every held-back datagram is overtaken (20 ms hold at 2 datagrams per ms).
    assert!(
        within(overtaken as f64, stats.forward.reordered as f64, 0.10),
        "{overtaken}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_come_back_through_the_backward_direction() {
    let control = WanControl::new(
        Settings {
            forward: DirectionSettings {
                delay_ms: 30.0,
                ..DirectionSettings::default()
            },
            backward: DirectionSettings {
                delay_ms: 10.0,
                ..DirectionSettings::default()
            },
        },
        seed("udp_echo"),
    )
    .unwrap();
    let echo = UdpSocket::bind(any_port()).await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let relay = UdpRelay::start(UdpRelayConfig::new(any_port(), echo_addr), control)
        .await
        .unwrap();
    let client = UdpSocket::bind(any_port()).await.unwrap();
    client.connect(relay.local_addr()).await.unwrap();
    let mut rtts = Vec::new();
    for i in 0..20u8 {
        let start = Instant::now();
        client.send(&[i; 32]).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[i; 32]);
        rtts.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    println!("echo RTT mean {mean:.2} ms (want 40)");
    assert!(within(mean, 40.0, 0.10), "rtt {mean}");
    assert_eq!(relay.control().stats().snapshot().sessions_active, 1);
}

async fn tcp_echo_server() -> SocketAddr {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_delays_caps_bandwidth_and_holds_during_partition() {
    let echo = tcp_echo_server().await;
    let control = WanControl::new(
        Settings::symmetric(DirectionSettings {
            delay_ms: 25.0,
            ..DirectionSettings::default()
        }),
        seed("tcp_relay"),
    )
    .unwrap();
    let relay = TcpRelay::start(TcpRelayConfig::new(any_port(), echo), Arc::clone(&control))
        .await
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for i in 0..10u8 {
        let start = Instant::now();
        conn.write_all(&[i; 100]).await.unwrap();
        let mut buf = [0u8; 100];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i; 100]);
        rtts.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    println!("TCP echo RTT {mean:.2} ms (want 50)");
    assert!(within(mean, 50.0, 0.10), "rtt {mean}");

    // 8 Mbit/s each way, 1 MB echoed: about 1 s plus the RTT.
    control
        .patch(&serde_json::json!({"delay_ms": 0, "rate_bps": 8_000_000}))
        .unwrap();
    let payload = vec![7u8; 1 << 20];
    let start = Instant::now();
    let (mut r, mut w) = conn.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w
    });
    let mut got = vec![0u8; 1 << 20];
    r.read_exact(&mut got).await.unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let rate = (1u64 << 20) as f64 * 8.0 / seconds;
    println!("TCP relay throughput {:.2} Mbit/s (cap 8)", rate / 1e6);
    assert!(within(rate, 8e6, 0.10), "rate {rate}");
    assert!(got.iter().all(|b| *b == 7));
    let mut w = writer.await.unwrap();

    // Partition: bytes are held, then delivered after heal (no loss on a stream).
    control.patch(&serde_json::json!({"rate_bps": 0})).unwrap();
    control.partition();
    w.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), r.read_exact(&mut buf))
            .await
            .is_err()
    );
    control.heal();
    let healed = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), r.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"held");
    assert!(healed.elapsed() < Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_loss_is_a_stall_of_at_least_200ms() {
    let echo = tcp_echo_server().await;
    let control = WanControl::new(Settings::default(), seed("tcp_loss")).unwrap();
    let relay = TcpRelay::start(TcpRelayConfig::new(any_port(), echo), Arc::clone(&control))
        .await
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    control
        .patch(&serde_json::json!({"forward": {"loss": 1.0}}))
        .unwrap();
    let start = Instant::now();
    conn.write_all(&[1u8; 100]).await.unwrap();
    let mut buf = [0u8; 100];
    conn.read_exact(&mut buf).await.unwrap();
    let stalled = start.elapsed();
    println!("one lost segment: echo after {stalled:?}");
    assert!(stalled >= Duration::from_millis(200) && stalled < Duration::from_millis(300));
    assert_eq!(control.stats().snapshot().forward.stalled_segments, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_applies_at_the_right_times() {
    let schedule =
        Schedule::parse("0s delay 10ms\n300ms partition for 400ms\n800ms loss 2%\n").unwrap();
    let control = WanControl::new(Settings::default(), seed("schedule")).unwrap();
    let start = Instant::now();
    let runner = tokio::spawn(schedule.run(Arc::clone(&control), start));
    let at = |ms: u64| {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            start + Duration::from_millis(ms),
        ))
    };
    at(150).await;
    assert_eq!(control.settings().forward.delay_ms, 10.0);
    assert!(!control.settings().forward.partitioned);
    at(450).await;
    assert!(control.settings().forward.partitioned);
    assert!(control.settings().backward.partitioned);
    at(750).await;
    assert!(!control.settings().forward.partitioned);
    assert_eq!(control.settings().forward.loss, 0.0);
    at(900).await;
    assert_eq!(control.settings().forward.loss, 0.02);
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_control_endpoints() {
    let control = WanControl::new(Settings::default(), 1).unwrap();
    let server = ControlServer::start(any_port(), Arc::clone(&control))
        .await
        .unwrap();
    let http = ControlClient::new(server.local_addr());
    tokio::task::spawn_blocking(move || {
        let settings: Settings =
            serde_json::from_str(&http.request("GET", "/settings", "").unwrap()).unwrap();
        assert_eq!(settings, Settings::default());
        http.patch(&serde_json::json!({"delay_ms": 40, "backward": {"loss": 0.01}}))
            .unwrap();
        let err = http
            .request("PUT", "/settings", "{\"bogus\": 1}")
            .unwrap_err();
        assert!(err.to_string().contains("400"), "{err}");
        let err = http.request("PUT", "/settings", "not json").unwrap_err();
        assert!(err.to_string().contains("400"), "{err}");
        let err = http.request("GET", "/nope", "").unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        let err = http.request("DELETE", "/stats", "").unwrap_err();
        assert!(err.to_string().contains("405"), "{err}");
        let stats = http.stats().unwrap();
        assert_eq!(stats.forward.packets_in, 0);
    })
    .await
    .unwrap();
    assert_eq!(control.settings().forward.delay_ms, 40.0);
    assert_eq!(control.settings().backward.loss, 0.01);
    assert_eq!(control.settings().forward.loss, 0.0);
}
