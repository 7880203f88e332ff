//! `strait link ...` and `strait mirror ...`: command-line clients of a broker's admin HTTP API
//! (see `admin.rs`). They print tables for people, or the server's JSON verbatim with `--json`.
//!
//! Also [`http_request`], the minimal HTTP/1.1 client they use (one request per connection),
//! which tests and demos reuse.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::{
    self, DivergencePolicy, LinkMode, LinkSpec, LinkState, LinkStatus, MirrorStatus,
    PartitionStatus, ResolveChoice, ResolveOutcome, TopicSelection, VerifyReport,
};

/// Time allowed to connect to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request and its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for `mirror verify` and `mirror resolve`, which read whole partitions on both
/// sides of the link.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest answer accepted from the admin API.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Manage links (run against the destination broker).
#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Define a link that mirrors topics from a source broker; it starts right away.
    Create(CreateArgs),
    /// List links with their state, lag and throughput.
    List,
    /// Show one link in detail, with its mirrored partitions.
    Status { name: String },
    /// Stop moving data on a link (its definition and mirror topics stay).
    Pause { name: String },
    /// Resume a paused link.
    Resume { name: String },
    /// Delete a link (mirror topics stay, and stop being updated).
    Delete { name: String },
}

/// The definition of a new link; unset tuning options take the model's defaults.
#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("selection")
        .multiple(true)
        .args(["topics", "prefix", "regex"])
))]
pub struct CreateArgs {
    /// Name of the link.
    pub name: String,
    /// The source agent's link listener, host:port (destination-initiated links).
    #[arg(long, value_name = "HOST:PORT", required_unless_present_any = ["source_initiated", "dial_destination"])]
    pub source: Option<String>,
    /// On the SOURCE broker of a source-initiated link: the destination's link listener to
    /// dial out to (the destination defines the link, with --source-initiated, and its topics).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["source", "source_initiated", "topics", "prefix", "regex"])]
    pub dial_destination: Option<String>,
    /// Topics to mirror, by name (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub topics: Vec<String>,
    /// Mirror every topic starting with this prefix (repeatable).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Vec<String>,
    /// Mirror every topic matching this regex, anchored (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub regex: Vec<String>,
    /// Name the source's TLS certificate must carry.
    #[arg(long, default_value_t = model::default_server_name())]
    pub server_name: String,
    /// The source dials out to this broker's link listener (source behind a firewall).
    #[arg(long)]
    pub source_initiated: bool,
    /// zstd level for data frames; 0 disables compression.
    #[arg(long, default_value_t = model::default_zstd_level())]
    pub zstd_level: i32,
    /// Send a data frame once this many source bytes are pending...
    #[arg(long, default_value_t = model::default_batch_max_bytes())]
    pub batch_bytes: usize,
    /// ...or once the oldest pending batch has waited this long (milliseconds).
    #[arg(long, default_value_t = model::default_linger_ms())]
    pub linger_ms: u64,
    /// Expected round-trip time of the path (milliseconds); sizes the QUIC windows.
    #[arg(long, default_value_t = model::default_rtt_ms())]
    pub rtt_ms: u64,
    /// Expected bandwidth of the path (Mbit/s); sizes the QUIC windows.
    #[arg(long, default_value_t = model::default_bandwidth_mbit())]
    pub bandwidth_mbit: u64,
    /// Number of QUIC data streams partitions are spread over.
    #[arg(long, default_value_t = model::default_streams())]
    pub streams: usize,
    /// What a mirror partition does when its source's history changes under it (topic
    /// re-created, log truncated and rewritten): stop in state `diverged` until `strait mirror
    /// resolve`, or re-seed from the new history at once (the old records are quarantined).
    #[arg(long, value_enum, default_value_t = DivergencePolicy::Stop)]
    pub on_divergence: DivergencePolicy,
}

