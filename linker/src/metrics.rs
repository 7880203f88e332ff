//! Prometheus text exposition (format 0.0.4) of the link agent's state, served by the admin API
//! at `GET /metrics`.
//!
//! Every family is written as one contiguous block (`# HELP`, `# TYPE`, then one sample per
//! link or partition), as the format requires. Label values are escaped (`\\`, `\"`, `\n`) and
//! float values use the spellings Prometheus parses (`+Inf`, `-Inf`, `NaN`).

use std::fmt::Write;

use crate::model::{LinkState, LinkStatus, PartitionStatus};

/// The `state` label values of `strait_link_state`, one series each (1 for the current state).
const LINK_STATES: [&str; 4] = ["connecting", "active", "paused", "failed"];

/// A per-link family: name, help text, and how to read the value off a link.
type LinkMetric = (&'static str, &'static str, fn(&LinkStatus) -> u64);
/// A per-partition family: name, help text, and how to read the value off a partition.
type PartitionMetric = (&'static str, &'static str, fn(&PartitionStatus) -> Value);

/// Appends the exposition of every link and mirrored partition to `out`.
pub fn render_links(links: &[LinkStatus], out: &mut String) {
    family(
        out,
        "strait_link_up",
        "gauge",
        "1 if the link is connected and mirroring, else 0.",
    );
    for link in links {
        let up = u64::from(matches!(link.state, LinkState::Active));
        sample(out, "strait_link_up", &[("link", &link.spec.name)], up);
    }

    family(
        out,
        "strait_link_state",
        "gauge",
        "Where the link is in its life: 1 for the current state, 0 for the others.",
    );
    for link in links {
        let current = state_label(&link.state);
        for state in LINK_STATES {
            let value = u64::from(state == current);
            let labels = [("link", link.spec.name.as_str()), ("state", state)];
            sample(out, "strait_link_state", &labels, value);
        }
    }

    let link_counters: [LinkMetric; 4] = [
        (
            "strait_link_connects_total",
            "Connections the link has established since the agent started.",
            |l| l.connects,
        ),
        (
            "strait_link_source_bytes_total",
            "Bytes of record batches received, as the source stores them.",
            |l| l.source_bytes,
        ),
        (
            "strait_link_wire_bytes_total",
            "Bytes of data frames received on the wire (after packing and compression).",
            |l| l.wire_bytes,
        ),
        (
            "strait_link_records_total",
            "Records mirrored to the destination.",
            |l| l.records,
        ),
    ];
    for (name, help, value_of) in link_counters {
        family(out, name, "counter", help);
        for link in links {
            sample(out, name, &[("link", &link.spec.name)], value_of(link));
        }
    }

    family(
        out,
        "strait_link_bytes_per_second",
        "gauge",
        "Source bytes received per second by the link, averaged over the last few seconds.",
    );
    for link in links {
        let labels = [("link", link.spec.name.as_str())];
        sample(
            out,
            "strait_link_bytes_per_second",
            &labels,
            link.bytes_per_sec,
        );
    }

    let partition_gauges: [PartitionMetric; 10] = [
        (
            "strait_link_partition_lag_records",
            "Records the destination partition still lacks.",
            |p| Value::Int(p.lag_records),
        ),
        (
            "strait_link_partition_lag_bytes",
            "Estimated bytes the destination partition still lacks.",
            |p| Value::Unsigned(p.lag_bytes),
        ),
        (
            "strait_link_partition_lag_ms",
            "How long the destination partition has been behind the source, in milliseconds.",
            |p| Value::Unsigned(p.lag_ms),
        ),
        (
            "strait_link_partition_source_end_offset",
            "The source partition's high watermark as last reported.",
            |p| Value::Int(p.source_end_offset),
        ),
        (
            "strait_link_partition_destination_end_offset",
            "The destination partition's log end offset.",
            |p| Value::Int(p.destination_end_offset),
        ),
        (
            "strait_link_partition_bytes_per_second",
            "Source bytes received per second for the partition.",
            |p| Value::Float(p.bytes_per_sec),
        ),
        (
            "strait_link_partition_records_per_second",
            "Records received per second for the partition.",
            |p| Value::Float(p.records_per_sec),
        ),
        (
            "strait_link_partition_active",
            "1 if the partition is being mirrored, 0 if paused, failed or diverged.",
            |p| Value::Unsigned(u64::from(p.state == "active")),
        ),
        (
            "strait_link_partition_diverged",
            "1 if the partition stopped because its source's history diverged from the mirror's (see `strait mirror status`), else 0.",
            |p| Value::Unsigned(u64::from(p.divergence.is_some())),
        ),
        (
            "strait_link_partition_gap_offsets",
            "Offsets the source deleted (retention, DeleteRecords) before the mirror got them.",
            |p| Value::Int(p.gap_offsets),
        ),
    ];
    for (name, help, value_of) in partition_gauges {
        family(out, name, "gauge", help);
        for link in links {
            for partition in &link.partitions {
                let partition_number = partition.partition.to_string();
                let labels = [
                    ("link", link.spec.name.as_str()),
                    ("topic", partition.topic.as_str()),
                    ("partition", partition_number.as_str()),
                ];
                sample(out, name, &labels, value_of(partition));
            }
        }
    }
}

