//! Broker processes for scenarios: a [`Node`] is one `strait broker` with its own data dir and
//! port that can be started, SIGKILLed, restarted on the same data, paused (SIGSTOP) and
//! resumed, optionally advertised through a relay in front of it. Only processes a `Node`
//! started are ever signalled, and dropping a `Node` SIGKILLs its process.
//!
//! Link scenarios (once `strait link` exists) are meant to be written as two `Node`s (source
//! and destination), a [`crate::wan::udp::UdpRelay`] between the link agents and, where the
//! producer's path matters, a [`crate::wan::tcp::TcpRelay`] in front of the source; the
//! workload, checker and faults do not change.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::faults;

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
