//! `strait-linkbench`: Strait's cluster link against the alternatives, through the same
//! emulated WAN path, in one run (method: research/anchors-quality.md §B.3 - every variant in
//! the same invocation, ratios next to absolutes).
//!
//! Per loss setting (default 0 % and 0.5 %, 80 ms RTT via `strait-chaos`):
//! * (a) **link**: a fresh destination broker mirrors a pre-loaded topic from the source broker
//!   over QUIC through the UDP relay; time from `link create` to the last offset on the
//!   destination.
//! * (b) **relay**: the MirrorMaker design - a librdkafka consumer reads the source through the
//!   TCP relay (the source advertises the relay's address) and a librdkafka producer writes to a
//!   fresh local broker (acks=all); time until every record is acknowledged.
//! * (c) **quinn**: a raw quinn bulk transfer of the same byte count, one stream, the same
//!   transport settings, through the same UDP relay: the ceiling.
//!
//! Then, with no loss: wire bytes vs source bytes for compressed (lz4) and uncompressed JSON
//! batches; end-to-end lag percentiles (hdrhistogram) at half the link's measured throughput;
//! and optionally (`--backlog-gb`) the destination's peak memory while it works off a backlog.
//! Every process is started by this binary and stopped by PID.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(
    name = "strait-linkbench",
    about = "Strait link vs relay vs raw quinn over an emulated WAN"
)]
struct Args {
    /// The `strait` binary.
    #[arg(long, default_value = "target/release/strait")]
    strait: PathBuf,
    /// The `strait-chaos` binary (WAN emulator).
    #[arg(long, default_value = "target/release/strait-chaos")]
    chaos: PathBuf,
    /// Emulated round-trip time (half each way).
    #[arg(long, default_value_t = 80)]
    rtt_ms: u64,
    /// Loss rates to run, comma separated (fractions).
    #[arg(long, default_value = "0,0.005")]
    losses: String,
    /// Megabytes of record values per throughput run.
    #[arg(long, default_value_t = 256)]
    mb: u64,
    /// Rounds per variant (medians reported).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of the end-to-end lag run (0 skips it).
    #[arg(long, default_value_t = 20)]
    lag_seconds: u64,
    /// Gigabytes of backlog for the memory run (0 skips it).
    #[arg(long, default_value_t = 0)]
    backlog_gb: u64,
    /// Skip the relay baseline above this many seconds per run (it is slow under loss).
    #[arg(long, default_value_t = 600)]
    relay_timeout_s: u64,
    /// QUIC congestion controller for the link and the raw quinn transfer (bbr or cubic).
    #[arg(long, default_value = "bbr")]
    congestion: mirror_protocol::Congestion,
    /// Brokers' fsync policy (always, interval:MS, never).
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Work directory (data, certs, logs); default a new temp dir.
    #[arg(long)]
    work: Option<PathBuf>,
}

// ---------------------------------------------------------------- processes

/// A child process this bench started; stopped (by its PID) when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `strait broker`.
struct BrokerProc {
    proc: Proc,
    kafka: String,
    admin: String,
    link: Option<String>,
}

/// Starts `strait broker` with data in `work/data/<name>`; `east` uses the east certificate,
/// every other broker the west one.
fn start_broker(
    args: &Args,
    work: &Path,
    name: &str,
    link_listen: bool,
    advertise: Option<&str>,
) -> Result<BrokerProc> {
    let cert = if name == "east" { "east" } else { "west" };
    let kafka = format!("127.0.0.1:{}", free_tcp_port()?);
    let admin = format!("127.0.0.1:{}", free_tcp_port()?);
    let link = if link_listen {
        Some(format!("127.0.0.1:{}", free_udp_port()?))
    } else {
        None
    };
    let certs = work.join("certs");
    let mut cmd = Command::new(&args.strait);
    cmd.arg("broker")
        .arg("--data-dir")
        .arg(work.join("data").join(name))
        .args([
            "--listen",
            &kafka,
            "--admin-listen",
            &admin,
            "--fsync",
            &args.fsync,
        ])
        .arg("--link-congestion")
        .arg(format!("{:?}", args.congestion).to_lowercase())
        .arg("--link-ca")
        .arg(certs.join("ca.pem"))
        .arg("--link-cert")
        .arg(certs.join(format!("{cert}.pem")))
        .arg("--link-key")
        .arg(certs.join(format!("{cert}.key")));
    if let Some(l) = &link {
        cmd.args(["--link-listen", l]);
    }
    if let Some(a) = advertise {
        cmd.args(["--advertise", a]);
    }
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", args.strait.display()))?;
    let stdout = child.stdout.take().context("broker stdout")?;
    let proc = Proc {
        child,
        name: format!("broker {name}"),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("broker {name} printed no startup line"))?;
    if !line.contains("listening") {
        bail!("broker {name}: unexpected startup line {line}");
    }
    Ok(BrokerProc {
        proc,
        kafka,
        admin,
        link,
    })
}

