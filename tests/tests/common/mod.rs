//! Shared helpers of Strait's end-to-end tests: locating the `strait` binary, starting and
//! stopping broker processes (each test kills only the processes it started, also when it
//! panics), admin operations through rdkafka, a minimal raw Kafka protocol client built on
//! kafka-protocol's encoders, a seeded RNG, and reading on-disk segment files. For cluster
//! links: test certificates (`strait certs generate`), the `strait` CLI, a blocking client of
//! the admin HTTP API, and a UDP relay that can black-hole a QUIC connection for a while.
//!
//! Each integration test file includes this module with `mod common;`; not every file uses
//! every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// How long a broker may take to print its startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The line a broker prints on stdout once it accepts connections.
pub const STARTUP_LINE: &str = "strait broker listening on ";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The `strait` binary under test: `$STRAIT_BIN`, else `target/release/strait`, else
/// `target/debug/strait` (under `$CARGO_TARGET_DIR` if set, else the workspace's `target/`).
pub fn strait_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRAIT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "STRAIT_BIN={} does not exist; build it with `cargo build --release -p linker`",
            p.display()
        );
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("strait");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no strait binary found (looked for $STRAIT_BIN, {0}/release/strait, {0}/debug/strait): \
         run `cargo build --release -p linker` first",
        target.display()
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Polls `cond` every 20 ms until it returns true or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(20), cond)
}

/// Polls `cond` every `interval` until it returns true or `timeout` passes; returns whether
/// it held.
pub fn poll_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// A small deterministic PRNG (SplitMix64), so that failures reproduce from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `$STRAIT_TEST_SEED` if set, else from the clock. Prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("STRAIT_TEST_SEED") {
            Ok(s) => s
                .parse::<u64>()
                .expect("STRAIT_TEST_SEED must be an unsigned integer"),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42),
        };
        println!("[{test}] random seed {seed} (rerun with STRAIT_TEST_SEED={seed})");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi` exclusive, `hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Options of `strait broker` beyond the data dir and listen address.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// `--fsync` (always | interval:MS | never); broker default if `None`.
    pub fsync: Option<String>,
    /// `--auto-create-topics`; broker default if `None`.
    pub auto_create_topics: Option<bool>,
    /// `--retention-check-ms`; broker default if `None`.
    pub retention_check_ms: Option<u64>,
    /// Any further arguments, passed verbatim.
    pub extra: Vec<String>,
}

/// One `strait broker` on 127.0.0.1 with its own temporary data directory. It can be killed
/// and restarted on the same data dir and port. Dropping it SIGKILLs the process if it still
/// runs (only the child this struct started) and removes the temporary directory (kept if
/// `$STRAIT_KEEP_DATA` is set). If the test is panicking, the broker's recent stderr is
/// printed to help diagnose.
pub struct Broker {
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    logs_dir: PathBuf,
    port: u16,
    options: BrokerOptions,
    child: Option<Child>,
    starts: u32,
    bootstrap: String,
    name: String,
}

