//! The `strait` command: runs a broker (with its link agent and admin API), drives links and
//! mirrors through the admin API, makes test certificates, runs the two-region demo, and
//! inspects a data directory.
//!
//! This is the binary edge: errors become `anyhow` reports with context, printed once.

mod admin;
mod agent;
mod certs;
mod cli;
mod demo;
mod metrics;
mod model;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use broker_core::server::{self, ServerLimits};
use broker_core::{Broker, BrokerConfig, FsyncPolicy};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "strait",
    version,
    about = "Strait: a Kafka-compatible broker and cross-region cluster linker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Kafka-wire-compatible broker with a durable log.
    Broker(BrokerArgs),
    /// Inspect a broker's data directory.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Define, inspect, pause, resume and delete cluster links (on the destination broker).
    Link {
        #[command(flatten)]
        admin: cli::AdminArgs,
        #[command(subcommand)]
        command: cli::LinkCommand,
    },
    /// Inspect mirror topics (topics a link fills from its source cluster).
    Mirror {
        #[command(flatten)]
        admin: cli::AdminArgs,
        #[command(subcommand)]
        command: cli::MirrorCommand,
    },
    /// Make a test certificate authority and agent certificates for links.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Two embedded brokers, "east" and "west", linked on loopback: produces a sample stream
    /// to east and shows it arriving on west with live lag and compression figures.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Write ca.pem/ca.key and <name>.pem/<name>.key for each agent name.
    Generate(certs::CertsArgs),
}

#[derive(Args, Debug)]
struct BrokerArgs {
    /// Directory holding the broker's topics and metadata (created if missing).
    #[arg(long, env = "STRAIT_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to accept Kafka clients on.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: String,
    /// Address clients are told to connect to (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// This broker's node id.
    #[arg(long, default_value_t = 1)]
    node_id: i32,
    /// Cluster id; default: the one stored in the data dir, or a new random one.
    #[arg(long)]
    cluster_id: Option<String>,
    /// When data is fsynced: `always` (before acks=all is answered), `interval:MS`, `never`.
    /// Consumers only see data that is durable under this policy.
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    /// Create topics that a Metadata request names but that do not exist.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics.
    #[arg(long, default_value_t = 1)]
    default_partitions: i32,
    /// How often retention runs, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    retention_check_ms: u64,
    /// A consumer group with no members loses its committed offsets this many minutes after
    /// its last commit (Kafka's offsets.retention.minutes).
    #[arg(long, default_value_t = 10_080)]
    offsets_retention_minutes: u64,
    /// Largest request frame accepted, in bytes.
    #[arg(long, default_value_t = server::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Address of the admin HTTP API (links, mirrors, /metrics); `none` disables it. If the
    /// default address is taken, the broker starts without it (with a warning).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    admin_listen: String,
    /// UDP address to serve links from (this broker as a link's source).
    #[arg(long)]
    link_listen: Option<String>,
    /// CA certificate (PEM) that peers' link certificates must chain to.
    #[arg(long, requires_all = ["link_cert", "link_key"])]
    link_ca: Option<PathBuf>,
    /// This broker's link certificate chain (PEM).
    #[arg(long, requires_all = ["link_ca", "link_key"])]
    link_cert: Option<PathBuf>,
    /// This broker's link private key (PEM).
    #[arg(long, requires_all = ["link_ca", "link_cert"])]
    link_key: Option<PathBuf>,
    /// QUIC congestion controller of this broker's links: `bbr` (default; holds its rate under
    /// random WAN loss) or `cubic` (loss-based, like TCP).
    #[arg(long, default_value = "bbr")]
    link_congestion: mirror_protocol::Congestion,
    /// Fault injection: a file holding a clock offset in milliseconds, re-read every 100 ms
    /// and added to the broker's clock (the chaos suite's clock jumps).
    #[arg(long, hide = true)]
    debug_clock_file: Option<PathBuf>,
    /// Test knob: the link protocol versions this agent speaks, `MIN-MAX`.
    #[arg(long, hide = true)]
    link_protocol_versions: Option<String>,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9644";

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Recover (as on start-up) and then fully verify every partition log: CRC-32C of every
    /// batch, offset contiguity and index entries. Run it on a stopped broker's data dir.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Process-wide settings a broker needs, applied before any thread starts.
fn tune_process() {
    // One open file per partition (its active segment) plus sockets: raise the soft limit on
    // open files to the hard limit, so a broker is not capped at ~1 000 partitions.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("warning: could not raise the open-file limit");
            }
        }
    }
    // Fetch responses use buffers of up to a few MiB. By default glibc maps each one freshly
    // (above its mmap threshold) or trims it back to the kernel when freed (above its trim
    // threshold), so every fetch page-faults its buffers in again: measured 100-470 k faults
    // per GB consumed and 0.75-0.95 GB/s. Keeping them on the heap: ~100 faults, 1.2 GB/s.
    // SAFETY: mallopt changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tune_process();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG").unwrap_or_else(|_| {
                // The demo prints its own status lines; only problems are logged.
                let level = if matches!(cli.command, Command::Demo(_)) {
                    "warn"
                } else {
                    "info"
                };
                tracing_subscriber::EnvFilter::new(level)
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Broker(args) => runtime.block_on(run_broker(args)),
        Command::Log {
            command: LogCommand::Verify { data_dir },
        } => runtime.block_on(verify(data_dir)),
        Command::Link { admin, command } => runtime.block_on(cli::run_link(&admin, command)),
        Command::Mirror { admin, command } => runtime.block_on(cli::run_mirror(&admin, command)),
        Command::Certs {
            command: CertsCommand::Generate(args),
        } => certs::generate(&args),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}

