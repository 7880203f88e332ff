//! The link agent's vocabulary shared by the agent, the admin HTTP API and the CLI: what a link
//! is ([`LinkSpec`], persisted), how it is doing ([`LinkStatus`], [`PartitionStatus`]) and the
//! control surface the admin API drives ([`LinkControl`]). All of it is plain data, serialised as
//! JSON on the admin port.

use serde::{Deserialize, Serialize};

/// Which side dials the QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LinkMode {
    /// The destination dials the source's link listener (the default).
    #[default]
    DestinationInitiated,
    /// The source dials out to the destination's link listener (source behind a firewall).
    SourceInitiated,
}

/// Which source topics a link mirrors. A topic matches if it is named, starts with a prefix or
/// matches a regex (anchored). Topics created on the source later are picked up too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSelection {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub regexes: Vec<String>,
}

/// A link as defined on the destination (`strait link create`); persisted in sled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub name: String,
    /// Where the source agent's link listener is (destination-initiated mode), `host:port`.
    pub source_addr: String,
    /// The name the source's certificate must carry (TLS server name).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    pub topics: TopicSelection,
    #[serde(default)]
    pub mode: LinkMode,
    /// zstd level for data frames; 0 disables compression.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// A data frame is sent when this many source bytes are pending ...
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// ... or when the oldest pending batch has waited this long.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Expected round-trip time and bandwidth of the path: QUIC windows are sized to their
    /// product so a long fat link is not window-bound.
    #[serde(default = "default_rtt_ms")]
    pub rtt_ms: u64,
    #[serde(default = "default_bandwidth_mbit")]
    pub bandwidth_mbit: u64,
    /// Number of QUIC data streams; partitions are spread over them (one slow or lossy stream
    /// blocks only its own partitions).
    #[serde(default = "default_streams")]
    pub streams: usize,
    /// Paused links keep their definition and mirror topics but move no data.
    #[serde(default)]
    pub paused: bool,
    /// Set only on the SOURCE of a source-initiated link: the destination agent's link
    /// listener this broker dials out to (the destination defines the link with mode
    /// `source-initiated` under the same name and chooses the topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_destination: Option<String>,
    /// What a mirror partition does when its source's history stops being the one it holds.
    #[serde(default)]
    pub on_divergence: DivergencePolicy,
}

/// The automatic answer to a divergence (`--on-divergence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DivergencePolicy {
    /// Stop the partition in state `diverged` until the operator chooses (`strait mirror
    /// resolve`).
    #[default]
    Stop,
    /// Quarantine the mirror's records and re-seed the partition from the source's new history.
    Reseed,
}

/// Why and where a mirror partition's source stopped holding the mirror's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// `topic-recreated`, `history-rewritten`, `source-truncated` or `source-cluster-changed`.
    pub kind: String,
    /// The mirror's log end offset when it was detected (the next offset it expected).
    pub mirror_end_offset: i64,
    /// The source partition's log start and end offsets as it reported them (-1: unknown).
    pub source_log_start_offset: i64,
    pub source_log_end_offset: i64,
    /// When it was detected (ms since the epoch, broker clock).
    pub detected_at_ms: i64,
    pub reason: String,
}

/// The operator's way out of a divergence (`strait mirror resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResolveChoice {
    /// Quarantine every record of the mirror partition and mirror the source's new history
    /// from its log start.
    Reseed,
    /// Quarantine the mirror's records from the first one the source does not hold identically
    /// and continue from there.
    Truncate,
}

/// What a resolution did: the records it took out of the mirror are in `quarantine_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveOutcome {
    pub topic: String,
    pub partition: i32,
    pub choice: ResolveChoice,
    pub divergence: Divergence,
    /// The mirror's log end offset after the resolution (where mirroring continues).
    pub resumes_at: i64,
    pub quarantine_file: Option<String>,
    pub quarantine_report: Option<String>,
    pub quarantined_first_offset: i64,
    pub quarantined_end_offset: i64,
    pub quarantined_batches: u64,
    pub quarantined_records: u64,
    pub quarantined_bytes: u64,
}

/// `strait mirror verify`: one partition compared with its source over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionVerify {
    pub topic: String,
    pub partition: i32,
    /// The range compared: `[from, to)` clipped to both logs.
    pub from: i64,
    pub to: i64,
    pub batches_compared: u64,
    /// The first mirror offset whose batch differs from the source's (or that the source
    /// lacks, or that fails its own check), if any.
    pub first_difference: Option<i64>,
    pub detail: String,
}