impl Broker {
    /// Starts a broker on a free port with a fresh data dir and waits for its startup line.
    pub fn start(name: &str, options: BrokerOptions) -> Broker {
        let root = tempfile::Builder::new()
            .prefix(&format!("strait-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let data_dir = root.path().join("data");
        let logs_dir = root.path().join("logs");
        fs::create_dir_all(&logs_dir).expect("create logs dir");
        let port = free_port();
        let mut b = Broker {
            root: Some(root),
            data_dir,
            logs_dir,
            port,
            options,
            child: None,
            starts: 0,
            bootstrap: format!("127.0.0.1:{port}"),
            name: name.to_string(),
        };
        b.restart();
        b
    }

    /// `host:port` to give clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// PID of the running broker process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is not running").id()
    }

    /// Starts the broker process again (same data dir, port and options). Panics if it is
    /// already running, exits early, or does not print its startup line within 30 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let n = self.starts;
        let stdout_path = self.logs_dir.join(format!("stdout-{n}.log"));
        let stderr_path = self.logs_dir.join(format!("stderr-{n}.log"));
        let mut cmd = Command::new(strait_bin());
        cmd.arg("broker")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        if let Some(f) = &self.options.fsync {
            cmd.arg("--fsync").arg(f);
        }
        if let Some(a) = self.options.auto_create_topics {
            cmd.arg("--auto-create-topics").arg(a.to_string());
        }
        if let Some(ms) = self.options.retention_check_ms {
            cmd.arg("--retention-check-ms").arg(ms.to_string());
        }
        cmd.args(&self.options.extra);
        // The broker's default admin address (127.0.0.1:9644) would be fought over by tests
        // running in parallel: a test that wants the admin API names its own port.
        let names_admin = self
            .options
            .extra
            .iter()
            .any(|a| a == "--admin-listen" || a.starts_with("--admin-listen="));
        if !names_admin {
            cmd.arg("--admin-listen").arg("none");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("create stdout log"))
            .stderr(fs::File::create(&stderr_path).expect("create stderr log"));
        let started = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", strait_bin().display());
        });
        self.child = Some(child);
        let deadline = started + STARTUP_TIMEOUT;
        loop {
            let out = fs::read_to_string(&stdout_path).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with(STARTUP_LINE)) {
                let addr = line[STARTUP_LINE.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches([',', ';']);
                assert!(
                    addr.ends_with(&format!(":{}", self.port)),
                    "startup line {line:?} does not name port {}",
                    self.port
                );
                self.bootstrap = addr.to_string();
                println!(
                    "[{}] broker start #{n} pid {} on {} after {:?}",
                    self.name,
                    self.pid(),
                    self.bootstrap,
                    started.elapsed()
                );
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "strait broker exited with {status} before printing its startup line\n\
                     --- stdout ---\n{out}\n--- stderr ---\n{}",
                    tail(&stderr_path, 60)
                );
            }
            if Instant::now() >= deadline {
                let _ = self.child.as_mut().unwrap().kill();
                let _ = self.child.as_mut().unwrap().wait();
                self.child = None;
                panic!(
                    "strait broker printed no `{STARTUP_LINE}...` line within {STARTUP_TIMEOUT:?}\n\
                     --- stdout ---\n{out}\n--- stderr ---\n{}",
                    tail(&stderr_path, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process started last is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("try_wait").is_none(),
        }
    }

    /// Panics (with the broker's stderr) unless the broker process still runs.
    pub fn assert_running(&mut self, context: &str) {
        if !self.is_running() {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "broker is not running any more ({context}); exit status {status:?}\n--- stderr ---\n{}",
                self.stderr_tail(80)
            );
        }
    }

    /// SIGKILLs the broker (our child only) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker is not running");
        child.kill().expect("SIGKILL broker");
        child.wait().expect("reap broker");
    }

    /// SIGTERMs the broker and waits up to 30 s for it to exit; returns its exit status.
    /// SIGKILLs it (and panics) if it does not exit in time.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker is not running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the PID of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            io::Error::last_os_error()
        );
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.stderr_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGTERM, and the broker must exit with status 0.
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "broker exited with {status} after SIGTERM (want 0)\n--- stderr ---\n{}",
            self.stderr_tail(60)
        );
    }

    /// Runs `strait log verify --data-dir DIR` (the broker must be stopped).
    pub fn log_verify(&self) -> Output {
        assert!(self.child.is_none(), "log verify needs a stopped broker");
        Command::new(strait_bin())
            .args(["log", "verify", "--data-dir"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run strait log verify")
    }

    /// The broker's resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// The broker's peak resident set size in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// The last `n` lines of the current (or last) process's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail(
            &self.logs_dir.join(format!("stderr-{}.log", self.starts)),
            n,
        )
    }

    /// Directory of one partition's log files.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir
            .join("topics")
            .join(topic)
            .join(partition.to_string())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- [{}] broker stderr (last 40 lines of start #{}) ---\n{}",
                self.name,
                self.starts,
                self.stderr_tail(40)
            );
        }
        if std::env::var_os("STRAIT_KEEP_DATA").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("[{}] keeping {}", self.name, root.keep().display());
            }
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------
// rdkafka helpers

/// A client config with the bootstrap address and short timeouts suitable for tests.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    c
}

/// A consumer config for `assign()`-only consumers: librdkafka's assign() needs a `group.id`,
/// but the tests never subscribe or commit (the broker has no consumer groups yet).
pub fn consumer_config(bootstrap: &str, auto_offset_reset: &str) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("group.id", "strait-tests-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", auto_offset_reset);
    c
}