fn split_host_port(addr: &str) -> Result<(String, i32)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("`{addr}` is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("`{addr}`: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port as i32))
}

async fn run_broker(args: BrokerArgs) -> Result<()> {
    let listen: SocketAddr = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("cannot resolve --listen {}", args.listen))?
        .next()
        .with_context(|| format!("--listen {} resolves to no address", args.listen))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let (host, port) = match &args.advertise {
        Some(a) => split_host_port(a)?,
        None => (bound.ip().to_string(), bound.port() as i32),
    };
    if args.default_partitions < 1 {
        bail!("--default-partitions must be at least 1");
    }
    let mut config = BrokerConfig::new(args.data_dir.clone(), host.clone(), port);
    config.node_id = args.node_id;
    config.cluster_id = args.cluster_id.clone();
    config.fsync = args.fsync;
    config.auto_create_topics = args.auto_create_topics;
    config.default_partitions = args.default_partitions;
    config.retention_check_interval = Duration::from_millis(args.retention_check_ms.max(1));
    config.offsets_retention =
        Duration::from_secs(args.offsets_retention_minutes.saturating_mul(60));
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await?
        .with_context(|| format!("cannot open data dir {}", args.data_dir.display()))?;
    broker.spawn_background_tasks();
    if let Some(path) = args.debug_clock_file.clone() {
        tracing::warn!(file = %path.display(), "clock offset injection enabled (testing only)");
        tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                let offset = tokio::fs::read_to_string(&path)
                    .await
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                if offset != last {
                    tracing::warn!(offset_ms = offset, "clock jump injected");
                    broker_core::broker::set_clock_offset_ms(offset);
                    last = offset;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let limits = ServerLimits {
        max_frame_bytes: args.max_frame_bytes,
        ..ServerLimits::default()
    };
    let links = start_link_agent(&broker, &args).await?;
    println!(
        "strait broker listening on {bound} (advertised {host}:{port}), data dir {}, fsync {}, cluster id {}, node {}, {} topics{}{}",
        args.data_dir.display(),
        broker.config.fsync,
        broker.cluster_id,
        broker.config.node_id,
        broker.topics().len(),
        links
            .admin
            .map(|a| format!(", admin API on http://{a}"))
            .unwrap_or_default(),
        links
            .link_listen
            .map(|a| format!(", links served on {a}/udp"))
            .unwrap_or_default(),
    );
    std::io::stdout().flush().ok();
    let manager = links.manager.clone();
    server::serve(broker, listener, limits, async move {
        shutdown_signal().await;
        // Links stop before the broker closes its partitions.
        manager.shutdown();
    })
    .await
    .context("closing the broker")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The link agent and admin API of a running broker.
pub struct LinkAgentHandle {
    pub manager: std::sync::Arc<agent::LinkManager>,
    pub admin: Option<SocketAddr>,
    pub link_listen: Option<SocketAddr>,
}

fn parse_versions(text: &str) -> Result<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = lo.trim().parse().context("bad --link-protocol-versions")?;
    let hi: u16 = hi.trim().parse().context("bad --link-protocol-versions")?;
    if lo > hi {
        bail!("--link-protocol-versions: {lo} > {hi}");
    }
    Ok((lo, hi))
}

/// Serves the admin HTTP API (links, mirrors, `/metrics`) for `manager` on `listener`, in the
/// background, until the process ends.
fn spawn_admin_api(listener: tokio::net::TcpListener, manager: std::sync::Arc<agent::LinkManager>) {
    let control: std::sync::Arc<dyn model::LinkControl> = manager.clone();
    let metrics: admin::MetricsRenderer = std::sync::Arc::new(move || {
        use model::LinkControl as _;
        let mut out = String::new();
        metrics::render_links(&manager.list_links(), &mut out);
        out
    });
    tokio::spawn(async move {
        if let Err(e) = admin::serve(listener, control, metrics, std::future::pending()).await {
            tracing::error!(error = format!("{e:#}"), "admin API stopped");
        }
    });
}

/// Starts the link manager, the link listener and the admin API for `broker`.
async fn start_link_agent(
    broker: &std::sync::Arc<Broker>,
    args: &BrokerArgs,
) -> Result<LinkAgentHandle> {
    let identity = match (&args.link_ca, &args.link_cert, &args.link_key) {
        (Some(ca), Some(cert), Some(key)) => Some(agent::load_identity(ca, cert, key)?),
        _ => None,
    };
    let mut options = agent::AgentOptions {
        identity,
        congestion: args.link_congestion,
        ..agent::AgentOptions::default()
    };
    if let Some(v) = &args.link_protocol_versions {
        options.versions = parse_versions(v)?;
    }
    let manager = agent::LinkManager::open(broker.clone(), options)?;
    let link_listen = match &args.link_listen {
        Some(addr) => {
            let addr = resolve(addr).await?;
            Some(manager.listen(addr)?)
        }
        None => None,
    };
    let admin = if args.admin_listen == "none" {
        None
    } else {
        let addr = resolve(&args.admin_listen).await?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr()?;
                spawn_admin_api(listener, manager.clone());
                Some(bound)
            }
            Err(e) if args.admin_listen == DEFAULT_ADMIN => {
                tracing::warn!(address = %addr, error = %e, "admin API not started (the default address is taken; pass --admin-listen)");
                None
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen on --admin-listen {addr}"))
            }
        }
    };
    Ok(LinkAgentHandle {
        manager,
        admin,
        link_listen,
    })
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
}

