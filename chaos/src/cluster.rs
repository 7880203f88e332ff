//! Broker processes for scenarios: a [`Node`] is one `strait broker` with its own data dir and
//! port that can be started, SIGKILLed, restarted on the same data, paused (SIGSTOP) and
//! resumed, optionally advertised through a relay in front of it. Only processes a `Node`
//! started are ever signalled, and dropping a `Node` SIGKILLs its process.
//!
//! A [`LinkPair`] is the two-region set-up of the link scenarios: "east" (the source, serving
//! links on a UDP port) and "west" (the destination, where the link is defined through its
//! admin HTTP API), both `Node`s with test certificates, and a
//! [`crate::wan::udp::UdpRelay`] between west's link agent and east's link port so the WAN can
//! be delayed, lossy or partitioned. It reads both sides' end offsets (Kafka ListOffsets) and
//! the link status (`GET /v1/links/NAME`) and waits, bounded, for west to catch up.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

use crate::faults;
use crate::wan::udp::{UdpRelay, UdpRelayConfig};
use crate::wan::{Settings, WanControl};

/// How long a broker may take to print its startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The line a broker prints on stdout once it accepts connections.
pub const STARTUP_LINE: &str = "strait broker listening on ";

/// Errors of node management.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no strait binary: set STRAIT_BIN or run `cargo build --release -p linker` (looked at {0})"
    )]
    NoBinary(String),
    #[error("broker {name} did not start: {reason}\n--- stderr ---\n{stderr}")]
    StartFailed {
        name: String,
        reason: String,
        stderr: String,
    },
    #[error("broker {0} is not running")]
    NotRunning(String),
    #[error("broker {0} is already running")]
    AlreadyRunning(String),
    #[error("admin request: {0}")]
    Admin(String),
    /// A link operation failed (certificates, admin API, relay, status).
    #[error("link: {0}")]
    Link(String),
    /// A bounded wait ran out.
    #[error("timed out after {waited:?}: {what}")]
    Timeout { what: String, waited: Duration },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// The `strait` binary: `$STRAIT_BIN`, else the workspace's `target/release/strait`, else
/// `target/debug/strait`.
pub fn strait_bin() -> Result<PathBuf, ClusterError> {
    if let Some(p) = std::env::var_os("STRAIT_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ClusterError::NoBinary(p.display().to_string()))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let candidates = [
        workspace.join("target/release/strait"),
        workspace.join("target/debug/strait"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ClusterError::NoBinary(format!("{candidates:?}")))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io_err("local_addr"))?.port())
}

/// How to run a broker.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--fsync` (default `always`).
    pub fsync: String,
    /// Use this data dir (e.g. a size-limited mount) instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Listen on this port (default: a free one).
    pub port: Option<u16>,
    /// `--advertise` (e.g. the address of a relay in front of the broker).
    pub advertise: Option<String>,
    /// Further arguments, verbatim.
    pub extra: Vec<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            fsync: "always".to_string(),
            data_dir: None,
            port: None,
            advertise: None,
            extra: Vec::new(),
        }
    }
}