/// Runs an rdkafka admin future to completion on a private single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    client_config(bootstrap)
        .create()
        .expect("create rdkafka AdminClient")
}

fn admin_opts() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(20)))
}

/// Creates a topic with CreateTopics (replication factor 1); panics on any error.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let a = admin(bootstrap);
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = block_on(a.create_topics([&t], &admin_opts())).expect("CreateTopics request");
    for r in res {
        if let Err((topic, code)) = r {
            panic!("CreateTopics {topic}: {code:?}");
        }
    }
}

/// Sets topic configs with AlterConfigs (non-incremental: unnamed configs return to their
/// defaults, so pass every non-default value); panics on any error.
pub fn alter_topic_configs(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    let a = admin(bootstrap);
    let mut ac = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        ac = ac.set(k, v);
    }
    let res = block_on(a.alter_configs([&ac], &admin_opts())).expect("AlterConfigs request");
    for r in res {
        if let Err((spec, code)) = r {
            panic!("AlterConfigs {spec:?}: {code:?}");
        }
    }
}

/// DescribeConfigs of a topic as name -> value.
pub fn describe_topic_configs(bootstrap: &str, topic: &str) -> HashMap<String, Option<String>> {
    let a = admin(bootstrap);
    let res = block_on(a.describe_configs([&ResourceSpecifier::Topic(topic)], &admin_opts()))
        .expect("DescribeConfigs request");
    let r = res
        .into_iter()
        .next()
        .expect("one DescribeConfigs result")
        .unwrap_or_else(|e| panic!("DescribeConfigs {topic}: {e:?}"));
    r.entries.into_iter().map(|e| (e.name, e.value)).collect()
}

// ---------------------------------------------------------------------------------------
// Raw Kafka protocol over std::net::TcpStream

/// Encodes `[i32 length][request header][body]` for request `req` at `version`.
pub fn encode_request<R: Request>(req: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("strait-tests")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, R::header_version(version))
        .expect("encode request header");
    req.encode(&mut body, version).expect("encode request body");
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame
}

/// A blocking connection speaking the Kafka protocol, with 10 s socket timeouts.
pub struct KafkaConn {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

impl KafkaConn {
    pub fn connect(addr: &str) -> io::Result<KafkaConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(KafkaConn {
            stream,
            next_correlation_id: 1,
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response frame (without its length prefix).
    pub fn read_frame(&mut self) -> anyhow::Result<Bytes> {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .context("reading response length")?;
        let len = i32::from_be_bytes(len);
        ensure!(
            (0..=256 << 20).contains(&len),
            "implausible response length {len}"
        );
        let mut buf = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut buf)
            .context("reading response body")?;
        Ok(Bytes::from(buf))
    }

    /// Sends `req` at `version` and decodes its response (checking the correlation id and
    /// that the body has no trailing bytes).
    pub fn request<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<R::Response> {
        let cid = self.next_correlation_id;
        self.next_correlation_id += 1;
        self.send_raw(&encode_request(req, version, cid))
            .context("sending request")?;
        let mut frame = self.read_frame()?;
        let hv = <R::Response as HeaderVersion>::header_version(version);
        let header = ResponseHeader::decode(&mut frame, hv).context("decoding response header")?;
        ensure!(
            header.correlation_id == cid,
            "correlation id {} in response, want {cid}",
            header.correlation_id
        );
        let resp = R::Response::decode(&mut frame, version).context("decoding response body")?;
        if frame.has_remaining() {
            bail!(
                "{} trailing bytes after the response body (api key {} v{version})",
                frame.remaining(),
                R::KEY
            );
        }
        Ok(resp)
    }

    /// Waits up to `timeout` for the peer to close the connection, discarding anything it
    /// sends. Returns true if it closed (EOF or reset).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return true,
            }
        }
    }
}

/// An ApiVersions v3 request with the client software fields Kafka requires to be non-empty.
pub fn api_versions_request() -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("strait-tests"))
        .with_client_software_version(StrBytes::from_static_str("0.1.0"))
}