async fn verify(data_dir: PathBuf) -> Result<()> {
    if !data_dir.join("meta.properties").exists() {
        bail!(
            "{} is not a strait data dir (no meta.properties)",
            data_dir.display()
        );
    }
    let dir = data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let stored = std::fs::read_to_string(dir.join("meta.properties")).unwrap_or_default();
        let node_id = stored
            .lines()
            .find_map(|l| l.strip_prefix("node.id="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        let mut config = BrokerConfig::new(dir.clone(), "127.0.0.1".into(), 0);
        config.node_id = node_id;
        let broker = Broker::open(config)
            .with_context(|| format!("cannot open data dir {}", dir.display()))?;
        let mut failures = 0;
        for topic in broker.topics() {
            for p in topic.partitions() {
                match p.verify() {
                    Ok(r) => println!(
                        "ok {}-{}: {} segments, {} batches, {} records, {} bytes",
                        topic.name, p.index, r.segments, r.batches, r.records, r.bytes
                    ),
                    Err(e) => {
                        failures += 1;
                        println!("CORRUPT {}-{}: {e}", topic.name, p.index);
                    }
                }
            }
        }
        broker.shutdown()?;
        if failures > 0 {
            bail!("{failures} partition logs failed verification");
        }
        Ok(())
    })
    .await?
}
