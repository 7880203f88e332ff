//! `strait demo`: two embedded brokers, "east" and "west", in this process, linked over QUIC
//! on loopback. A sample stream of JSON orders is produced to east; the link mirrors it to west
//! at the same offsets; once a second the demo prints both sides' end offsets, the lag and the
//! wire-vs-source byte ratio. Ctrl-C (or `--duration`) stops it cleanly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker_core::broker::NewTopic;
use broker_core::config::TopicConfig;
use broker_core::server::{self, ServerLimits};
use broker_core::{Broker, BrokerConfig, FsyncPolicy};
use clap::Args;
use tokio::sync::oneshot;

use crate::agent::{AgentOptions, LinkManager};
use crate::model::{LinkControl, LinkSpec, LinkState, TopicSelection};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where east's and west's data go (default: a new temporary directory, removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Records per second produced to east.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

/// One embedded broker: Kafka listener, link manager, admin API.
struct Region {
    name: &'static str,
    broker: Arc<Broker>,
    kafka: std::net::SocketAddr,
    links: Arc<LinkManager>,
    link_addr: Option<std::net::SocketAddr>,
    admin: Option<std::net::SocketAddr>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), broker_core::BrokerError>>,
}

async fn start_region(
    name: &'static str,
    dir: &std::path::Path,
    certs: &std::path::Path,
    serve_links: bool,
) -> Result<Region> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kafka = listener.local_addr()?;
    let mut config = BrokerConfig::new(dir.join(name), "127.0.0.1".into(), kafka.port() as i32);
    config.fsync = FsyncPolicy::Always;
    config.cluster_id = Some(format!("strait-demo-{name}"));
    let broker = tokio::task::spawn_blocking(move || Broker::open(config)).await??;
    broker.spawn_background_tasks();
    let identity = crate::agent::load_identity(
        &certs.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )?;
    let links = LinkManager::open(
        broker.clone(),
        AgentOptions {
            identity: Some(identity),
            ..AgentOptions::default()
        },
    )?;
    let link_addr = if serve_links {
        Some(links.listen("127.0.0.1:0".parse()?)?)
    } else {
        None
    };
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = Some(admin_listener.local_addr()?);
    crate::spawn_admin_api(admin_listener, links.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let manager = links.clone();
    let server = tokio::spawn(server::serve(
        broker.clone(),
        listener,
        ServerLimits::default(),
        async move {
            let _ = stopped.await;
            manager.shutdown();
        },
    ));
    Ok(Region {
        name,
        broker,
        kafka,
        links,
        link_addr,
        admin,
        stop,
        server,
    })
}

impl Region {
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.server
            .await
            .context("broker task")?
            .with_context(|| format!("closing {}", self.name))?;
        Ok(())
    }
}

