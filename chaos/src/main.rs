//! `strait-chaos`: run the WAN emulator from the command line.
//!
//! * `strait-chaos udp --listen 127.0.0.1:7000 --target 127.0.0.1:7001 [--control ADDR]
//!   [--settings JSON] [--schedule FILE] [--seed N]`: a UDP (QUIC) relay.
//! * `strait-chaos tcp ...`: the same for TCP (Kafka protocol).
//! * `strait-chaos selfbench [--seconds 3] [--size 1200]`: the relay's own ceiling with no
//!   impairment (packets/s, MB/s).
//! * `strait-chaos check-schedule FILE`: parse a schedule file and print its events.
//!
//! Settings are JSON patches (see `chaos::wan::Settings::patched`), e.g.
//! `--settings '{"delay_ms": 40, "jitter_ms": 5, "loss": 0.01}'`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chaos::rng::Rng;
use chaos::wan::http::ControlServer;
use chaos::wan::schedule::Schedule;
use chaos::wan::tcp::{TcpRelay, TcpRelayConfig};
use chaos::wan::udp::{UdpRelay, UdpRelayConfig};
use chaos::wan::{Settings, WanControl};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "strait-chaos",
    version,
    about = "Strait's WAN emulator and chaos tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Relay UDP datagrams (QUIC) with impairments.
    Udp(RelayArgs),
    /// Relay TCP connections with impairments.
    Tcp(RelayArgs),
    /// Measure the UDP relay's ceiling with no impairment.
    Selfbench(SelfbenchArgs),
    /// Parse a schedule file and print its events.
    CheckSchedule { file: std::path::PathBuf },
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Address clients connect / send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address traffic is forwarded to.
    #[arg(long)]
    target: SocketAddr,
    /// Address of the HTTP control endpoint (off if not given).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Initial settings as a JSON patch.
    #[arg(long)]
    settings: Option<String>,
    /// Schedule file applied from start-up.
    #[arg(long)]
    schedule: Option<std::path::PathBuf>,
    /// RNG seed (default: $STRAIT_CHAOS_SEED or the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
}

#[derive(Args, Debug)]
struct SelfbenchArgs {
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Udp(args) => runtime.block_on(run_relay(args, false)),
        Command::Tcp(args) => runtime.block_on(run_relay(args, true)),
        Command::Selfbench(args) => runtime.block_on(selfbench(args)),
        Command::CheckSchedule { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let schedule = Schedule::parse(&text)?;
            for event in &schedule.events {
                println!(
                    "{:>10.3}s  line {:>4}  {:?}",
                    event.at.as_secs_f64(),
                    event.line,
                    event.action
                );
            }
            Ok(())
        }
    }
}

async fn run_relay(args: RelayArgs, tcp: bool) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(Rng::seed_from_env);
    let mut settings = Settings::default();
    if let Some(json) = &args.settings {
        let patch: serde_json::Value =
            serde_json::from_str(json).context("--settings is not JSON")?;
        settings = settings.patched(&patch)?;
    }
    let schedule = match &args.schedule {
        Some(path) => Some(Schedule::parse(
            &std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        )?),
        None => None,
    };
    let control = WanControl::new(settings, seed)?;
    let _control_server = match args.control {
        Some(addr) => {
            let server = ControlServer::start(addr, Arc::clone(&control)).await?;
            println!("strait-chaos control on http://{}", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let kind = if tcp { "tcp" } else { "udp" };
    let (_udp, _tcp, local) = if tcp {
        let relay = TcpRelay::start(
            TcpRelayConfig::new(args.listen, args.target),
            Arc::clone(&control),
        )
        .await?;
        let local = relay.local_addr();
        (None, Some(relay), local)
    } else {
        let relay = UdpRelay::start(
            UdpRelayConfig::new(args.listen, args.target),
            Arc::clone(&control),
        )
        .await?;
        let local = relay.local_addr();
        (Some(relay), None, local)
    };
    println!(
        "strait-chaos {kind} relay listening on {local} -> {} (seed {seed})",
        args.target
    );
    let schedule_task = schedule.map(|s| tokio::spawn(s.run(Arc::clone(&control), Instant::now())));
    let stop = async {
        match args.duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        _ = stop => {}
        Some(result) = async { match schedule_task { Some(t) => Some(t.await), None => None } } => {
            match result {
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
                // The schedule is done; keep relaying until stopped.
                Ok(Ok(())) => std::future::pending::<()>().await,
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&control.stats().snapshot())?
    );
    Ok(())
}

async fn selfbench(args: SelfbenchArgs) -> anyhow::Result<()> {
    let size = args.size.clamp(16, 65_000);
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").context("bind sink")?;
    sink.set_read_timeout(Some(Duration::from_millis(200)))?;
    chaos::wan::udp::enlarge_socket_buffers(&sink);
    let sink_addr = sink.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let counter = {
        let received = Arc::clone(&received);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !done.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let control = WanControl::new(Settings::default(), 1)?;
    let relay = UdpRelay::start(
        UdpRelayConfig::new("127.0.0.1:0".parse()?, sink_addr),
        Arc::clone(&control),
    )
    .await?;
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sender.connect(relay.local_addr()).await?;
    let payload = vec![0xABu8; size];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds.max(1));
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            if sender.send(&payload).await.is_ok() {
                sent += 1;
            }
        }
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let _ = counter.join();
    let stats = control.stats().snapshot();
    let forwarded = stats.forward.packets_forwarded as f64;
    println!(
        "selfbench: {size}-byte datagrams for {elapsed:.1} s: sent {sent}, relay received {}, forwarded {} ({:.0} packets/s, {:.1} MB/s), overload drops {}, sink received {}",
        stats.forward.packets_in,
        stats.forward.packets_forwarded,
        forwarded / elapsed,
        forwarded * size as f64 / elapsed / 1e6,
        stats.forward.dropped_overload,
        received.load(Ordering::Relaxed)
    );
    Ok(())
}