/// `strait mirror verify TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub topic: String,
    pub link: String,
    pub equal: bool,
    pub partitions: Vec<PartitionVerify>,
}

pub fn default_server_name() -> String {
    "localhost".to_string()
}
pub fn default_zstd_level() -> i32 {
    3
}
pub fn default_batch_max_bytes() -> usize {
    1 << 20
}
pub fn default_linger_ms() -> u64 {
    5
}
pub fn default_rtt_ms() -> u64 {
    100
}
pub fn default_bandwidth_mbit() -> u64 {
    1000
}
pub fn default_streams() -> usize {
    8
}

/// Where a link is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum LinkState {
    /// Dialling or waiting to redial (the reason says why the last attempt failed, if any).
    Connecting(Option<String>),
    Active,
    Paused,
    /// Stopped for a reason that retrying will not fix without a change (e.g. a version mismatch
    /// or a refused certificate); the agent still retries with a long backoff.
    Failed(String),
}

/// One mirrored partition as the destination sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The source's high watermark as last reported, and when (ms since the epoch).
    pub source_end_offset: i64,
    /// The destination's log end offset (next source offset it expects).
    pub destination_end_offset: i64,
    /// Records the destination still lacks.
    pub lag_records: i64,
    /// Estimated bytes the destination still lacks (lag_records x mean bytes per record seen).
    pub lag_bytes: u64,
    /// How long the destination has been behind the source (0 when caught up).
    pub lag_ms: u64,
    /// "active", "paused", "diverged: <kind>" or "failed: <reason>".
    pub state: String,
    /// Source bytes received per second, averaged over the last few seconds.
    pub bytes_per_sec: f64,
    pub records_per_sec: f64,
    /// Set while the partition is stopped because its source's history diverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
    /// Offsets the source deleted (retention, DeleteRecords) before the mirror got them:
    /// never mirrored, summed over every time it happened.
    #[serde(default)]
    pub gap_offsets: i64,
}

/// A link's status: `strait link status NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub spec: LinkSpec,
    #[serde(flatten)]
    pub state: LinkState,
    pub source_cluster_id: Option<String>,
    /// Last error seen (connection, TLS, protocol), even if the link recovered since.
    pub last_error: Option<String>,
    pub connects: u64,
    /// Bytes of record batches received (as the source stores them) vs bytes on the wire
    /// (data frames after packing/compression, incl. frame headers).
    pub source_bytes: u64,
    pub wire_bytes: u64,
    pub records: u64,
    pub bytes_per_sec: f64,
    pub mirror_topics: Vec<String>,
    pub partitions: Vec<PartitionStatus>,
}

/// A mirror topic on the destination: `strait mirror list|status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub topic: String,
    pub link: String,
    pub partitions: Vec<PartitionStatus>,
    pub lag_records: i64,
}

/// Errors the control surface reports to the admin API (mapped to HTTP status codes).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no link named {0:?}")]
    NotFound(String),
    #[error("a link named {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid link definition: {0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    /// The request is well formed but does not fit the object's state (e.g. resolving a
    /// partition that is not diverged).
    #[error("{0}")]
    Conflict(String),
    /// The request names something that does not exist or makes no sense (not a link).
    #[error("{0}")]
    BadRequest(String),
    /// The operation needs something that is down right now (e.g. the link's connection).
    #[error("{0}")]
    Unavailable(String),
}

/// What the admin API asks of the link manager. Implemented by the agent's `LinkManager`.
pub trait LinkControl: Send + Sync + 'static {
    fn list_links(&self) -> Vec<LinkStatus>;
    fn link_status(&self, name: &str) -> Result<LinkStatus, ControlError>;
    fn create_link(&self, spec: LinkSpec) -> Result<LinkStatus, ControlError>;
    fn pause_link(&self, name: &str) -> Result<(), ControlError>;
    fn resume_link(&self, name: &str) -> Result<(), ControlError>;
    fn delete_link(&self, name: &str) -> Result<(), ControlError>;
    fn mirrors(&self) -> Vec<MirrorStatus>;
    /// The operator's choice for a diverged mirror partition.
    fn resolve_mirror(
        &self,
        topic: &str,
        partition: i32,
        choice: ResolveChoice,
    ) -> Result<ResolveOutcome, ControlError>;
    /// Compares a mirror topic's batches with its source's over `[from, to)`.
    fn verify_mirror(
        &self,
        topic: &str,
        partition: Option<i32>,
        from: i64,
        to: i64,
    ) -> Result<VerifyReport, ControlError>;
}