/// A JSON order; similar records compress well, as real event streams do.
fn sample_order(seq: u64) -> Vec<u8> {
    const ITEMS: [&str; 6] = [
        "espresso",
        "flat white",
        "croissant",
        "bagel",
        "tea",
        "muffin",
    ];
    const CITIES: [&str; 4] = ["Lisbon", "Toronto", "Osaka", "Nairobi"];
    format!(
        r#"{{"order_id":{seq},"customer":"c-{:05}","item":"{}","quantity":{},"price_cents":{},"city":"{}","status":"placed"}}"#,
        seq.wrapping_mul(7919) % 50_000,
        ITEMS[(seq % 6) as usize],
        1 + seq % 3,
        250 + (seq * 37) % 900,
        CITIES[(seq % 4) as usize],
    )
    .into_bytes()
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.partitions < 1 || args.rate == 0 {
        bail!("--partitions and --rate must be positive");
    }
    let temp = args.data_dir.is_none();
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::certs::generate_into(&certs, &["east".to_string(), "west".to_string()], &[])?;
    }
    let result = run_in(&dir, &certs, &args).await;
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(dir: &std::path::Path, certs: &std::path::Path, args: &DemoArgs) -> Result<()> {
    let east = start_region("east", dir, certs, true).await?;
    let west = start_region("west", dir, certs, false).await?;
    let topic = "demo.orders";
    if east.broker.topic(topic).is_none() {
        east.broker.create_topic(NewTopic {
            name: topic.into(),
            partitions: args.partitions,
            config: TopicConfig::default(),
        })?;
    }
    let link = "east-to-west";
    if west.links.link_status(link).is_err() {
        west.links.create_link(LinkSpec {
            name: link.into(),
            source_addr: east.link_addr.context("east serves no links")?.to_string(),
            server_name: "localhost".into(),
            topics: TopicSelection {
                prefixes: vec!["demo.".into()],
                ..TopicSelection::default()
            },
            mode: Default::default(),
            zstd_level: crate::model::default_zstd_level(),
            batch_max_bytes: crate::model::default_batch_max_bytes(),
            linger_ms: crate::model::default_linger_ms(),
            rtt_ms: 10,
            bandwidth_mbit: 1000,
            streams: 4,
            paused: false,
            dial_destination: None,
            on_divergence: Default::default(),
        })?;
    }
    println!(
        "Strait demo: two regions on loopback, data in {}",
        dir.display()
    );
    println!(
        "  east: Kafka on {}, links served on {}/udp, admin http://{}",
        east.kafka,
        east.link_addr.map(|a| a.to_string()).unwrap_or_default(),
        east.admin.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  west: Kafka on {}, admin http://{}  (try: strait link status {link} --admin {})",
        west.kafka,
        west.admin.map(|a| a.to_string()).unwrap_or_default(),
        west.admin.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  producing ~{} JSON orders/s to east's `{topic}` ({} partitions); link `{link}` mirrors `demo.*` to west at the same offsets. Ctrl-C stops.",
        args.rate, args.partitions
    );
    let producer = tokio::spawn(produce(east.broker.clone(), topic, args.rate));
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut caught_up_at_end = false;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => { println!("\nstopping (Ctrl-C)"); break; }
            _ = ticker.tick() => {}
        }
        let line = status_line(&east, &west, topic, link);
        print!("\r{line}");
        std::io::stdout().flush().ok();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            println!();
            break;
        }
    }
    producer.abort();
    // Let the link catch up with the last records (bounded), so the summary shows equal logs.
    for _ in 0..50 {
        if end_offsets(&east.broker, topic) == end_offsets(&west.broker, topic) {
            caught_up_at_end = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{}", status_line(&east, &west, topic, link));
    let (e, w) = (
        end_offsets(&east.broker, topic),
        end_offsets(&west.broker, topic),
    );
    println!(
        "east end offsets {e:?}\nwest end offsets {w:?}\n{}",
        if caught_up_at_end {
            "west holds every record of east, at the same offsets."
        } else {
            "west had not caught up when the demo stopped."
        }
    );
    west.stop().await?;
    east.stop().await?;
    if !caught_up_at_end {
        bail!("the mirror did not catch up within 5 s of stopping the producer");
    }
    Ok(())
}

fn end_offsets(broker: &Broker, topic: &str) -> Vec<i64> {
    broker
        .topic(topic)
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| p.offsets().high_watermark)
                .collect()
        })
        .unwrap_or_default()
}

fn status_line(east: &Region, west: &Region, topic: &str, link: &str) -> String {
    let e: i64 = end_offsets(&east.broker, topic).iter().sum();
    let w: i64 = end_offsets(&west.broker, topic).iter().sum();
    match west.links.link_status(link) {
        Ok(s) => {
            let state = match &s.state {
                LinkState::Active => "active".to_string(),
                LinkState::Paused => "paused".to_string(),
                LinkState::Connecting(r) => format!("connecting {}", r.clone().unwrap_or_default()),
                LinkState::Failed(r) => format!("FAILED {r}"),
            };
            let lag_ms = s.partitions.iter().map(|p| p.lag_ms).max().unwrap_or(0);
            let ratio = if s.source_bytes > 0 {
                s.wire_bytes as f64 / s.source_bytes as f64
            } else {
                0.0
            };
            format!(
                "east {e:>9} records | west {w:>9} | lag {:>6} records {:>5} ms | {:>6.2} MB/s | wire/source {:.2} | link {state}   ",
                (e - w).max(0),
                lag_ms,
                s.bytes_per_sec / 1e6,
                ratio
            )
        }
        Err(err) => format!("link status unavailable: {err}"),
    }
}

/// Produces sample orders to every partition of `topic` at about `rate` records per second.
async fn produce(broker: Arc<Broker>, topic: &'static str, rate: u64) {
    let Some(t) = broker.topic(topic) else { return };
    let partitions = t.partitions();
    let tick = Duration::from_millis(50);
    let per_tick = (rate / 20).max(1);
    let mut seq = 0u64;
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        for (i, p) in partitions.iter().enumerate() {
            let n = per_tick / partitions.len() as u64
                + u64::from((i as u64) < per_tick % partitions.len() as u64);
            if n == 0 {
                continue;
            }
            let values: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|k| {
                    let s = seq + k;
                    (
                        format!("customer-{}", s % 1000).into_bytes(),
                        sample_order(s),
                    )
                })
                .collect();
            seq += n;
            let records: Vec<(Option<&[u8]>, &[u8])> = values
                .iter()
                .map(|(k, v)| (Some(k.as_slice()), v.as_slice()))
                .collect();
            let batch =
                broker_core::batch::build_uncompressed(&records, broker_core::broker::now_ms());
            let config = t.config();
            match p.append_produced(batch, &config, broker.config.fsync, &broker.data_arrived) {
                Ok(out) => {
                    let _ = p
                        .wait_durable(out.end_offset, broker.config.fsync, &broker.data_arrived)
                        .await;
                }
                Err(e) => {
                    eprintln!("\nproducing to east failed: {e}");
                    return;
                }
            }
        }
    }
}