/// Opens a fresh connection and checks the broker answers ApiVersions v3 (error 0, Metadata
/// and Produce advertised) and Metadata v12 (itself as the only broker, on `port`).
pub fn assert_broker_answers(addr: &str, port: u16, context: &str) {
    let check = || -> anyhow::Result<()> {
        let mut c = KafkaConn::connect(addr)?;
        let av: ApiVersionsResponse = c.request(&api_versions_request(), 3)?;
        ensure!(av.error_code == 0, "ApiVersions error {}", av.error_code);
        for key in [ApiKey::Metadata, ApiKey::Produce, ApiKey::Fetch] {
            ensure!(
                av.api_keys.iter().any(|k| k.api_key == key as i16),
                "ApiVersions does not list {key:?}"
            );
        }
        let md: MetadataResponse = c.request(&MetadataRequest::default().with_topics(None), 12)?;
        ensure!(
            md.brokers.len() == 1 && md.brokers[0].port == port as i32,
            "Metadata brokers {:?}, want one broker on port {port}",
            md.brokers
        );
        Ok(())
    };
    if let Err(e) = check() {
        panic!("broker does not answer well-formed requests ({context}): {e:#}");
    }
}

// ---------------------------------------------------------------------------------------
// On-disk segment files

/// The `*.log` segment files of a partition directory, sorted by name (= base offset).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The base offset encoded in a segment file name (`00000000000000001234.log`).
pub fn segment_base_offset(path: &Path) -> Option<i64> {
    path.file_stem()?.to_str()?.parse().ok()
}

/// Header fields of one stored RecordBatch v2.
#[derive(Debug, Clone, Copy)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub attributes: i16,
    pub crc_ok: bool,
}

/// Parses the complete Kafka RecordBatch v2 entries of a segment file (stops at the first
/// incomplete or non-v2 entry). Returns `None` if the file does not start with a v2 batch.
pub fn stored_batches(path: &Path) -> Option<Vec<StoredBatch>> {
    let data = fs::read(path).ok()?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 61 <= data.len() {
        let b = &data[pos..];
        if b[16] != 2 {
            break;
        }
        let len = i32::from_be_bytes(b[8..12].try_into().unwrap());
        if len < 49 || pos + 12 + len as usize > data.len() {
            break;
        }
        let total = 12 + len as usize;
        let crc = u32::from_be_bytes(b[17..21].try_into().unwrap());
        out.push(StoredBatch {
            base_offset: i64::from_be_bytes(b[0..8].try_into().unwrap()),
            last_offset_delta: i32::from_be_bytes(b[23..27].try_into().unwrap()),
            attributes: i16::from_be_bytes(b[21..23].try_into().unwrap()),
            crc_ok: crc32c_castagnoli(&b[21..total]) == crc,
        });
        pos += total;
    }
    if out.is_empty() && !data.is_empty() {
        return None;
    }
    Some(out)
}

/// Zig-zag varint, as records encode their fields.
pub fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// The fields of a record (after its length): no key, `value`, no headers.
pub fn record_fields(offset_delta: i64, value: &[u8]) -> Vec<u8> {
    let mut f = vec![0]; // attributes
    zigzag(&mut f, 0); // timestampDelta
    zigzag(&mut f, offset_delta);
    zigzag(&mut f, -1); // null key
    zigzag(&mut f, value.len() as i64);
    f.extend_from_slice(value);
    zigzag(&mut f, 0); // no headers
    f
}

/// A record with its true length prefix.
pub fn framed_record(fields: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    zigzag(&mut r, fields.len() as i64);
    r.extend_from_slice(fields);
    r
}