/// The `state` label of a link state.
fn state_label(state: &LinkState) -> &'static str {
    match state {
        LinkState::Connecting(_) => "connecting",
        LinkState::Active => "active",
        LinkState::Paused => "paused",
        LinkState::Failed(_) => "failed",
    }
}

/// A sample value: integers print exactly, floats in the spelling Prometheus parses.
enum Value {
    Int(i64),
    Unsigned(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Self {
        Value::Unsigned(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Unsigned(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, label_value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(label_value, out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", value.into());
}

/// Escapes a label value as the text format requires: backslash, double quote and newline.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::model::{LinkMode, LinkSpec, TopicSelection};

    fn spec(name: &str) -> LinkSpec {
        LinkSpec {
            name: name.to_string(),
            source_addr: "127.0.0.1:9700".to_string(),
            server_name: "localhost".to_string(),
            topics: TopicSelection {
                names: vec!["orders".to_string()],
                ..Default::default()
            },
            mode: LinkMode::DestinationInitiated,
            zstd_level: 3,
            batch_max_bytes: 1 << 20,
            linger_ms: 5,
            rtt_ms: 100,
            bandwidth_mbit: 1000,
            streams: 8,
            paused: false,
            dial_destination: None,
            on_divergence: Default::default(),
        }
    }

    fn partition(topic: &str, partition: i32, lag: i64) -> PartitionStatus {
        PartitionStatus {
            topic: topic.to_string(),
            partition,
            source_end_offset: 1000,
            destination_end_offset: 1000 - lag,
            lag_records: lag,
            lag_bytes: lag as u64 * 100,
            lag_ms: 250,
            state: "active".to_string(),
            bytes_per_sec: 1.5e6,
            records_per_sec: f64::NAN,
            divergence: None,
            gap_offsets: 0,
        }
    }

    fn status(name: &str, state: LinkState, partitions: Vec<PartitionStatus>) -> LinkStatus {
        LinkStatus {
            spec: spec(name),
            state,
            source_cluster_id: Some("src".to_string()),
            last_error: None,
            connects: 3,
            source_bytes: 10_000,
            wire_bytes: 2_500,
            records: 77,
            bytes_per_sec: f64::INFINITY,
            mirror_topics: vec!["orders".to_string()],
            partitions,
        }
    }

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn is_metric_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            other if other.contains("inf") || other.contains("nan") => {
                Err(format!("bad value {other:?}"))
            }
            other => other
                .parse()
                .map_err(|e| format!("bad value {other:?}: {e}")),
        }
    }

    /// A strict parser of one sample line of the text format.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line:?}"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after_brace) = rest.strip_prefix('{') {
            let mut chars = after_brace.char_indices().peekable();
            loop {
                // label name
                let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if c == '=' {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let label = &after_brace[start..end];
                if !is_metric_name(label) || label.contains(':') {
                    return Err(format!("bad label name {label:?}"));
                }
                if chars.next().map(|(_, c)| c) != Some('=')
                    || chars.next().map(|(_, c)| c) != Some('"')
                {
                    return Err(format!("expected =\" after {label:?}"));
                }
                let mut value = String::new();
                loop {
                    match chars.next().ok_or("unterminated label value")?.1 {
                        '"' => break,
                        '\\' => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => return Err(format!("bad escape \\{other}")),
                        },
                        '\n' => return Err("raw newline in label value".to_string()),
                        c => value.push(c),
                    }
                }
                if labels.insert(label.to_string(), value).is_some() {
                    return Err(format!("duplicate label {label:?}"));
                }
                match chars.next().ok_or("unterminated labels")? {
                    (_, ',') => continue,
                    (i, '}') => {
                        rest = &after_brace[i + 1..];
                        break;
                    }
                    (_, c) => return Err(format!("unexpected {c:?} in labels")),
                }
            }
        }
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before value: {line:?}"))?;
        if value_text.contains(' ') {
            return Err(format!("timestamps are not expected: {line:?}"));
        }
        Ok(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value_text)?,
        })
    }

    /// Parses the whole exposition, checking HELP/TYPE precede their samples and families are
    /// contiguous.
    fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
        let mut typed: HashSet<String> = HashSet::new();
        let mut current_family = String::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().ok_or("comment without a name")?;
                let rest = parts.next().ok_or("comment without text")?;
                if !is_metric_name(name) {
                    return Err(format!("bad family name {name:?}"));
                }
                match keyword {
                    "HELP" => {
                        if typed.contains(name) {
                            return Err(format!("family {name} repeated"));
                        }
                        current_family = name.to_string();
                    }
                    "TYPE" => {
                        if name != current_family {
                            return Err(format!("TYPE of {name} without its HELP"));
                        }
                        if !["counter", "gauge"].contains(&rest) {
                            return Err(format!("bad type {rest:?}"));
                        }
                        typed.insert(name.to_string());
                    }
                    other => return Err(format!("unknown comment {other:?}")),
                }
                continue;
            }
            let sample = parse_sample(line)?;
            if sample.name != current_family || !typed.contains(&sample.name) {
                return Err(format!("sample {} outside its family block", sample.name));
            }
            samples.push(sample);
        }
        Ok(samples)
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    #[test]
    fn exposition_parses_line_by_line() {
        let links = vec![
            status(
                "east",
                LinkState::Active,
                vec![partition("orders", 0, 10), partition("orders", 1, 0)],
            ),
            status(
                "we\"ird\\na\nme",
                LinkState::Failed("bad cert".to_string()),
                vec![PartitionStatus {
                    state: "diverged: history-rewritten".to_string(),
                    divergence: Some(crate::model::Divergence {
                        kind: "history-rewritten".to_string(),
                        mirror_end_offset: 995,
                        source_log_start_offset: 0,
                        source_log_end_offset: 990,
                        detected_at_ms: 1,
                        reason: "test".to_string(),
                    }),
                    gap_offsets: 12,
                    ..partition("pay\"ments", 0, 5)
                }],
            ),
        ];
        let mut out = String::new();
        render_links(&links, &mut out);
        let samples = parse_exposition(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));

        let up = find(&samples, "strait_link_up", &[("link", "east")]);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].value, 1.0);
        // Escaped label values come back intact.
        let weird = find(&samples, "strait_link_up", &[("link", "we\"ird\\na\nme")]);
        assert_eq!(weird.len(), 1);
        assert_eq!(weird[0].value, 0.0);

        let states = find(
            &samples,
            "strait_link_state",
            &[("link", "we\"ird\\na\nme")],
        );
        assert_eq!(states.len(), LINK_STATES.len());
        let failed: Vec<_> = states.iter().filter(|s| s.value == 1.0).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].labels["state"], "failed");

        let diverged = find(
            &samples,
            "strait_link_partition_diverged",
            &[("topic", "pay\"ments")],
        );
        assert_eq!(diverged[0].value, 1.0);
        let gap = find(
            &samples,
            "strait_link_partition_gap_offsets",
            &[("topic", "pay\"ments")],
        );
        assert_eq!(gap[0].value, 12.0);
        let healthy = find(
            &samples,
            "strait_link_partition_diverged",
            &[("topic", "orders"), ("partition", "0")],
        );
        assert_eq!(healthy[0].value, 0.0);
        let lag = find(
            &samples,
            "strait_link_partition_lag_records",
            &[("link", "east"), ("topic", "orders"), ("partition", "0")],
        );
        assert_eq!(lag.len(), 1);
        assert_eq!(lag[0].value, 10.0);
        let dest_end = find(
            &samples,
            "strait_link_partition_destination_end_offset",
            &[("topic", "pay\"ments")],
        );
        assert_eq!(dest_end[0].value, 995.0);
        let wire = find(
            &samples,
            "strait_link_wire_bytes_total",
            &[("link", "east")],
        );
        assert_eq!(wire[0].value, 2500.0);
        let throughput = find(
            &samples,
            "strait_link_bytes_per_second",
            &[("link", "east")],
        );
        assert!(throughput[0].value.is_infinite());
        assert!(out.contains(" NaN\n"), "NaN spelled as Prometheus expects");
    }

    #[test]
    fn no_links_still_valid() {
        let mut out = String::new();
        render_links(&[], &mut out);
        let samples = parse_exposition(&out).unwrap();
        assert!(samples.is_empty());
        assert!(out.contains("# TYPE strait_link_connects_total counter\n"));
    }

    #[test]
    fn checker_rejects_bad_lines() {
        // The checker itself must be able to fail.
        assert!(parse_sample("strait_link_up{link=\"a} 1").is_err());
        assert!(parse_sample("strait_link_up{link=\"a\"} inf").is_err());
        assert!(parse_sample("9bad 1").is_err());
        assert!(parse_sample("x{a=\"\\q\"} 1").is_err());
        assert!(parse_exposition("x 1\n").is_err());
    }
}