impl CreateArgs {
    /// The link definition sent to the admin API.
    pub fn to_spec(&self) -> anyhow::Result<LinkSpec> {
        let non_empty = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
                .collect()
        };
        let topics = TopicSelection {
            names: non_empty(&self.topics),
            prefixes: non_empty(&self.prefix),
            regexes: non_empty(&self.regex),
        };
        if self.dial_destination.is_none()
            && topics.names.is_empty()
            && topics.prefixes.is_empty()
            && topics.regexes.is_empty()
        {
            bail!("a link needs topics to mirror: give --topics, --prefix or --regex");
        }
        Ok(LinkSpec {
            name: self.name.clone(),
            source_addr: self.source.clone().unwrap_or_default(),
            server_name: self.server_name.clone(),
            topics,
            mode: if self.source_initiated || self.dial_destination.is_some() {
                LinkMode::SourceInitiated
            } else {
                LinkMode::DestinationInitiated
            },
            zstd_level: self.zstd_level,
            batch_max_bytes: self.batch_bytes,
            linger_ms: self.linger_ms,
            rtt_ms: self.rtt_ms,
            bandwidth_mbit: self.bandwidth_mbit,
            streams: self.streams,
            paused: false,
            dial_destination: self.dial_destination.clone(),
            on_divergence: self.on_divergence,
        })
    }
}

/// Inspect mirror topics (on the destination broker).
#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// List mirror topics with their link and lag.
    List,
    /// Show one mirror topic's partitions (divergences and retention gaps included).
    Status { topic: String },
    /// Choose how a diverged mirror partition continues; the records the choice removes from
    /// the mirror are kept in <data-dir>/mirror-quarantine with a JSON report.
    Resolve {
        topic: String,
        #[arg(long)]
        partition: i32,
        /// Drop the mirror's records and mirror the source's new history from its log start.
        #[arg(
            long,
            conflicts_with = "truncate",
            required_unless_present = "truncate"
        )]
        reseed: bool,
        /// Cut the mirror back to the last offset whose batches the source still holds
        /// identically, and continue from there.
        #[arg(long)]
        truncate: bool,
    },
    /// Compare a mirror topic with its source, batch by batch (checksums are computed on each
    /// side; only they cross the link). Exits non-zero if a partition differs.
    Verify {
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        /// First offset to compare (default: the log start).
        #[arg(long)]
        from: Option<i64>,
        /// Offset to stop before (default: the high watermark).
        #[arg(long)]
        to: Option<i64>,
    },
}

/// Where the broker's admin API is, and the output format. Both options are global, so they
/// may follow the subcommand (`strait link list --json`).
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Admin address of the broker
    #[arg(
        long,
        env = "STRAIT_ADMIN",
        default_value = "127.0.0.1:9644",
        global = true
    )]
    pub admin: String,
    /// Print the admin API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Runs a `strait link` command and prints its result.
pub async fn run_link(admin: &AdminArgs, cmd: LinkCommand) -> anyhow::Result<()> {
    let output = link_output(admin, cmd).await?;
    print!("{output}");
    Ok(())
}

/// Runs a `strait mirror` command and prints its result.
pub async fn run_mirror(admin: &AdminArgs, cmd: MirrorCommand) -> anyhow::Result<()> {
    let output = mirror_output(admin, cmd).await?;
    print!("{output}");
    Ok(())
}

/// What a `strait link` command prints.
async fn link_output(admin: &AdminArgs, cmd: LinkCommand) -> anyhow::Result<String> {
    let (method, path, body, action) = match &cmd {
        LinkCommand::Create(args) => {
            let spec = serde_json::to_string(&args.to_spec()?)?;
            ("POST", "/v1/links".to_string(), Some(spec), "created")
        }
        LinkCommand::List => ("GET", "/v1/links".to_string(), None, ""),
        LinkCommand::Status { name } => ("GET", link_path(name, ""), None, ""),
        LinkCommand::Pause { name } => ("POST", link_path(name, "/pause"), None, "paused"),
        LinkCommand::Resume { name } => ("POST", link_path(name, "/resume"), None, "resumed"),
        LinkCommand::Delete { name } => ("DELETE", link_path(name, ""), None, "deleted"),
    };
    let answer = call(&admin.admin, method, &path, body.as_deref()).await?;
    if admin.json {
        return Ok(with_newline(answer));
    }
    Ok(match cmd {
        LinkCommand::List => links_table(&parse::<Vec<LinkStatus>>(&answer)?),
        LinkCommand::Status { .. } => link_detail(&parse::<LinkStatus>(&answer)?),
        LinkCommand::Create(_) => {
            let status = parse::<LinkStatus>(&answer)?;
            format!(
                "link {:?} {action}\n\n{}",
                status.spec.name,
                link_detail(&status)
            )
        }
        LinkCommand::Pause { name }
        | LinkCommand::Resume { name }
        | LinkCommand::Delete { name } => {
            format!("link {name:?} {action}\n")
        }
    })
}