/// A RecordBatch v2 (no producer id) around a records `section` given as it is (compressed
/// or not, per `attributes`), declaring `count` records and `last_offset_delta`, with a
/// correct CRC-32C: whatever the section holds, the batch header is valid.
pub fn record_batch_v2(
    base_offset: i64,
    attributes: i16,
    count: i32,
    last_offset_delta: i32,
    section: &[u8],
) -> Vec<u8> {
    let now = now_ms();
    let mut b = Vec::with_capacity(61 + section.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((49 + section.len()) as i32).to_be_bytes()); // batchLength
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // CRC, below
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&last_offset_delta.to_be_bytes());
    b.extend_from_slice(&now.to_be_bytes()); // baseTimestamp
    b.extend_from_slice(&now.to_be_bytes()); // maxTimestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(section);
    let crc = crc32c_append(0, &b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// CRC-32C (Castagnoli), bitwise; test-only, speed does not matter.
pub fn crc32c_castagnoli(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------
// A TCP proxy that loses responses

/// What a [`DroppingProxy`] does with the traffic it relays.
pub trait ProxyPolicy: Send + Sync + 'static {
    /// Sees every request frame (length prefix included) before it is forwarded.
    fn on_request(&self, _frame: &[u8]) {}
    /// Whether to swallow the response to a request with `api_key`; the proxy then closes
    /// both connections, as a network failure would, so the client must retry.
    fn drop_response(&self, api_key: i16) -> bool;
}

/// A TCP proxy on 127.0.0.1 (std threads) between Kafka clients and a broker, which drops
/// responses as its [`ProxyPolicy`] decides. Start the broker with `--advertise` set to the
/// proxy's address so that every client connection goes through it.
pub struct DroppingProxy<P: ProxyPolicy> {
    pub addr: std::net::SocketAddr,
    pub policy: std::sync::Arc<P>,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

impl<P: ProxyPolicy> DroppingProxy<P> {
    /// A listener on a free port; start the broker advertising its address, then `run`.
    pub fn bind() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").expect("bind proxy")
    }

    pub fn run(listener: TcpListener, upstream: std::net::SocketAddr, policy: P) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let addr = listener.local_addr().expect("proxy addr");
        let policy = Arc::new(policy);
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (pol, conns, halt) = (policy.clone(), connections.clone(), stop.clone());
        let accept_thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // correlation id -> api key of requests awaiting their response
                let pending: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (p1, pol1) = (pending.clone(), pol.clone());
                std::thread::spawn(move || proxy_requests(client, server, p1, pol1));
                let pol2 = pol.clone();
                std::thread::spawn(move || proxy_responses(s2, c2, pending, pol2));
            }
        });
        DroppingProxy {
            addr,
            policy,
            connections,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    /// Client connections relayed so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<P: ProxyPolicy> Drop for DroppingProxy<P> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop; existing connections end when their peers close.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one `[i32 length][body]` frame (length included); `None` on EOF or any error.
fn proxy_read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len);
    if !(0..=64 << 20).contains(&n) {
        return None;
    }
    let mut frame = vec![0u8; 4 + n as usize];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// client -> broker: notes each request's (correlation id -> api key), then forwards it.