/// Starts the WAN emulator relaying `kind` ("udp"/"tcp") from a new port to `target`.
fn start_relay(
    args: &Args,
    work: &Path,
    kind: &str,
    target: &str,
    loss: f64,
) -> Result<(Proc, String)> {
    let listen = if kind == "udp" {
        format!("127.0.0.1:{}", free_udp_port()?)
    } else {
        format!("127.0.0.1:{}", free_tcp_port()?)
    };
    start_relay_at(args, work, kind, &listen, target, loss)
}

/// Starts the WAN emulator relaying `kind` ("udp"/"tcp") from `listen` to `target`.
fn start_relay_at(
    args: &Args,
    work: &Path,
    kind: &str,
    listen: &str,
    target: &str,
    loss: f64,
) -> Result<(Proc, String)> {
    let settings = format!(
        r#"{{"delay_ms": {}, "loss": {loss}}}"#,
        args.rtt_ms as f64 / 2.0
    );
    let log =
        std::fs::File::create(work.join(format!("relay-{kind}-{}.log", listen.replace(':', "_"))))?;
    let child = Command::new(&args.chaos)
        .args([
            kind,
            "--listen",
            listen,
            "--target",
            target,
            "--settings",
            &settings,
            "--seed",
            "7",
        ])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", args.chaos.display()))?;
    let proc = Proc {
        child,
        name: format!("{kind} relay"),
    };
    if kind == "tcp" {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() {
            if Instant::now() > deadline {
                bail!("tcp relay on {listen} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok((proc, listen.to_string()))
}

/// Resident and peak resident memory of a process, in MiB (from /proc).
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---------------------------------------------------------------- admin API (HTTP/1.1)

fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("admin API {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text)?;
    let (head, payload) = text.split_once("\r\n\r\n").context("bad HTTP answer")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP status line")?;
    let json = serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
    Ok((code, json))
}

// ---------------------------------------------------------------- data

/// A JSON-like record of about 300 bytes; similar records, as real event streams are.
fn record(seq: u64) -> (String, String) {
    const ITEMS: [&str; 6] = [
        "espresso",
        "flat white",
        "croissant",
        "bagel",
        "tea",
        "muffin",
    ];
    const CITIES: [&str; 5] = ["Lisbon", "Toronto", "Osaka", "Nairobi", "Lima"];
    let key = format!("customer-{:05}", seq.wrapping_mul(7919) % 50_000);
    let value = format!(
        r#"{{"order_id":{seq},"customer":"{key}","item":"{}","quantity":{},"price_cents":{},"city":"{}","status":"placed","channel":"mobile","ts":{},"note":"leave at the front desk, ring twice"}}"#,
        ITEMS[(seq % 6) as usize],
        1 + seq % 4,
        250 + (seq * 37) % 900,
        CITIES[(seq % 5) as usize],
        1_700_000_000_000u64 + seq * 13,
    );
    (key, value)
}

/// Produces `mb` megabytes of record values to `topic` (`partitions` partitions, created by
/// auto-create on first produce) with `compression`; returns the end offset per partition.
fn load(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    mb: u64,
    compression: &str,
) -> Result<BTreeMap<i32, i64>> {
    create_topic(bootstrap, topic, partitions)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", compression)
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let target = mb * 1_000_000;
    let mut bytes = 0u64;
    let mut seq = 0u64;
    while bytes < target {
        let (key, value) = record(seq);
        let partition = (seq % partitions as u64) as i32;
        let mut rec = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition(partition);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        bytes += value.len() as u64;
        seq += 1;
        if seq.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    end_offsets(bootstrap, topic, partitions)
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))?;
    for r in results {
        if let Err((t, e)) = r {
            bail!("creating {t}: {e}");
        }
    }
    Ok(())
}

fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strait-linkbench-offsets")
        .create()?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        out.insert(p, high);
    }
    Ok(out)
}

// ---------------------------------------------------------------- (a) the link

struct LinkRun {
    seconds: f64,
    source_bytes: u64,
    wire_bytes: u64,
}

/// Creates a link on `dest` mirroring `topic` from `source_link_addr` and waits until the
/// destination holds every offset in `expected`.
fn run_link(
    dest: &BrokerProc,
    name: &str,
    source_link_addr: &str,
    topic: &str,
    expected: &BTreeMap<i32, i64>,
    rtt_ms: u64,
    timeout: Duration,
) -> Result<LinkRun> {
    let spec = serde_json::json!({
        "name": name,
        "source_addr": source_link_addr,
        "topics": {"names": [topic]},
        "rtt_ms": rtt_ms,
        "bandwidth_mbit": 1000,
    });
    let start = Instant::now();
    let (code, body) = http(&dest.admin, "POST", "/v1/links", Some(&spec.to_string()))?;
    if code != 201 {
        bail!("link create failed: HTTP {code}: {body}");
    }
    loop {
        let (_, status) = http(&dest.admin, "GET", &format!("/v1/links/{name}"), None)?;
        let done = status["partitions"].as_array().is_some_and(|parts| {
            expected.iter().all(|(p, end)| {
                parts.iter().any(|x| {
                    x["topic"] == topic
                        && x["partition"].as_i64() == Some(i64::from(*p))
                        && x["destination_end_offset"].as_i64() >= Some(*end)
                })
            })
        });
        if done {
            return Ok(LinkRun {
                seconds: start.elapsed().as_secs_f64(),
                source_bytes: status["source_bytes"].as_u64().unwrap_or(0),
                wire_bytes: status["wire_bytes"].as_u64().unwrap_or(0),
            });
        }
        if start.elapsed() > timeout {
            bail!("link did not catch up within {timeout:?}: {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------- (b) the relay

/// Consume-then-produce relay (MirrorMaker's design) with librdkafka defaults for fetching.
fn run_relay(
    source_bootstrap: &str,
    dest_bootstrap: &str,
    topic: &str,
    expected: &BTreeMap<i32, i64>,
    compression: &str,
    timeout: Duration,
) -> Result<f64> {
    let total: i64 = expected.values().sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", source_bootstrap)
        .set("group.id", "strait-linkbench-relay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", dest_bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", compression)
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let start = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in expected.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut copied = 0i64;
    while copied < total {
        if start.elapsed() > timeout {
            bail!("relay copied {copied} of {total} records within {timeout:?}");
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg?;
        let mut rec = BaseRecord::to(topic).partition(msg.partition());
        if let Some(k) = msg.key() {
            rec = rec.key(k);
        }
        if let Some(v) = msg.payload() {
            rec = rec.payload(v);
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            rec = rec.timestamp(ts);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        copied += 1;
        if copied % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(timeout.saturating_sub(start.elapsed()))?;
    Ok(start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------- (c) raw quinn

/// One stream of `bytes` through `relay` to a quinn server at `server_addr` (already bound by
/// `endpoint`), with the link's transport settings; seconds until the server confirmed.
async fn run_quinn(
    server: quinn::Endpoint,
    relay: SocketAddr,
    identity: &mirror_protocol::Identity,
    settings: &mirror_protocol::TransportSettings,
    bytes: u64,
) -> Result<f64> {
    let serve = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut total = 0u64;
        while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
            total += chunk.bytes.len() as u64;
        }
        send.write_all(&total.to_be_bytes()).await?;
        send.finish()?;
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        anyhow::Ok(total)
    });
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(mirror_protocol::client_config(identity, settings)?);
    let conn = client.connect(relay, "localhost")?.await?;
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let chunk = bytes::Bytes::from(vec![0x5au8; 1 << 20]);
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await?;
        sent += n as u64;
    }
    send.finish()?;
    let mut answer = [0u8; 8];
    recv.read_exact(&mut answer).await?;
    let secs = start.elapsed().as_secs_f64();
    if u64::from_be_bytes(answer) != bytes {
        bail!(
            "quinn server received {} of {bytes} bytes",
            u64::from_be_bytes(answer)
        );
    }
    conn.close(0u32.into(), b"done");
    serve.await??;
    client.wait_idle().await;
    Ok(secs)
}

// ---------------------------------------------------------------- lag

/// Produces to `topic` on the source at `rate_bytes` per second for `seconds` and reads it on
/// the destination, recording (arrival - record timestamp) per record.
fn run_lag(
    source: &str,
    dest: &str,
    topic: &str,
    partitions: i32,
    rate_bytes: f64,
    seconds: u64,
) -> Result<(Histogram<u64>, Histogram<u64>, f64)> {
    // Let the mirror topic appear and the consumers settle before measuring.
    let warmup = Instant::now() + Duration::from_secs(3);
    let end = warmup + Duration::from_secs(seconds);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_stop = stop.clone();
    let psource = source.to_string();
    let ptopic = topic.to_string();
    let producer = std::thread::spawn(move || -> Result<u64> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &psource)
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()?;
        let start = Instant::now();
        let mut sent_bytes = 0f64;
        let mut seq = 0u64;
        while !producer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let due = start.elapsed().as_secs_f64() * rate_bytes;
            while sent_bytes < due {
                let (key, value) = record(seq);
                let rec = BaseRecord::to(&ptopic)
                    .key(&key)
                    .payload(&value)
                    .partition((seq % partitions as u64) as i32)
                    .timestamp(now_ms());
                if producer.send(rec).is_err() {
                    producer.poll(Duration::from_millis(1));
                    break;
                }
                sent_bytes += value.len() as f64;
                seq += 1;
            }
            producer.poll(Duration::from_millis(1));
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(seq)
    });
    // The same measurement on the source itself: what the link adds is the difference.
    let (esource, etopic) = (source.to_string(), topic.to_string());
    let on_source =
        std::thread::spawn(move || consume_lag(&esource, &etopic, partitions, warmup, end));
    let on_dest = consume_lag(dest, topic, partitions, warmup, end);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let (source_hist, _) = on_source
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    let (dest_hist, bytes) = on_dest?;
    Ok((dest_hist, source_hist, bytes as f64 / seconds as f64))
}

/// Reads `topic` from its end and records (arrival - record timestamp) between `warmup` and
/// `end`; returns the histogram and the value bytes seen.
fn consume_lag(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    warmup: Instant,
    end: Instant,
) -> Result<(Histogram<u64>, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strait-linkbench-lag")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut bytes = 0u64;
    while Instant::now() < end {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) {
            if Instant::now() < warmup {
                continue;
            }
            if let Some(ts) = msg.timestamp().to_millis() {
                hist.saturating_record((now_ms() - ts).max(1) as u64);
                bytes += msg.payload().map_or(0, |p| p.len() as u64);
            }
        }
    }
    Ok((hist, bytes))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let args = Args::parse();
    let work = match &args.work {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("strait-linkbench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    println!("# strait-linkbench: work dir {}", work.display());
    let status = Command::new(&args.strait)
        .args(["certs", "generate", "--force", "--names", "east,west"])
        .arg("--out")
        .arg(work.join("certs"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("strait certs generate failed");
    }
    let certs = work.join("certs");
    let identity = mirror_protocol::Identity::from_pem_files(
        &certs.join("ca.pem"),
        &certs.join("east.pem"),
        &certs.join("east.key"),
    )?;
    let settings = mirror_protocol::TransportSettings {
        rtt: Duration::from_millis(args.rtt_ms),
        bandwidth_bytes_per_sec: 125_000_000,
        congestion: args.congestion,
        ..mirror_protocol::TransportSettings::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let partitions = 6;

    // The source: loaded once, then restarted advertising the TCP relay (for the relay runs).
    let east = start_broker(&args, &work, "east", true, None)?;
    println!(
        "loading {} MB of lz4-compressed and {} MB of uncompressed JSON records into east ...",
        args.mb,
        args.mb / 4
    );
    let lz4 = load(&east.kafka, "bench.lz4", partitions, args.mb, "lz4")?;
    let json = load(
        &east.kafka,
        "bench.json",
        partitions,
        (args.mb / 4).max(1),
        "none",
    )?;
    let lz4_records: i64 = lz4.values().sum();
    drop(east);
    let tcp_relay_port = free_tcp_port()?;
    let tcp_relay_addr = format!("127.0.0.1:{tcp_relay_port}");
    let east = start_broker(&args, &work, "east", true, Some(&tcp_relay_addr))?;
    // start_broker picked a new Kafka port; the relay forwards to it.
    let east_link = east.link.clone().context("east link listener")?;
    let source_bytes_lz4: u64 = dir_bytes(&work.join("data/east/topics/bench.lz4"));
    println!(
        "east: {lz4_records} records, {:.1} MB on disk in bench.lz4",
        source_bytes_lz4 as f64 / 1e6
    );

    let mut report = String::new();
    let mut link_mbps_noloss = Vec::new();
    // loss, link (source MB/s), link (wire MB/s), relay, quinn
    let mut results: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    let losses: Vec<f64> = args
        .losses
        .split(',')
        .map(|l| l.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("--losses: comma-separated fractions, e.g. 0,0.005")?;
    for &loss in &losses {
        let mut link_v = Vec::new();
        let mut link_wire_v = Vec::new();
        let mut relay_v = Vec::new();
        let mut quinn_v = Vec::new();
        for round in 0..args.rounds {
            // (c) raw quinn
            let server = rt.block_on(async {
                quinn::Endpoint::server(
                    mirror_protocol::server_config(&identity, &settings)?,
                    "127.0.0.1:0".parse()?,
                )
                .map_err(anyhow::Error::from)
            })?;
            let server_addr = server.local_addr()?;
            let (relay, relay_addr) =
                start_relay(&args, &work, "udp", &server_addr.to_string(), loss)?;
            let secs = rt.block_on(run_quinn(
                server,
                relay_addr.parse()?,
                &identity,
                &settings,
                source_bytes_lz4,
            ))?;
            drop(relay);
            quinn_v.push(source_bytes_lz4 as f64 / secs / 1e6);
            // (a) the link
            let dest = start_broker(&args, &work, "west", false, None)?;
            let (relay, relay_addr) = start_relay(&args, &work, "udp", &east_link, loss)?;
            let run = run_link(
                &dest,
                "bench",
                &relay_addr,
                "bench.lz4",
                &lz4,
                args.rtt_ms,
                Duration::from_secs(args.relay_timeout_s),
            )?;
            drop(relay);
            drop(dest);
            link_v.push(run.source_bytes as f64 / run.seconds / 1e6);
            link_wire_v.push(run.wire_bytes as f64 / run.seconds / 1e6);
            if loss == 0.0 {
                link_mbps_noloss.push(run.source_bytes as f64 / run.seconds / 1e6);
            }
            // (b) the relay
            let dest = start_broker(&args, &work, "west2", false, None)?;
            create_topic(&dest.kafka, "bench.lz4", partitions)?;
            let (relay, _) =
                start_relay_at(&args, &work, "tcp", &tcp_relay_addr, &east.kafka, loss)?;
            let r = run_relay(
                &tcp_relay_addr,
                &dest.kafka,
                "bench.lz4",
                &lz4,
                "lz4",
                Duration::from_secs(args.relay_timeout_s),
            );
            drop(relay);
            drop(dest);
            let _ = std::fs::remove_dir_all(work.join("data/west2"));
            match r {
                Ok(secs) => relay_v.push(source_bytes_lz4 as f64 / secs / 1e6),
                Err(e) => {
                    println!("relay run failed or timed out: {e:#}");
                    relay_v.push(0.0);
                }
            }
            println!(
                "loss {:.1}% round {round}: link {:.1} MB/s, relay {:.1} MB/s, quinn {:.1} MB/s",
                loss * 100.0,
                link_v.last().copied().unwrap_or(0.0),
                relay_v.last().copied().unwrap_or(0.0),
                quinn_v.last().copied().unwrap_or(0.0)
            );
            clean_wests(&work);
        }
        results.push((
            loss,
            median(&mut link_v),
            median(&mut link_wire_v),
            median(&mut relay_v),
            median(&mut quinn_v),
        ));
    }
    report.push_str(&format!(
        "\n## Throughput, {} MB of lz4 batches ({} records, 6 partitions), {} ms RTT, QUIC congestion control {:?}, medians of {} rounds\n\n| loss | link MB/s (source bytes) | link MB/s on the wire | relay MB/s | raw quinn MB/s | link / relay | link wire / quinn |\n|---|---:|---:|---:|---:|---:|---:|\n",
        source_bytes_lz4 / 1_000_000, lz4_records, args.rtt_ms, args.congestion, args.rounds
    ));
    for (loss, link, link_wire, relay, quinn) in &results {
        report.push_str(&format!(
            "| {:.1} % | {link:.1} | {link_wire:.1} | {relay:.1} | {quinn:.1} | {:.2}x | {:.2} |\n",
            loss * 100.0,
            link / relay,
            link_wire / quinn
        ));
    }

    // Wire bytes vs source bytes, no loss.
    report.push_str("\n## Wire bytes vs source bytes (no loss)\n\n| data | source bytes | wire bytes | ratio |\n|---|---:|---:|---:|\n");
    for (topic, ends) in [("bench.lz4", &lz4), ("bench.json", &json)] {
        let dest = start_broker(&args, &work, "west3", false, None)?;
        let run = run_link(
            &dest,
            "ratio",
            &east_link,
            topic,
            ends,
            args.rtt_ms,
            Duration::from_secs(600),
        )?;
        drop(dest);
        let _ = std::fs::remove_dir_all(work.join("data/west3"));
        report.push_str(&format!(
            "| {topic} | {} | {} | {:.3} |\n",
            run.source_bytes,
            run.wire_bytes,
            run.wire_bytes as f64 / run.source_bytes.max(1) as f64
        ));
    }

    // From here on clients talk to east directly: restart it without the relay's address.
    drop(east);
    let east = start_broker(&args, &work, "east", true, None)?;
    let east_link = east.link.clone().context("east link listener")?;

    // End-to-end lag at half the link's throughput.
    if args.lag_seconds > 0 {
        let max = median(&mut link_mbps_noloss);
        let rate = max / 2.0 * 1e6;
        let dest = start_broker(&args, &work, "west3", false, None)?;
        let (relay, relay_addr) = start_relay(&args, &work, "udp", &east_link, 0.0)?;
        create_topic(&east.kafka, "bench.lag", partitions)?;
        let spec = serde_json::json!({"name": "lag", "source_addr": relay_addr, "topics": {"names": ["bench.lag"]}, "rtt_ms": args.rtt_ms});
        http(&dest.admin, "POST", "/v1/links", Some(&spec.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while end_offsets(&dest.kafka, "bench.lag", partitions).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (hist, source_hist, achieved) = run_lag(
            &east.kafka,
            &dest.kafka,
            "bench.lag",
            partitions,
            rate,
            args.lag_seconds,
        )?;
        let (_, west_peak) = rss_mib(dest.proc.pid());
        drop(relay);
        drop(dest);
        let _ = std::fs::remove_dir_all(work.join("data/west3"));
        let row = |name: &str, h: &Histogram<u64>| {
            format!(
                "| {name} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |\n",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )
        };
        report.push_str(&format!(
            "\n## End-to-end lag (record timestamp -> consumer), {} ms RTT, offered {:.1} MB/s (half of {:.1}), achieved {:.1} MB/s; target p99 on west {} ms\n\n| consumer on | records | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n{}{}\nwest peak RSS during the lag run: {west_peak:.0} MiB\n",
            args.rtt_ms,
            rate / 1e6,
            max,
            achieved / 1e6,
            args.rtt_ms + 50,
            row("east (source, no link: baseline)", &source_hist),
            row("west (through the link)", &hist),
        ));
    }

    // Memory while working off a backlog.
    if args.backlog_gb > 0 {
        println!("loading a {} GB backlog into east ...", args.backlog_gb);
        let ends = load(
            &east.kafka,
            "bench.backlog",
            partitions,
            args.backlog_gb * 1000,
            "none",
        )?;
        let dest = start_broker(&args, &work, "west3", false, None)?;
        let (relay, relay_addr) = start_relay(&args, &work, "udp", &east_link, 0.0)?;
        let pid = dest.proc.pid();
        let east_pid = east.proc.pid();
        let sampler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = sampler_stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = (0f64, 0f64);
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                peak.0 = peak.0.max(rss_mib(pid).0);
                peak.1 = peak.1.max(rss_mib(east_pid).0);
                std::thread::sleep(Duration::from_millis(200));
            }
            (peak, rss_mib(pid).1)
        });
        let run = run_link(
            &dest,
            "backlog",
            &relay_addr,
            "bench.backlog",
            &ends,
            args.rtt_ms,
            Duration::from_secs(3600),
        )?;
        sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ((west_rss, east_rss), west_hwm) = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
        drop(relay);
        drop(dest);
        report.push_str(&format!(
            "\n## Backlog of {:.1} GB mirrored through {} ms RTT in {:.0} s ({:.1} MB/s)\n\nwest (destination agent + broker) peak RSS {west_rss:.0} MiB (VmHWM {west_hwm:.0} MiB); east peak RSS {east_rss:.0} MiB; target < 256 MB\n",
            run.source_bytes as f64 / 1e9,
            args.rtt_ms,
            run.seconds,
            run.source_bytes as f64 / run.seconds / 1e6
        ));
    }
    drop(east);
    println!("{report}");
    std::fs::write(work.join("report.md"), &report)?;
    println!("(report also in {})", work.join("report.md").display());
    Ok(())
}

fn clean_wests(work: &Path) {
    if let Ok(entries) = std::fs::read_dir(work.join("data")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("west") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if p.extension().is_some_and(|x| x == "log") {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}