/// What a `strait mirror` command prints.
async fn mirror_output(admin: &AdminArgs, cmd: MirrorCommand) -> anyhow::Result<String> {
    let (method, path, body) = match &cmd {
        MirrorCommand::List => ("GET", "/v1/mirrors".to_string(), None),
        MirrorCommand::Status { topic } => (
            "GET",
            format!("/v1/mirrors/{}", percent_encode(topic)),
            None,
        ),
        MirrorCommand::Resolve {
            topic,
            partition,
            reseed,
            ..
        } => (
            "POST",
            format!(
                "/v1/mirrors/{}/partitions/{partition}/resolve",
                percent_encode(topic)
            ),
            Some(
                serde_json::json!({ "choice": if *reseed { "reseed" } else { "truncate" } })
                    .to_string(),
            ),
        ),
        MirrorCommand::Verify {
            topic,
            partition,
            from,
            to,
        } => (
            "POST",
            format!("/v1/mirrors/{}/verify", percent_encode(topic)),
            Some(serde_json::json!({ "partition": partition, "from": from, "to": to }).to_string()),
        ),
    };
    let answer = call(&admin.admin, method, &path, body.as_deref()).await?;
    if let MirrorCommand::Verify { .. } = cmd {
        let report = parse::<VerifyReport>(&answer)?;
        let text = if admin.json {
            with_newline(answer)
        } else {
            verify_text(&report)
        };
        if !report.equal {
            print!("{text}");
            bail!("the mirror differs from its source");
        }
        return Ok(text);
    }
    if admin.json {
        return Ok(with_newline(answer));
    }
    Ok(match cmd {
        MirrorCommand::List => mirrors_table(&parse::<Vec<MirrorStatus>>(&answer)?),
        MirrorCommand::Status { .. } => mirror_detail(&parse::<MirrorStatus>(&answer)?),
        MirrorCommand::Resolve { .. } => resolve_text(&parse::<ResolveOutcome>(&answer)?),
        MirrorCommand::Verify { .. } => verify_text(&parse::<VerifyReport>(&answer)?),
    })
}

fn verify_text(report: &VerifyReport) -> String {
    let mut out = format!(
        "{} (link {}): {}\n",
        report.topic,
        report.link,
        if report.equal {
            "identical to the source"
        } else {
            "DIFFERS from the source"
        }
    );
    for p in &report.partitions {
        let verdict = match p.first_difference {
            Some(offset) => format!("first difference at offset {offset}: {}", p.detail),
            None => p.detail.clone(),
        };
        out.push_str(&format!(
            "  partition {}: [{}, {}) {verdict}\n",
            p.partition, p.from, p.to
        ));
    }
    out
}

fn resolve_text(outcome: &ResolveOutcome) -> String {
    let quarantine = match (&outcome.quarantine_file, &outcome.quarantine_report) {
        (Some(file), Some(report)) => format!(
            "quarantined {} records ({} batches, {}, offsets [{}, {})) in {file}, report {report}",
            outcome.quarantined_records,
            outcome.quarantined_batches,
            bytes_text(outcome.quarantined_bytes),
            outcome.quarantined_first_offset,
            outcome.quarantined_end_offset
        ),
        _ => "no records removed".to_string(),
    };
    format!(
        "{}-{} ({}: {}) resolved by {}: {quarantine}; mirroring resumes at offset {}\n",
        outcome.topic,
        outcome.partition,
        outcome.divergence.kind,
        outcome.divergence.reason,
        match outcome.choice {
            ResolveChoice::Reseed => "re-seeding",
            ResolveChoice::Truncate => "truncating",
        },
        outcome.resumes_at
    )
}