fn proxy_requests<P: ProxyPolicy>(
    mut client: TcpStream,
    mut server: TcpStream,
    pending: std::sync::Arc<std::sync::Mutex<HashMap<i32, i16>>>,
    policy: std::sync::Arc<P>,
) {
    while let Some(frame) = proxy_read_frame(&mut client) {
        if frame.len() >= 12 {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            let cid = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            pending.lock().unwrap().insert(cid, api_key);
            policy.on_request(&frame);
        }
        if server.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

/// broker -> client: forwards responses, or swallows one and closes both connections.
fn proxy_responses<P: ProxyPolicy>(
    mut server: TcpStream,
    mut client: TcpStream,
    pending: std::sync::Arc<std::sync::Mutex<HashMap<i32, i16>>>,
    policy: std::sync::Arc<P>,
) {
    while let Some(frame) = proxy_read_frame(&mut server) {
        if frame.len() >= 8 {
            let cid = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let api_key = pending.lock().unwrap().remove(&cid);
            if api_key.is_some_and(|k| policy.drop_response(k)) {
                break;
            }
        }
        if client.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

/// CRC-32C (Castagnoli) continued over `data` from a previous value (start with 0);
/// table-driven, for hashing whole logs.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        t
    });
    let mut c = !crc;
    for &byte in data {
        c = table[((c ^ byte as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------
// Cluster links: certificates, the strait CLI, the admin HTTP API, a UDP relay

/// A UDP port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.local_addr().expect("local_addr").port()
}

/// Runs `strait ARGS...` (a CLI command, not a broker) and returns its output.
pub fn strait_cli(args: &[&str]) -> Output {
    Command::new(strait_bin())
        .args(args)
        .stdin(Stdio::null())
        .env("STRAIT_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", strait_bin().display()))
}

/// Runs `strait ARGS...`, panics (showing the command and its output) unless it succeeds,
/// and returns its stdout.
pub fn strait_cli_ok(args: &[&str]) -> String {
    let out = strait_cli(args);
    assert!(
        out.status.success(),
        "`strait {}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test PKI made by `strait certs generate` in a temporary directory: `ca.pem`, `ca.key`
/// and `<name>.pem` + `<name>.key` per agent name.
pub struct LinkCerts {
    dir: tempfile::TempDir,
}

impl LinkCerts {
    /// Generates a new CA and one certificate per name; panics if the command fails or a
    /// file is missing.
    pub fn generate(names: &[&str]) -> LinkCerts {
        let dir = tempfile::Builder::new()
            .prefix("strait-certs-")
            .tempdir()
            .expect("create certs dir");
        let out = dir.path().to_str().expect("utf-8 temp path").to_string();
        let names_arg = names.join(",");
        strait_cli_ok(&[
            "certs", "generate", "--out", &out, "--names", &names_arg, "--force",
        ]);
        let certs = LinkCerts { dir };
        let mut expected = vec![certs.ca(), certs.dir.path().join("ca.key")];
        for name in names {
            expected.push(certs.cert(name));
            expected.push(certs.key(name));
        }
        for file in expected {
            assert!(
                file.is_file(),
                "`strait certs generate` did not write {}",
                file.display()
            );
        }
        certs
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The certificate of agent `name` (PEM).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    /// The private key of agent `name` (PEM).
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    /// `--link-ca`, `--link-cert`, `--link-key` for agent `name`, trusting this CA.
    pub fn tls_args(&self, name: &str) -> Vec<String> {
        link_tls_args(&self.ca(), &self.cert(name), &self.key(name))
    }
}

/// `--link-ca CA --link-cert CERT --link-key KEY` (the three may come from different PKIs).
pub fn link_tls_args(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--link-ca".to_string(),
        ca.display().to_string(),
        "--link-cert".to_string(),
        cert.display().to_string(),
        "--link-key".to_string(),
        key.display().to_string(),
    ]
}

/// Largest HTTP answer [`http_request`] accepts.
const MAX_HTTP_RESPONSE_BYTES: u64 = 64 << 20;

/// One blocking HTTP/1.1 request (`Connection: close`) to `addr` (`host:port`); returns the
/// status code and the body. Connect timeout 5 s, read/write timeouts 30 s.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         Connection: close\r\n"
    );
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .context("sending the request")?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_HTTP_RESPONSE_BYTES + 1)
        .read_to_end(&mut response)
        .context("reading the answer")?;
    ensure!(
        (response.len() as u64) <= MAX_HTTP_RESPONSE_BYTES,
        "answer larger than {MAX_HTTP_RESPONSE_BYTES} bytes"
    );
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete HTTP header block")?;
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let content_length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse::<usize>().ok()
        } else {
            None
        }
    });
    let rest = &response[head_end + 4..];
    let body = match content_length {
        Some(n) => rest
            .get(..n)
            .with_context(|| format!("body shorter than Content-Length {n}"))?,
        None => rest,
    };
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// A blocking client of a broker's admin HTTP API (links, mirrors, metrics).
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub addr: String,
}

impl AdminApi {
    pub fn new(addr: &str) -> AdminApi {
        AdminApi {
            addr: addr.to_string(),
        }
    }

    /// GETs `path` and parses the JSON body; errors on a non-2xx answer (with its body).
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_request(&self.addr, "GET", path, None)?;
        ensure!(
            (200..300).contains(&status),
            "GET {path}: HTTP {status}: {body}"
        );
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// `GET /v1/links/NAME`: the link's status (LinkStatus as JSON).
    pub fn link_status(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.get_json(&format!("/v1/links/{name}"))
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_request(&self.addr, "GET", "/metrics", None)?;
        ensure!(status == 200, "GET /metrics: HTTP {status}: {body}");
        Ok(body)
    }
}

/// Sessions (distinct client addresses) a [`UdpRelay`] serves at most; datagrams from
/// further clients are dropped.
pub const UDP_RELAY_MAX_SESSIONS: usize = 64;