/// One `strait broker` process on 127.0.0.1.
#[derive(Debug)]
pub struct Node {
    name: String,
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    logs_dir: PathBuf,
    port: u16,
    options: NodeOptions,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    /// Starts a broker and waits for its startup line.
    pub fn start(name: &str, options: NodeOptions) -> Result<Node, ClusterError> {
        let root = tempfile::Builder::new()
            .prefix(&format!("strait-chaos-{name}-"))
            .tempdir()
            .map_err(io_err("create temp dir"))?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| root.path().join("data"));
        let logs_dir = root.path().join("logs");
        fs::create_dir_all(&logs_dir).map_err(io_err("create logs dir"))?;
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut node = Node {
            name: name.to_string(),
            root: Some(root),
            data_dir,
            logs_dir,
            port,
            options,
            child: None,
            starts: 0,
        };
        node.restart()?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:PORT` of the broker itself (not of any relay in front).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process again on the same data dir and port; returns how long it took to
    /// print its startup line (the recovery time of a restart).
    pub fn restart(&mut self) -> Result<Duration, ClusterError> {
        if self.child.is_some() {
            return Err(ClusterError::AlreadyRunning(self.name.clone()));
        }
        self.starts += 1;
        let n = self.starts;
        let stdout_path = self.logs_dir.join(format!("stdout-{n}.log"));
        let stderr_path = self.logs_dir.join(format!("stderr-{n}.log"));
        let mut cmd = Command::new(strait_bin()?);
        cmd.arg("broker")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--fsync")
            .arg(&self.options.fsync);
        if let Some(advertise) = &self.options.advertise {
            cmd.arg("--advertise").arg(advertise);
        }
        cmd.args(&self.options.extra);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).map_err(io_err("create stdout log"))?)
            .stderr(fs::File::create(&stderr_path).map_err(io_err("create stderr log"))?);
        let started = Instant::now();
        let child = cmd.spawn().map_err(io_err("spawn strait broker"))?;
        self.child = Some(child);
        loop {
            let out = fs::read_to_string(&stdout_path).unwrap_or_default();
            if out.lines().any(|l| l.starts_with(STARTUP_LINE)) {
                return Ok(started.elapsed());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(self.start_failed(format!("exited with {status}")));
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                self.kill9()?;
                return Err(
                    self.start_failed(format!("no startup line within {STARTUP_TIMEOUT:?}"))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_failed(&self, reason: String) -> ClusterError {
        ClusterError::StartFailed {
            name: self.name.clone(),
            reason,
            stderr: self.stderr_tail(40),
        }
    }

    /// Whether the process started last still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILLs the process and reaps it (resuming it first if paused is not needed:
    /// SIGKILL works on stopped processes).
    pub fn kill9(&mut self) -> Result<(), ClusterError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| ClusterError::NotRunning(self.name.clone()))?;
        child.kill().map_err(io_err("SIGKILL"))?;
        child.wait().map_err(io_err("reap"))?;
        Ok(())
    }

    /// SIGSTOPs the process.
    pub fn pause(&self) -> Result<(), ClusterError> {
        let pid = self
            .pid()
            .ok_or_else(|| ClusterError::NotRunning(self.name.clone()))?;
        faults::signal(pid, libc::SIGSTOP).map_err(io_err("SIGSTOP"))
    }

    /// SIGCONTs the process.
    pub fn resume(&self) -> Result<(), ClusterError> {
        let pid = self
            .pid()
            .ok_or_else(|| ClusterError::NotRunning(self.name.clone()))?;
        faults::signal(pid, libc::SIGCONT).map_err(io_err("SIGCONT"))
    }

    /// SIGTERMs the process and waits up to 30 s (then SIGKILLs it).
    pub fn terminate(&mut self) -> Result<ExitStatus, ClusterError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| ClusterError::NotRunning(self.name.clone()))?;
        faults::signal(child.id(), libc::SIGTERM).map_err(io_err("SIGTERM"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(io_err("try_wait"))? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().map_err(io_err("reap"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the latest process's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let path = self.logs_dir.join(format!("stderr-{}.log", self.starts));
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(n)..)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("STRAIT_KEEP_DATA").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("[{}] keeping {}", self.name, root.keep().display());
            }
        }
    }
}

/// Creates `topic` with `partitions` partitions (replication factor 1) through `bootstrap`.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), ClusterError> {
    let admin: AdminClient<DefaultClientContext> = crate::workload::client_config(bootstrap)
        .create()
        .map_err(|e| ClusterError::Admin(e.to_string()))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime"))?;
    let results = runtime
        .block_on(admin.create_topics([&new_topic], &options))
        .map_err(|e| ClusterError::Admin(e.to_string()))?;
    for result in results {
        if let Err((name, code)) = result {
            return Err(ClusterError::Admin(format!(
                "CreateTopics {name}: {code:?}"
            )));
        }
    }
    Ok(())
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (all bound at once, so they
/// differ from each other).
pub fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(io_err("bind 127.0.0.1:0")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(io_err("local_addr"))?.port()))
        .collect()
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> Result<u16, ClusterError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(io_err("bind UDP 127.0.0.1:0"))?;
    Ok(socket.local_addr().map_err(io_err("local_addr"))?.port())
}

/// Time allowed to connect to, write to and read from the admin API.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin API answer read (header block plus body).
const MAX_ADMIN_RESPONSE_BYTES: usize = 16 << 20;

/// One HTTP/1.1 request to a broker's admin API (`Connection: close`); returns the status code
/// and the body. The answer is framed by `Content-Length` (else read to the end), bounded in
/// size and time.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClusterError> {
    let socket: SocketAddr = addr
        .parse()
        .map_err(|e| ClusterError::Link(format!("bad admin address {addr:?}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&socket, ADMIN_TIMEOUT)
        .map_err(io_err(format!("connect to the admin API {addr}")))?;
    stream
        .set_read_timeout(Some(ADMIN_TIMEOUT))
        .map_err(io_err("set_read_timeout"))?;
    stream
        .set_write_timeout(Some(ADMIN_TIMEOUT))
        .map_err(io_err("set_write_timeout"))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io_err(format!("send {method} {path}")))?;
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let mut wanted: Option<usize> = None;
    // Bounded by the size cap and the deadline.
    loop {
        if wanted.is_none() {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(raw.get(..end).unwrap_or_default());
                wanted = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                    .map(|length| end + 4 + length);
            }
        }
        if wanted.is_some_and(|total| raw.len() >= total) {
            break;
        }
        if raw.len() > MAX_ADMIN_RESPONSE_BYTES || Instant::now() > deadline {
            return Err(ClusterError::Link(format!(
                "{method} {path}: answer larger than {MAX_ADMIN_RESPONSE_BYTES} bytes or slower than {ADMIN_TIMEOUT:?}"
            )));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(io_err(format!("read the answer to {method} {path}")))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(ClusterError::Link(format!(
            "{method} {path}: no complete HTTP answer: {:?}",
            String::from_utf8_lossy(&raw)
        )));
    };
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default());
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ClusterError::Link(format!("{method} {path}: bad status line {head:?}")))?;
    let body_end = wanted.unwrap_or(raw.len()).min(raw.len());
    let body = raw.get(head_end + 4..body_end).unwrap_or_default();
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// One mirrored partition in a link status (`GET /v1/links/NAME`), the fields scenarios use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPartitionView {
    pub topic: String,
    pub partition: i32,
    /// The source's end offset as last reported to the destination.
    pub source_end_offset: i64,
    /// The destination's log end offset.
    pub destination_end_offset: i64,
    pub lag_records: i64,
    #[serde(default)]
    pub state: String,
}

/// A link status as the admin API answers it, the fields scenarios use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatusView {
    /// `active`, `connecting`, `paused` or `failed`.
    pub state: String,
    /// Why the link is connecting or failed.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Connections made so far.
    #[serde(default)]
    pub connects: u64,
    /// Records received so far.
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub partitions: Vec<LinkPartitionView>,
}

/// How to set up a [`LinkPair`].
#[derive(Debug, Clone)]
pub struct LinkPairOptions {
    /// Name of the link defined on west.
    pub link_name: String,
    /// Topic prefixes the link mirrors.
    pub prefixes: Vec<String>,
    /// `rtt_ms` of the link definition (sizes the QUIC windows).
    pub rtt_ms: u64,
    /// WAN impairments between west's agent (client, `forward`) and east's link port.
    pub wan: Settings,
    /// Seed of the WAN emulator.
    pub seed: u64,
    /// `--fsync` of both brokers.
    pub fsync: String,
    /// Further `strait broker` arguments for east and for west, verbatim.
    pub east_extra: Vec<String>,
    pub west_extra: Vec<String>,
}

impl LinkPairOptions {
    /// Link `east-to-west` mirroring `chaos.*`, 10 ms expected RTT, an unimpaired WAN, fsync
    /// always.
    pub fn new(seed: u64) -> LinkPairOptions {
        LinkPairOptions {
            link_name: "east-to-west".to_string(),
            prefixes: vec!["chaos.".to_string()],
            rtt_ms: 10,
            wan: Settings::default(),
            seed,
            fsync: "always".to_string(),
            east_extra: Vec::new(),
            west_extra: Vec::new(),
        }
    }
}

/// The `--link-*` certificate flags for agent `name` from a `strait certs generate` dir.
fn link_tls_args(certs: &Path, name: &str) -> Vec<String> {
    let path = |file: String| certs.join(file).display().to_string();
    vec![
        "--link-ca".to_string(),
        path("ca.pem".to_string()),
        "--link-cert".to_string(),
        path(format!("{name}.pem")),
        "--link-key".to_string(),
        path(format!("{name}.key")),
    ]
}

/// Two brokers linked over an emulated WAN: east (source) → [`UdpRelay`] → west's link agent
/// (west dials the relay, which forwards to east's link port). Dropping it SIGKILLs both
/// brokers and stops the relay.
pub struct LinkPair {
    /// The source broker (`--link-listen` on a fixed UDP port, kept across restarts).
    pub east: Node,
    /// The destination broker, where the link is defined.
    pub west: Node,
    east_link_addr: SocketAddr,
    east_admin: String,
    west_admin: String,
    options: LinkPairOptions,
    control: Arc<WanControl>,
    relay: UdpRelay,
    east_offsets: BaseConsumer,
    west_offsets: BaseConsumer,
    /// Runs the relay; declared after it so the relay's tasks are stopped first.
    runtime: tokio::runtime::Runtime,
    certs: tempfile::TempDir,
}

impl std::fmt::Debug for LinkPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPair")
            .field("east", &self.east)
            .field("west", &self.west)
            .field("east_link_addr", &self.east_link_addr)
            .field("relay", &self.relay.local_addr())
            .field("west_admin", &self.west_admin)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How long [`LinkPair`] waits for one watermark answer.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls of a bounded wait.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

impl LinkPair {
    /// Makes certificates, starts east and west, and the relay in front of east's link port.
    /// The link itself is created by [`LinkPair::create_link`].
    pub fn start(options: LinkPairOptions) -> Result<LinkPair, ClusterError> {
        let certs = tempfile::Builder::new()
            .prefix("strait-chaos-certs-")
            .tempdir()
            .map_err(io_err("create certs dir"))?;
        let output = Command::new(strait_bin()?)
            .args(["certs", "generate", "--names", "east,west", "--out"])
            .arg(certs.path())
            .output()
            .map_err(io_err("run strait certs generate"))?;
        if !output.status.success() {
            return Err(ClusterError::Link(format!(
                "strait certs generate: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let ports = free_ports(4)?;
        let [east_kafka, west_kafka, east_admin_port, west_admin_port] = ports[..] else {
            return Err(ClusterError::Link("could not pick four ports".to_string()));
        };
        let east_link_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        let east_admin = format!("127.0.0.1:{east_admin_port}");
        let west_admin = format!("127.0.0.1:{west_admin_port}");

        let mut east_extra = link_tls_args(certs.path(), "east");
        east_extra.extend([
            "--link-listen".to_string(),
            east_link_addr.to_string(),
            "--admin-listen".to_string(),
            east_admin.clone(),
        ]);
        east_extra.extend(options.east_extra.iter().cloned());
        let east = Node::start(
            "east",
            NodeOptions {
                fsync: options.fsync.clone(),
                port: Some(east_kafka),
                extra: east_extra,
                ..NodeOptions::default()
            },
        )?;
        let mut west_extra = link_tls_args(certs.path(), "west");
        west_extra.extend(["--admin-listen".to_string(), west_admin.clone()]);
        west_extra.extend(options.west_extra.iter().cloned());
        let west = Node::start(
            "west",
            NodeOptions {
                fsync: options.fsync.clone(),
                port: Some(west_kafka),
                extra: west_extra,
                ..NodeOptions::default()
            },
        )?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-link-relay")
            .enable_all()
            .build()
            .map_err(io_err("tokio runtime"))?;
        let control = WanControl::new(options.wan.clone(), options.seed)
            .map_err(|e| ClusterError::Link(format!("WAN settings: {e}")))?;
        let relay = runtime
            .block_on(UdpRelay::start(
                UdpRelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), east_link_addr),
                Arc::clone(&control),
            ))
            .map_err(|e| ClusterError::Link(format!("UDP relay: {e}")))?;
        let watermarks = |bootstrap: &str| -> Result<BaseConsumer, ClusterError> {
            crate::workload::client_config(bootstrap)
                .create()
                .map_err(|e| ClusterError::Admin(e.to_string()))
        };
        Ok(LinkPair {
            east_offsets: watermarks(&east.bootstrap())?,
            west_offsets: watermarks(&west.bootstrap())?,
            east,
            west,
            east_link_addr,
            east_admin,
            west_admin,
            options,
            control,
            relay,
            runtime,
            certs,
        })
    }

    /// The WAN between the agents: partition, heal, change settings, read counters.
    pub fn wan(&self) -> &Arc<WanControl> {
        &self.control
    }

    /// Where west's agent sends (the relay); the link's `source_addr`.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay.local_addr()
    }

    /// East's link listener (behind the relay).
    pub fn east_link_addr(&self) -> SocketAddr {
        self.east_link_addr
    }

    /// East's admin API address.
    pub fn east_admin(&self) -> &str {
        &self.east_admin
    }

    /// West's admin API address (where the link is defined).
    pub fn west_admin(&self) -> &str {
        &self.west_admin
    }

    /// The directory holding `ca.pem` and the agents' certificates and keys.
    pub fn certs_dir(&self) -> &Path {
        self.certs.path()
    }

    /// The options the pair was started with.
    pub fn options(&self) -> &LinkPairOptions {
        &self.options
    }

    /// Defines the link on west (`POST /v1/links`) with the relay as its source address.
    pub fn create_link(&self) -> Result<LinkStatusView, ClusterError> {
        let spec = serde_json::json!({
            "name": self.options.link_name,
            "source_addr": self.relay_addr().to_string(),
            "topics": { "prefixes": self.options.prefixes },
            "rtt_ms": self.options.rtt_ms,
        });
        let (status, body) = http_request(
            &self.west_admin,
            "POST",
            "/v1/links",
            Some(&spec.to_string()),
        )?;
        if status != 201 {
            return Err(ClusterError::Link(format!(
                "POST /v1/links answered {status}: {body}"
            )));
        }
        serde_json::from_str(&body)
            .map_err(|e| ClusterError::Link(format!("link status JSON: {e}: {body}")))
    }

    /// The link's status JSON as west's admin API answers it.
    pub fn link_status_json(&self) -> Result<String, ClusterError> {
        let path = format!("/v1/links/{}", self.options.link_name);
        let (status, body) = http_request(&self.west_admin, "GET", &path, None)?;
        if status != 200 {
            return Err(ClusterError::Link(format!(
                "GET {path} answered {status}: {body}"
            )));
        }
        Ok(body)
    }

    /// The link's status (`GET /v1/links/NAME` on west).
    pub fn link_status(&self) -> Result<LinkStatusView, ClusterError> {
        let body = self.link_status_json()?;
        serde_json::from_str(&body)
            .map_err(|e| ClusterError::Link(format!("link status JSON: {e}: {body}")))
    }

    /// Waits until the link reports `active`; returns how long that took.
    pub fn wait_link_active(&self, timeout: Duration) -> Result<Duration, ClusterError> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match self.link_status() {
                Ok(status) if status.state == "active" => return Ok(started.elapsed()),
                Ok(status) => last = format!("{status:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Err(ClusterError::Timeout {
            what: format!("link {} active; last status {last}", self.options.link_name),
            waited: started.elapsed(),
        })
    }

    /// East's high watermarks of `topic`, partitions `0..partitions` (Kafka ListOffsets).
    pub fn east_end_offsets(&self, topic: &str, partitions: i32) -> Result<Vec<i64>, ClusterError> {
        end_offsets(&self.east_offsets, "east", topic, partitions)
    }

    /// West's high watermarks of the mirror topic `topic`.
    pub fn west_end_offsets(&self, topic: &str, partitions: i32) -> Result<Vec<i64>, ClusterError> {
        end_offsets(&self.west_offsets, "west", topic, partitions)
    }

    /// Waits until west's end offset of every partition is at least `target`'s; returns how
    /// long that took.
    pub fn wait_west_reaches(
        &self,
        topic: &str,
        target: &[i64],
        timeout: Duration,
    ) -> Result<Duration, ClusterError> {
        let partitions = i32::try_from(target.len())
            .map_err(|_| ClusterError::Link("too many partitions".to_string()))?;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match self.west_end_offsets(topic, partitions) {
                Ok(west) if west.iter().zip(target).all(|(w, t)| w >= t) => {
                    return Ok(started.elapsed())
                }
                Ok(west) => last = format!("west {west:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Err(ClusterError::Timeout {
            what: format!("west reaching {target:?} on {topic}; last {last}"),
            waited: started.elapsed(),
        })
    }

    /// Waits until west's end offsets equal east's (call it once the producer stopped);
    /// returns how long that took and the end offsets.
    pub fn wait_caught_up(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<(Duration, Vec<i64>), ClusterError> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match (
                self.east_end_offsets(topic, partitions),
                self.west_end_offsets(topic, partitions),
            ) {
                (Ok(east), Ok(west)) if east == west => return Ok((started.elapsed(), east)),
                (Ok(east), Ok(west)) => last = format!("east {east:?}, west {west:?}"),
                (Err(e), _) | (_, Err(e)) => last = e.to_string(),
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Err(ClusterError::Timeout {
            what: format!("west catching up with east on {topic}; last {last}"),
            waited: started.elapsed(),
        })
    }

    /// For a failure report: the link status, the relay counters and both brokers' stderr
    /// tails.
    pub fn diagnostics(&self, lines: usize) -> String {
        let status = self
            .link_status_json()
            .unwrap_or_else(|e| format!("(no status: {e})"));
        let stats = serde_json::to_string(&self.control.stats().snapshot()).unwrap_or_default();
        format!(
            "--- link status ---\n{status}\n--- relay stats ---\n{stats}\n\
             --- east stderr (last {lines} lines) ---\n{}\n\
             --- west stderr (last {lines} lines) ---\n{}",
            self.east.stderr_tail(lines),
            self.west.stderr_tail(lines)
        )
    }

    /// The tokio runtime the relay runs on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

fn end_offsets(
    consumer: &BaseConsumer,
    side: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>, ClusterError> {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, WATERMARK_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| ClusterError::Admin(format!("{side} watermarks {topic}/{p}: {e}")))
        })
        .collect()
}