fn link_path(name: &str, suffix: &str) -> String {
    format!("/v1/links/{}{suffix}", percent_encode(name))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment.
fn percent_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn parse<T: serde::de::DeserializeOwned>(answer: &str) -> anyhow::Result<T> {
    serde_json::from_str(answer).context("unexpected answer from the broker's admin API")
}

/// Sends a request and returns the body of a 2xx answer; any other answer becomes an error
/// carrying the server's message.
async fn call(addr: &str, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<String> {
    let (status, answer) = http_request(addr, method, path, body).await?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let message = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|value| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| answer.trim().chars().take(500).collect());
    Err(anyhow!("{message} (HTTP {status})"))
}

/// Sends one HTTP/1.1 request to `addr` (`host:port`) and returns the status code and body.
/// Fails if the server cannot be reached, does not answer within 30 s, or answers with
/// something that is not HTTP (or larger than 64 MiB).
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
            "cannot reach the broker's admin API at {addr} \
             (is `strait broker --admin-listen` running?)"
        ),
        Ok(Err(error)) => {
            bail!("cannot reach the broker's admin API at {addr}: {error}")
        }
        Err(_) => bail!(
            "cannot reach the broker's admin API at {addr}: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    };
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: strait-cli\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);

    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        limited.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let timeout = if path.ends_with("/verify") || path.ends_with("/resolve") {
        LONG_REQUEST_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "the broker's admin API at {addr} did not answer within {} s",
                timeout.as_secs()
            )
        })?
        .with_context(|| format!("talking to the broker's admin API at {addr}"))?;
    if response.len() > MAX_RESPONSE_BYTES {
        bail!("answer from {addr} is larger than {MAX_RESPONSE_BYTES} bytes");
    }
    parse_response(&response).with_context(|| format!("bad HTTP answer from {addr}"))
}

/// Splits a complete HTTP/1.x response (read to end of stream) into status and body.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, String)> {
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|start| start + 4)
        .ok_or_else(|| anyhow!("no complete header block"))?;
    let head = std::str::from_utf8(response.get(..head_end).unwrap_or_default())
        .context("header block is not UTF-8")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let content_length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let rest = response.get(head_end..).unwrap_or_default();
    let body = match content_length {
        Some(length) => rest
            .get(..length)
            .ok_or_else(|| anyhow!("body shorter than its Content-Length ({length})"))?,
        None => rest,
    };
    let body = String::from_utf8(body.to_vec()).context("body is not UTF-8")?;
    Ok((status, body))
}

// ----- human output -------------------------------------------------------------------------

/// A text table: a header row and rows, columns padded; numeric columns right-aligned.
fn table(headers: &[&str], right_aligned: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            if right_aligned.get(index).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn state_text(state: &LinkState) -> String {
    match state {
        LinkState::Connecting(None) => "connecting".to_string(),
        LinkState::Connecting(Some(reason)) => format!("connecting ({reason})"),
        LinkState::Active => "active".to_string(),
        LinkState::Paused => "paused".to_string(),
        LinkState::Failed(reason) => format!("failed: {reason}"),
    }
}

/// One word for a table cell.
fn state_word(state: &LinkState) -> &'static str {
    match state {
        LinkState::Connecting(_) => "connecting",
        LinkState::Active => "active",
        LinkState::Paused => "paused",
        LinkState::Failed(_) => "failed",
    }
}

fn selection_text(topics: &TopicSelection) -> String {
    let parts: Vec<String> = topics
        .names
        .iter()
        .cloned()
        .chain(topics.prefixes.iter().map(|prefix| format!("{prefix}*")))
        .chain(topics.regexes.iter().map(|regex| format!("/{regex}/")))
        .collect();
    parts.join(",")
}