/// A UDP relay on 127.0.0.1 (std threads) between QUIC clients and one upstream address:
/// each client address gets its own upstream socket, and datagrams are forwarded both ways
/// unless the relay is switched to drop everything (a network partition). Dropping it stops
/// its threads.
pub struct UdpRelay {
    addr: std::net::SocketAddr,
    dropping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    main_thread: Option<std::thread::JoinHandle<()>>,
    session_threads: std::sync::Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl UdpRelay {
    /// Binds a free port and starts relaying to `upstream`.
    pub fn start(upstream: std::net::SocketAddr) -> UdpRelay {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let front = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind relay"));
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("relay read timeout");
        let addr = front.local_addr().expect("relay addr");
        let dropping = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
        let (drop_flag, halt, fwd, drp, spawned) = (
            dropping.clone(),
            stop.clone(),
            forwarded.clone(),
            dropped.clone(),
            threads.clone(),
        );
        let main = std::thread::spawn(move || {
            let mut sessions: HashMap<std::net::SocketAddr, Arc<std::net::UdpSocket>> =
                HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while !halt.load(Ordering::SeqCst) {
                let (n, client) = match front.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(_) => continue, // timeout: check the stop flag
                };
                if drop_flag.load(Ordering::SeqCst) {
                    drp.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let up = match sessions.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        if sessions.len() >= UDP_RELAY_MAX_SESSIONS {
                            drp.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let up = Arc::new(
                            std::net::UdpSocket::bind("127.0.0.1:0").expect("bind relay upstream"),
                        );
                        up.connect(upstream).expect("connect relay upstream");
                        up.set_read_timeout(Some(Duration::from_millis(100)))
                            .expect("relay read timeout");
                        sessions.insert(client, up.clone());
                        let (back, front2) = (up.clone(), front.clone());
                        let (drop2, halt2, fwd2, drp2) =
                            (drop_flag.clone(), halt.clone(), fwd.clone(), drp.clone());
                        let t = std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            while !halt2.load(Ordering::SeqCst) {
                                let n = match back.recv(&mut buf) {
                                    Ok(n) => n,
                                    Err(_) => continue, // timeout, or upstream not bound (ICMP)
                                };
                                if drop2.load(Ordering::SeqCst) {
                                    drp2.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                if front2.send_to(&buf[..n], client).is_ok() {
                                    fwd2.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                        spawned.lock().unwrap().push(t);
                        up
                    }
                };
                // An error here is an upstream that is down (ICMP port unreachable): the
                // datagram is lost, as on a real network.
                if up.send(&buf[..n]).is_ok() {
                    fwd.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        UdpRelay {
            addr,
            dropping,
            stop,
            forwarded,
            dropped,
            main_thread: Some(main),
            session_threads: threads,
        }
    }

    /// The address clients send to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// While true, every datagram in either direction is dropped.
    pub fn set_dropping(&self, dropping: bool) {
        self.dropping
            .store(dropping, std::sync::atomic::Ordering::SeqCst);
    }

    /// Datagrams forwarded so far (both directions).
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Datagrams dropped so far (both directions).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Every thread wakes up within its 100 ms read timeout and sees the flag. The main
        // thread is joined first, so no session thread is added after the list is taken.
        if let Some(t) = self.main_thread.take() {
            let _ = t.join();
        }
        let sessions = std::mem::take(
            &mut *self
                .session_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for t in sessions {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Real Apache Kafka clusters (scripts/kafka.sh)

/// How long `scripts/kafka.sh start` may take (it fetches Kafka first if the cache is empty,
/// and has its own bounded wait for the nodes).
pub const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(420);

/// A real Apache Kafka KRaft cluster on loopback, started by `scripts/kafka.sh` with its run
/// directory in a private temporary directory. Dropping it runs `scripts/kafka.sh stop`, which
/// signals only the PIDs the script recorded (also when the test panics; then the tail of each
/// node's log is printed first). If the test process is killed outright, the script's
/// `--owner-pid` watcher stops the cluster within about a second.
pub struct KafkaCluster {
    name: String,
    nodes: usize,
    bootstrap: String,
    run: Option<tempfile::TempDir>,
}

impl KafkaCluster {
    /// The project script.
    pub fn script() -> PathBuf {
        workspace_root().join("scripts").join("kafka.sh")
    }

    fn run_dir(&self) -> &Path {
        self.run.as_ref().expect("run dir").path()
    }

    /// `scripts/kafka.sh ARGS` with this cluster's run directory; output captured, bounded by
    /// `timeout` (the child is SIGKILLed, by its own PID, if it overruns).
    fn script_cmd(run: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let mut child = Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("STRAIT_KAFKA_RUN", run)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn bash scripts/kafka.sh")?;
        // Drain the pipes on threads so a chatty script cannot block on a full pipe.
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("scripts/kafka.sh {args:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Output {
            status,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        })
    }

    /// Starts a cluster of `nodes` (1 or 3) combined broker+controller nodes; panics with the
    /// script's output if it fails.
    pub fn start(name: &str, nodes: usize) -> KafkaCluster {
        let run = tempfile::Builder::new()
            .prefix("strait-kafka-")
            .tempdir()
            .expect("temp dir for the Kafka run");
        let t0 = Instant::now();
        let n = nodes.to_string();
        // The script's watcher stops the cluster if this test process dies without dropping
        // the guard (SIGKILL, a harness timeout).
        let owner = std::process::id().to_string();
        let out = Self::script_cmd(
            run.path(),
            &["start", name, "--nodes", &n, "--owner-pid", &owner],
            KAFKA_START_TIMEOUT,
        );
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                let _ = Self::script_cmd(run.path(), &["stop", name], SHUTDOWN_TIMEOUT * 2);
                panic!(
                    "scripts/kafka.sh start {name} --nodes {nodes} failed ({}):\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Err(e) => {
                let _ = Self::script_cmd(run.path(), &["stop", name], SHUTDOWN_TIMEOUT * 2);
                panic!("scripts/kafka.sh start {name}: {e:#}");
            }
        };
        let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            bootstrap.split(',').count() == nodes,
            "scripts/kafka.sh start printed {bootstrap:?}, expected {nodes} host:port entries"
        );
        eprintln!(
            "[{name}] Apache Kafka cluster of {nodes} node(s) up at {bootstrap} in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        KafkaCluster {
            name: name.to_string(),
            nodes,
            bootstrap,
            run: Some(run),
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The PID the script recorded for node `node` (1-based; Kafka's node.id is the same).
    pub fn pid(&self, node: usize) -> u32 {
        let f = self
            .run_dir()
            .join(&self.name)
            .join(format!("n{node}"))
            .join("pid");
        let s = fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("read {} (node {node} not running?): {e}", f.display()));
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("bad pid in {}: {s:?}: {e}", f.display()))
    }

    /// The client address of node `node` (1-based).
    pub fn node_addr(&self, node: usize) -> &str {
        self.bootstrap
            .split(',')
            .nth(node - 1)
            .expect("node number within the cluster")
    }

    /// SIGKILLs node `node` by the PID the script recorded (checked to be that node's Kafka
    /// JVM first) and waits (bounded) until the process is gone.
    pub fn kill9(&self, node: usize) {
        let pid = self.pid(node);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_else(|e| panic!("node {node} (PID {pid}) is not running: {e}"));
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let conf = self
            .run_dir()
            .join(&self.name)
            .join(format!("n{node}"))
            .join("server.properties");
        assert!(
            cmdline.contains(&format!("kafka.Kafka {}", conf.display())),
            "PID {pid} is not node {node}'s Kafka JVM: {cmdline}"
        );
        // SAFETY: kill(2) with a PID this test's script started and just checked.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}: {}", io::Error::last_os_error());
        let gone = wait_until(Duration::from_secs(20), || {
            // Gone, or a zombie waiting for init to reap it.
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(s) => s
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            }
        });
        assert!(
            gone,
            "node {node} (PID {pid}) still running 20 s after SIGKILL"
        );
    }

    /// The last `n` lines of node `node`'s log.
    pub fn log_tail(&self, node: usize, n: usize) -> String {
        let f = self
            .run_dir()
            .join(&self.name)
            .join(format!("n{node}"))
            .join("kafka.log");
        let s = fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in 1..=self.nodes {
                eprintln!(
                    "--- [{}] Kafka node {node} log (last 30 lines) ---\n{}",
                    self.name,
                    self.log_tail(node, 30)
                );
            }
        }
        let run = self.run.take().expect("run dir");
        match Self::script_cmd(run.path(), &["stop", &self.name], SHUTDOWN_TIMEOUT * 2) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "[{}] scripts/kafka.sh stop failed ({}): {}",
                self.name,
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("[{}] scripts/kafka.sh stop: {e:#}", self.name),
        }
        if std::env::var_os("STRAIT_KEEP_DATA").is_some() {
            eprintln!("[{}] keeping {}", self.name, run.keep().display());
        }
    }
}