/// Shortens `text` to at most `max` characters, marking the cut.
fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// Wire bytes per source byte (below 1 when compression helps).
fn ratio_text(wire_bytes: u64, source_bytes: u64) -> String {
    if source_bytes == 0 {
        return "-".to_string();
    }
    format!("{:.2}", wire_bytes as f64 / source_bytes as f64)
}

/// Bytes per second in decimal units.
fn rate_text(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() || bytes_per_sec < 0.0 {
        return "-".to_string();
    }
    let units = [(1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")];
    for (scale, unit) in units {
        if bytes_per_sec >= scale {
            return format!("{:.1} {unit}", bytes_per_sec / scale);
        }
    }
    format!("{bytes_per_sec:.0} B/s")
}

fn bytes_text(bytes: u64) -> String {
    let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in units {
        if bytes >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes} B")
}

fn lag_records(partitions: &[PartitionStatus]) -> i64 {
    partitions.iter().map(|p| p.lag_records.max(0)).sum()
}

fn links_table(links: &[LinkStatus]) -> String {
    if links.is_empty() {
        return "no links\n".to_string();
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|link| {
            vec![
                link.spec.name.clone(),
                state_word(&link.state).to_string(),
                link.spec.source_addr.clone(),
                ellipsize(&selection_text(&link.spec.topics), 40),
                lag_records(&link.partitions).to_string(),
                ratio_text(link.wire_bytes, link.source_bytes),
                rate_text(link.bytes_per_sec),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "SOURCE",
            "TOPICS",
            "LAG RECORDS",
            "WIRE/SOURCE",
            "THROUGHPUT",
        ],
        &[false, false, false, false, true, true, true],
        &rows,
    )
}

fn partitions_table(partitions: &[PartitionStatus]) -> String {
    if partitions.is_empty() {
        return "no mirrored partitions yet\n".to_string();
    }
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            let mb_per_sec = if p.bytes_per_sec.is_finite() {
                format!("{:.2}", p.bytes_per_sec / 1e6)
            } else {
                "-".to_string()
            };
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.source_end_offset.to_string(),
                p.destination_end_offset.to_string(),
                p.lag_records.to_string(),
                p.lag_bytes.to_string(),
                p.lag_ms.to_string(),
                p.gap_offsets.to_string(),
                p.state.clone(),
                mb_per_sec,
            ]
        })
        .collect();
    let table = table(
        &[
            "TOPIC",
            "PARTITION",
            "SOURCE END",
            "DEST END",
            "LAG RECORDS",
            "LAG BYTES",
            "LAG MS",
            "GAP",
            "STATE",
            "MB/S",
        ],
        &[false, true, true, true, true, true, true, true, false, true],
        &rows,
    );
    let mut out = table;
    for p in partitions {
        if let Some(d) = &p.divergence {
            out.push_str(&format!(
                "\n{}-{} DIVERGED ({}): {}\n  mirror end {}, source log [{}, {}); nothing is appended until `strait mirror resolve {} --partition {} --reseed|--truncate`\n",
                p.topic,
                p.partition,
                d.kind,
                d.reason,
                d.mirror_end_offset,
                d.source_log_start_offset,
                d.source_log_end_offset,
                p.topic,
                p.partition
            ));
        }
    }
    out
}

fn link_detail(link: &LinkStatus) -> String {
    let spec = &link.spec;
    let mode = match spec.mode {
        LinkMode::DestinationInitiated => "destination-initiated",
        LinkMode::SourceInitiated => "source-initiated",
    };
    let mirror_topics = if link.mirror_topics.is_empty() {
        "-".to_string()
    } else {
        link.mirror_topics.join(", ")
    };
    let fields = [
        ("Link", spec.name.clone()),
        ("State", state_text(&link.state)),
        (
            "Source",
            match (&spec.dial_destination, spec.mode) {
                (Some(destination), _) => format!(
                    "this broker; dials out to the destination at {destination} (TLS name {})",
                    spec.server_name
                ),
                (None, LinkMode::SourceInitiated) => {
                    "dials in to this broker's link listener (source-initiated)".to_string()
                }
                (None, LinkMode::DestinationInitiated) => format!(
                    "{} (TLS name {}, {mode})",
                    spec.source_addr, spec.server_name
                ),
            },
        ),
        (
            "Source cluster",
            link.source_cluster_id
                .clone()
                .unwrap_or_else(|| "-".to_string()),
        ),
        ("Topics", selection_text(&spec.topics)),
        ("Mirror topics", mirror_topics),
        ("Connects", link.connects.to_string()),
        ("Records", link.records.to_string()),
        (
            "Bytes",
            format!(
                "{} source, {} on the wire (ratio {})",
                bytes_text(link.source_bytes),
                bytes_text(link.wire_bytes),
                ratio_text(link.wire_bytes, link.source_bytes)
            ),
        ),
        ("Throughput", rate_text(link.bytes_per_sec)),
        ("Lag", format!("{} records", lag_records(&link.partitions))),
        (
            "Last error",
            link.last_error.clone().unwrap_or_else(|| "-".to_string()),
        ),
        (
            "Settings",
            format!(
                "zstd {}, batch {} B, linger {} ms, rtt {} ms, {} Mbit/s, {} streams, on divergence {}{}",
                spec.zstd_level,
                spec.batch_max_bytes,
                spec.linger_ms,
                spec.rtt_ms,
                spec.bandwidth_mbit,
                spec.streams,
                match spec.on_divergence {
                    DivergencePolicy::Stop => "stop",
                    DivergencePolicy::Reseed => "reseed",
                },
                if spec.paused { ", paused" } else { "" }
            ),
        ),
    ];
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{:<width$} {value}\n", format!("{label}:")));
    }
    out.push('\n');
    out.push_str(&partitions_table(&link.partitions));
    out
}

fn mirrors_table(mirrors: &[MirrorStatus]) -> String {
    if mirrors.is_empty() {
        return "no mirror topics\n".to_string();
    }
    let rows: Vec<Vec<String>> = mirrors
        .iter()
        .map(|mirror| {
            let bytes_per_sec: f64 = mirror.partitions.iter().map(|p| p.bytes_per_sec).sum();
            vec![
                mirror.topic.clone(),
                mirror.link.clone(),
                mirror.partitions.len().to_string(),
                mirror.lag_records.to_string(),
                rate_text(bytes_per_sec),
            ]
        })
        .collect();
    table(
        &["TOPIC", "LINK", "PARTITIONS", "LAG RECORDS", "THROUGHPUT"],
        &[false, false, true, true, true],
        &rows,
    )
}

fn mirror_detail(mirror: &MirrorStatus) -> String {
    format!(
        "Topic:       {}\nLink:        {}\nLag records: {}\n\n{}",
        mirror.topic,
        mirror.link,
        mirror.lag_records,
        partitions_table(&mirror.partitions)
    )
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::admin::fake;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Link {
            #[command(subcommand)]
            command: LinkCommand,
        },
        Mirror {
            #[command(subcommand)]
            command: MirrorCommand,
        },
    }

    fn parse_cli(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("strait").chain(args.iter().copied()))
    }

    fn link_command(cli: TestCli) -> LinkCommand {
        match cli.command {
            TestCommand::Link { command } => command,
            TestCommand::Mirror { .. } => panic!("not a link command"),
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn admin_options_may_follow_the_subcommand() {
        let cli = parse_cli(&["link", "list", "--admin", "10.0.0.9:9644", "--json"]).unwrap();
        assert_eq!(cli.admin.admin, "10.0.0.9:9644");
        assert!(cli.admin.json);
        let cli = parse_cli(&["mirror", "list"]).unwrap();
        assert!(!cli.admin.json);
    }

    #[test]
    fn create_args_build_the_spec() {
        let cli = parse_cli(&[
            "link",
            "create",
            "east",
            "--source",
            "10.0.0.1:9700",
            "--topics",
            "a,b",
            "--prefix",
            "logs.",
            "--prefix",
            "audit.",
            "--regex",
            "x.*",
            "--source-initiated",
            "--streams",
            "4",
        ])
        .unwrap();
        let LinkCommand::Create(args) = link_command(cli) else {
            panic!("not create")
        };
        let spec = args.to_spec().unwrap();
        assert_eq!(spec.name, "east");
        assert_eq!(spec.source_addr, "10.0.0.1:9700");
        assert_eq!(spec.topics.names, ["a", "b"]);
        assert_eq!(spec.topics.prefixes, ["logs.", "audit."]);
        assert_eq!(spec.topics.regexes, ["x.*"]);
        assert_eq!(spec.mode, LinkMode::SourceInitiated);
        assert_eq!(spec.streams, 4);
        assert_eq!(spec.zstd_level, model::default_zstd_level());
        assert_eq!(spec.batch_max_bytes, model::default_batch_max_bytes());
        assert_eq!(spec.server_name, model::default_server_name());
        assert!(!spec.paused);
    }

    #[test]
    fn create_requires_a_topic_selection_except_when_dialling_out() {
        // Missing or present-but-empty selections are caught when building the spec (the
        // source side of a source-initiated link, --dial-destination, needs none).
        for argv in [
            &["link", "create", "east", "--source", "h:1"][..],
            &["link", "create", "east", "--source", "h:1", "--topics", ","][..],
        ] {
            let LinkCommand::Create(args) = link_command(parse_cli(argv).unwrap()) else {
                panic!("not create")
            };
            let error = args.to_spec().unwrap_err().to_string();
            assert!(error.contains("--topics, --prefix or --regex"), "{error}");
        }
        let LinkCommand::Create(args) = link_command(
            parse_cli(&["link", "create", "east", "--dial-destination", "d:2"]).unwrap(),
        ) else {
            panic!("not create")
        };
        let spec = args.to_spec().unwrap();
        assert_eq!(spec.dial_destination.as_deref(), Some("d:2"));
        assert_eq!(spec.mode, LinkMode::SourceInitiated);
        // Neither a source nor a way in: clap refuses.
        let error = parse_cli(&["link", "create", "east", "--prefix", "p"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[tokio::test]
    async fn commands_against_a_live_admin_api() {
        let (addr, _stop) = fake::start().await;
        let admin = AdminArgs {
            admin: addr.clone(),
            json: false,
        };
        let listed = link_output(&admin, LinkCommand::List).await.unwrap();
        assert_eq!(listed, "no links\n");

        let cli = parse_cli(&[
            "link",
            "create",
            "east",
            "--source",
            "127.0.0.1:9700",
            "--topics",
            "orders",
        ])
        .unwrap();
        let created = link_output(&admin, link_command(cli)).await.unwrap();
        assert!(created.starts_with("link \"east\" created\n"), "{created}");
        assert!(
            created.contains("Source cluster: source-cluster"),
            "{created}"
        );

        let listed = link_output(&admin, LinkCommand::List).await.unwrap();
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.len(), 2, "{listed}");
        assert!(lines[0].starts_with("NAME"));
        // Fake: lags 10 + 9, wire/source 1000/4000, 5 MB/s.
        for expected in [
            "east",
            "active",
            "127.0.0.1:9700",
            "orders",
            "19",
            "0.25",
            "5.0 MB/s",
        ] {
            assert!(
                lines[1].contains(expected),
                "{expected:?} missing in {listed}"
            );
        }

        let status = link_output(
            &admin,
            LinkCommand::Status {
                name: "east".into(),
            },
        )
        .await
        .unwrap();
        assert!(status.contains("State:          active"), "{status}");
        assert!(
            status.contains("Last error:     earlier hiccup"),
            "{status}"
        );
        let partition_row = status
            .lines()
            .find(|line| line.starts_with("orders") && line.contains(" 1 "))
            .unwrap_or_else(|| panic!("{status}"));
        let cells: Vec<&str> = partition_row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["orders", "1", "100", "91", "9", "1000", "42", "0", "active", "2.50"]
        );

        let paused = link_output(
            &admin,
            LinkCommand::Pause {
                name: "east".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(paused, "link \"east\" paused\n");
        let json_admin = AdminArgs {
            admin: addr.clone(),
            json: true,
        };
        let raw = link_output(
            &json_admin,
            LinkCommand::Status {
                name: "east".into(),
            },
        )
        .await
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(value["state"], "paused");

        let mirrors = mirror_output(&admin, MirrorCommand::List).await.unwrap();
        assert!(
            mirrors.contains("orders") && mirrors.contains("east"),
            "{mirrors}"
        );
        let mirror = mirror_output(
            &admin,
            MirrorCommand::Status {
                topic: "orders".into(),
            },
        )
        .await
        .unwrap();
        assert!(mirror.contains("Lag records: 19"), "{mirror}");

        // Server errors carry the server's message.
        let error = link_output(
            &admin,
            LinkCommand::Delete {
                name: "nope".into(),
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(error, "no link named \"nope\" (HTTP 404)");
        let error = mirror_output(
            &admin,
            MirrorCommand::Status {
                topic: "a/b".into(),
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("\"a/b\" is not a mirror topic"), "{error}");
        // Resolve and verify reach the control surface with their arguments.
        let error = mirror_output(
            &admin,
            MirrorCommand::Resolve {
                topic: "orders".into(),
                partition: 1,
                reseed: true,
                truncate: false,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "orders-1 is not diverged: there is nothing to resolve (HTTP 409)"
        );
        let error = mirror_output(
            &admin,
            MirrorCommand::Verify {
                topic: "orders".into(),
                partition: None,
                from: Some(5),
                to: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("not connected (HTTP 503)"), "{error}");
        let deleted = link_output(
            &admin,
            LinkCommand::Delete {
                name: "east".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(deleted, "link \"east\" deleted\n");
    }

    #[tokio::test]
    async fn every_link_state_survives_the_json_round_trip() {
        let (addr, _stop) = fake::start().await;
        let spec = r#"{"name":"s","source_addr":"a:1","topics":{"names":["t"]}}"#;
        let (status, answer) = http_request(&addr, "POST", "/v1/links", Some(spec))
            .await
            .unwrap();
        assert_eq!(status, 201, "{answer}");
        let mut link: LinkStatus = parse(&answer).unwrap();
        for state in [
            LinkState::Connecting(None),
            LinkState::Connecting(Some("refused".into())),
            LinkState::Active,
            LinkState::Paused,
            LinkState::Failed("bad certificate".into()),
        ] {
            link.state = state;
            let json = serde_json::to_string(&link).unwrap();
            let back: LinkStatus = parse(&json).unwrap();
            assert_eq!(back, link, "{json}");
        }
        let text = link_detail(&link);
        assert!(
            text.contains("State:          failed: bad certificate"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unreachable_admin_api_is_explained() {
        // Bind then drop a listener: the port is (almost certainly) closed right after.
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let error = http_request(&addr, "GET", "/health", None)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "cannot reach the broker's admin API at {addr} \
                 (is `strait broker --admin-listen` running?)"
            )
        );
    }

    #[test]
    fn response_parsing() {
        let (status, body) =
            parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((status, body.as_str()), (201, "{}"));
        let (status, body) = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").unwrap();
        assert_eq!((status, body.as_str()), (200, "until eof"));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(rate_text(0.0), "0 B/s");
        assert_eq!(rate_text(1_500.0), "1.5 kB/s");
        assert_eq!(rate_text(f64::NAN), "-");
        assert_eq!(ratio_text(1, 0), "-");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        let topics = TopicSelection {
            names: vec!["a".into()],
            prefixes: vec!["p.".into()],
            regexes: vec!["r+".into()],
        };
        assert_eq!(selection_text(&topics), "a,p.*,/r+/");
        let text = table(
            &["A", "NUM"],
            &[false, true],
            &[vec!["xyz".into(), "5".into()]],
        );
        assert_eq!(text, "A    NUM\nxyz    5\n");
    }
}
