//! When a mirror partition's source stops holding the mirror's history: recording the
//! divergence (persisted, shown in status and metrics), the automatic policy, the operator's
//! resolutions (re-seed from the source's new history, or truncate to the last offset both
//! agree on), the quarantine that keeps every record a resolution removes, and `mirror verify`
//! (batch digests compared with the source's; only digests cross the link).
//!
//! Detection itself happens where the facts are: the source checks a resubscribing lane's
//! resume point (`source::check_resume`) and notices its log shrinking under a lane; the
//! destination compares source topic ids on every metadata round (`destination::sync_topics`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use broker_core::broker::{BatchDigest, Partition, QuarantineReport};
use mirror_protocol::{
    EncodeOptions, Frame, SourceOffset, VerifyReply, VerifyRequest, MAX_VERIFY_DIGESTS,
};
use quinn::Connection;
use tokio::sync::oneshot;

use super::framing::{read_frame, write_frame};
use super::AgentShared;
use crate::model::{
    Divergence, DivergencePolicy, LinkSpec, PartitionVerify, ResolveChoice, ResolveOutcome,
};

/// Longest a verify exchange may wait for one answer of the source.
const VERIFY_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Work a link task does for the admin API over its live connection.
pub enum LinkRequest {
    /// Compare a mirror partition with its source over `[from, to)`.
    Verify {
        topic: String,
        partition: i32,
        from: i64,
        to: i64,
        reply: oneshot::Sender<Result<PartitionVerify, String>>,
    },
}

/// The mirror topic's own id, the key of its partitions' persisted state.
pub fn mirror_topic_id(agent: &AgentShared, topic: &str) -> Option<String> {
    agent.broker.topic(topic).map(|t| t.id.to_string())
}

/// The divergence of a mirror partition, if it is diverged.
pub fn divergence_of(agent: &AgentShared, topic: &str, partition: i32) -> Option<Divergence> {
    let id = mirror_topic_id(agent, topic)?;
    agent.mirror_states.divergence(topic, partition, &id)
}

/// Records a divergence (durably, before anything else happens to the partition) and applies
/// the link's policy. Returns `true` if the policy re-seeded the partition, so the caller must
/// resubscribe it (reconnect).
pub fn diverged(
    agent: &AgentShared,
    spec: &LinkSpec,
    topic: &str,
    partition: i32,
    divergence: Divergence,
) -> Result<bool> {
    let id = mirror_topic_id(agent, topic)
        .ok_or_else(|| anyhow!("mirror topic {topic} vanished while diverging"))?;
    let newly = agent
        .mirror_states
        .mark_diverged(topic, partition, &id, divergence.clone())
        .context("recording a divergence")?;
    if newly {
        tracing::error!(link = %spec.name, topic, partition, kind = %divergence.kind,
            mirror_end = divergence.mirror_end_offset, source_log_start = divergence.source_log_start_offset,
            source_log_end = divergence.source_log_end_offset, reason = %divergence.reason,
            "mirror partition diverged from its source: stopped");
    }
    if spec.on_divergence == DivergencePolicy::Reseed {
        let outcome = resolve_locally(
            agent,
            &spec.name,
            topic,
            partition,
            ResolveChoice::Reseed,
            None,
        )?;
        tracing::warn!(link = %spec.name, topic, partition, quarantined_records = outcome.quarantined_records,
            quarantine = ?outcome.quarantine_file, "policy on-divergence=reseed: re-seeded the mirror partition from the source's new history");
        return Ok(true);
    }
    Ok(false)
}

/// A divergence observed now.
pub fn divergence(
    kind: &str,
    mirror_end: i64,
    source_log_start: i64,
    source_log_end: i64,
    reason: String,
) -> Divergence {
    Divergence {
        kind: kind.to_string(),
        mirror_end_offset: mirror_end,
        source_log_start_offset: source_log_start,
        source_log_end_offset: source_log_end,
        detected_at_ms: broker_core::broker::now_ms(),
        reason,
    }
}

/// Applies a resolution that needs nothing more from the source: re-seed (restart the mirror
/// partition at the source's log start, as reported with the divergence) or truncate to
/// `common` (the caller found it with [`compare_with_source`]). The removed records go to the
/// quarantine first; the divergence is cleared last, so an interrupted resolution repeats.
pub fn resolve_locally(
    agent: &AgentShared,
    link: &str,
    topic: &str,
    partition: i32,
    choice: ResolveChoice,
    common: Option<i64>,
) -> Result<ResolveOutcome> {
    let broker = &agent.broker;
    let mirror = broker
        .topic(topic)
        .ok_or_else(|| anyhow!("no mirror topic {topic}"))?;
    let id = mirror.id.to_string();
    let state = agent.mirror_states.get(topic, partition, &id);
    let divergence = state
        .divergence
        .ok_or_else(|| anyhow!("{topic}-{partition} is not diverged: nothing to resolve"))?;
    let p = broker.partition(topic, partition)?;
    let offsets = p.offsets();
    let from = match (choice, common) {
        (ResolveChoice::Reseed, _) => offsets.log_start_offset,
        (ResolveChoice::Truncate, Some(common)) => common,
        (ResolveChoice::Truncate, None) => bail!("truncate needs the common offset"),
    };
    let (quarantine_file, quarantine_report, report) = if from < offsets.log_end_offset {
        let (file, report_file, report) =
            quarantine(agent, link, topic, partition, &p, from, choice, &divergence)?;
        (Some(file), Some(report_file), report)
    } else {
        (
            None,
            None,
            QuarantineReport {
                first_offset: from,
                end_offset: from,
                ..QuarantineReport::default()
            },
        )
    };
    let resumes_at = match choice {
        ResolveChoice::Reseed => {
            let restart = divergence.source_log_start_offset.max(0);
            p.restart_mirror_at(restart, &broker.data_arrived)?;
            if matches!(
                divergence.kind.as_str(),
                "topic-recreated" | "source-cluster-changed"
            ) {
                // Follow the new source topic: the next metadata round records its id.
                broker.set_mirror_source(topic, None)?;
            }
            restart
        }
        ResolveChoice::Truncate => {
            p.truncate_mirror_to(from, &broker.data_arrived)?;
            from
        }
    };
    let outcome = ResolveOutcome {
        topic: topic.to_string(),
        partition,
        choice,
        divergence,
        resumes_at,
        quarantine_file: quarantine_file.map(|f| f.display().to_string()),
        quarantine_report: quarantine_report.map(|f| f.display().to_string()),
        quarantined_first_offset: report.first_offset,
        quarantined_end_offset: report.end_offset,
        quarantined_batches: report.batches,
        quarantined_records: report.records,
        quarantined_bytes: report.bytes,
    };
    agent.mirror_states.update(topic, partition, &id, |s| {
        s.divergence = None;
        s.last_resolution = Some(outcome.clone());
    })?;
    tracing::warn!(link, topic, partition, choice = ?choice, resumes_at, quarantined_records = report.records,
        "diverged mirror partition resolved");
    Ok(outcome)
}

/// Copies the mirror partition's records from `from` to its end into
/// `<data-dir>/mirror-quarantine/<topic>-<partition>-<ms>.log` and writes a JSON report beside
/// it (what, why, how many). Returns both paths and the counts.
#[allow(clippy::too_many_arguments)]
fn quarantine(
    agent: &AgentShared,
    link: &str,
    topic: &str,
    partition: i32,
    p: &Partition,
    from: i64,
    choice: ResolveChoice,
    divergence: &Divergence,
) -> Result<(PathBuf, PathBuf, QuarantineReport)> {
    let dir = agent.broker.config.data_dir.join("mirror-quarantine");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!("{topic}-{partition}-{}", broker_core::broker::now_ms());
    let file = dir.join(format!("{stem}.log"));
    let report = p
        .quarantine_from(from, &file)
        .with_context(|| format!("quarantining {topic}-{partition} from offset {from}"))?;
    let report_file = dir.join(format!("{stem}.json"));
    let json = serde_json::json!({
        "link": link,
        "topic": topic,
        "partition": partition,
        "choice": choice,
        "divergence": divergence,
        "records_file": file.display().to_string(),
        "first_offset": report.first_offset,
        "end_offset": report.end_offset,
        "batches": report.batches,
        "records": report.records,
        "bytes": report.bytes,
        "created_at_ms": broker_core::broker::now_ms(),
    });
    let text = serde_json::to_vec_pretty(&json)?;
    write_durably(&report_file, &text)
        .with_context(|| format!("writing {}", report_file.display()))?;
    Ok((file, report_file, report))
}

/// Writes a new file and fsyncs it and its directory.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Destination side of `mirror verify`: asks the source for the digests of its batches over
/// `[from, to)` page by page on a new stream and compares them with the mirror's own, computed
/// from its bytes on disk. Stops at the first difference.
pub async fn compare_with_source(
    conn: &Connection,
    agent: &Arc<AgentShared>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<PartitionVerify> {
    let p = agent.broker.partition(topic, partition)?;
    let offsets = p.offsets();
    let from = from.max(offsets.log_start_offset);
    let to = to.min(offsets.high_watermark);
    let mut verdict = PartitionVerify {
        topic: topic.to_string(),
        partition,
        from,
        to,
        batches_compared: 0,
        first_difference: None,
        detail: String::new(),
    };
    let (mut send, mut recv) = conn.open_bi().await.context("opening a verify stream")?;
    let limits = agent.limits;
    let mut scratch = Vec::new();
    let mut next = from;
    while next < to {
        write_frame(
            &mut send,
            &Frame::VerifyRequest(VerifyRequest {
                topic: topic.to_string(),
                partition,
                from: SourceOffset(next),
                to: SourceOffset(to),
            }),
            &EncodeOptions::default(),
            &limits,
            &mut scratch,
        )
        .await?;
        let answer = tokio::time::timeout(VERIFY_ANSWER_TIMEOUT, read_frame(&mut recv, &limits))
            .await
            .map_err(|_| {
                anyhow!(
                    "the source did not answer a verify request within {VERIFY_ANSWER_TIMEOUT:?}"
                )
            })??;
        let reply: VerifyReply = match answer {
            Some((Frame::VerifyReply(r), _)) => r,
            Some((Frame::Error(e), _)) => bail!("the source refused to verify: {}", e.message),
            Some((other, _)) => bail!("protocol error: expected VerifyReply, got {}", other.name()),
            None => bail!("the source closed the verify stream"),
        };
        if verdict.batches_compared == 0 && reply.source_log_start.0 > next {
            // The source no longer holds the start of the range (retention): compare from its
            // log start, the first offset both can still speak for.
            next = reply.source_log_start.0;
            verdict.from = next;
            continue;
        }
        let theirs: Vec<BatchDigest> = reply
            .batches
            .iter()
            .map(|d| BatchDigest {
                base_offset: d.base_offset.0,
                last_offset: d.last_offset.0,
                checksum: d.checksum,
            })
            .collect();
        let wanted = theirs.len().max(1);
        let ours = match mirror_digests(&p, next, to, wanted) {
            Ok(ours) => ours,
            Err((offset, error)) => {
                verdict.first_difference = Some(offset);
                verdict.detail =
                    format!("the mirror's batch at offset {offset} is damaged: {error}");
                break;
            }
        };
        if let Some(mismatch) = first_mismatch(&ours, &theirs, reply.source_high_watermark.0) {
            verdict.batches_compared += mismatch.0;
            verdict.first_difference = Some(mismatch.1);
            verdict.detail = mismatch.2;
            break;
        }
        verdict.batches_compared += ours.len() as u64;
        match ours.last() {
            Some(last) => next = last.last_offset + 1,
            None => break,
        }
    }
    let _ = send.finish();
    if verdict.first_difference.is_none() {
        verdict.detail = format!(
            "{} batches over [{from}, {to}) are identical on the source and the mirror",
            verdict.batches_compared
        );
    }
    Ok(verdict)
}

/// The mirror's digests from `next`, or the offset of the first batch that cannot be read
/// (a damaged batch fails its CRC check on read).
fn mirror_digests(
    p: &Partition,
    next: i64,
    to: i64,
    wanted: usize,
) -> std::result::Result<Vec<BatchDigest>, (i64, String)> {
    match p.batch_digests(next, to, wanted) {
        Ok(digests) => Ok(digests),
        Err(_) => {
            // Step batch by batch to name the first bad one.
            let mut at = next;
            let mut out = Vec::new();
            loop {
                match p.batch_digests(at, to, 1) {
                    Ok(one) if one.is_empty() => return Ok(out),
                    Ok(one) => {
                        at = one[0].last_offset + 1;
                        out.extend(one);
                        if out.len() >= wanted {
                            return Ok(out);
                        }
                    }
                    Err(e) => return Err((at, e.to_string())),
                }
            }
        }
    }
}

/// Compares digests pairwise: `(equal batches before, mirror offset, detail)` of the first
/// difference, or `None` if every mirror batch has its twin on the source.
fn first_mismatch(
    ours: &[BatchDigest],
    theirs: &[BatchDigest],
    source_high_watermark: i64,
) -> Option<(u64, i64, String)> {
    for (i, mine) in ours.iter().enumerate() {
        let Some(source) = theirs.get(i) else {
            return Some((
                i as u64,
                mine.base_offset,
                format!(
                    "the source has no batch at offset {} (its high watermark is {source_high_watermark})",
                    mine.base_offset
                ),
            ));
        };
        if mine != source {
            return Some((
                i as u64,
                mine.base_offset.min(source.base_offset),
                format!(
                    "batch at offset {}: mirror [{}..={}] checksum {:08x}, source [{}..={}] checksum {:08x}",
                    mine.base_offset.min(source.base_offset),
                    mine.base_offset,
                    mine.last_offset,
                    mine.checksum,
                    source.base_offset,
                    source.last_offset,
                    source.checksum
                ),
            ));
        }
    }
    None
}

/// Source side of `mirror verify`: answers each VerifyRequest on the stream with the digests
/// of its batches (at most [`MAX_VERIFY_DIGESTS`]) until the destination finishes the stream.
pub async fn serve_verify(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    broker: &broker_core::Broker,
    limits: &mirror_protocol::Limits,
    first: VerifyRequest,
) -> Result<()> {
    let mut scratch = Vec::new();
    let mut request = first;
    loop {
        let reply = match broker.partition(&request.topic, request.partition) {
            Ok(p) => {
                let offsets = p.offsets();
                match p.batch_digests(request.from.0, request.to.0, MAX_VERIFY_DIGESTS) {
                    Ok(digests) => Frame::VerifyReply(VerifyReply {
                        source_log_start: SourceOffset(offsets.log_start_offset),
                        source_high_watermark: SourceOffset(offsets.high_watermark),
                        batches: digests
                            .into_iter()
                            .map(|d| mirror_protocol::BatchDigest {
                                base_offset: SourceOffset(d.base_offset),
                                last_offset: SourceOffset(d.last_offset),
                                checksum: d.checksum,
                            })
                            .collect(),
                    }),
                    Err(e) => Frame::Error(mirror_protocol::ErrorFrame::new(
                        mirror_protocol::ErrorCode::Internal,
                        format!("reading {}-{}: {e}", request.topic, request.partition),
                    )),
                }
            }
            Err(e) => Frame::Error(mirror_protocol::ErrorFrame::new(
                mirror_protocol::ErrorCode::UnknownTopicOrPartition,
                e.to_string(),
            )),
        };
        write_frame(
            send,
            &reply,
            &EncodeOptions::default(),
            limits,
            &mut scratch,
        )
        .await?;
        match read_frame(recv, limits).await? {
            Some((Frame::VerifyRequest(next), _)) => request = next,
            Some((other, _)) => bail!("unexpected {} on a verify stream", other.name()),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(base: i64, last: i64, checksum: u32) -> BatchDigest {
        BatchDigest {
            base_offset: base,
            last_offset: last,
            checksum,
        }
    }

    #[test]
    fn first_mismatch_names_the_first_differing_or_missing_batch() {
        let ours = [d(0, 4, 1), d(5, 9, 2), d(10, 10, 3)];
        assert_eq!(first_mismatch(&ours, &ours, 11), None);
        let rewritten = [d(0, 4, 1), d(5, 9, 7), d(10, 10, 3)];
        let m = first_mismatch(&ours, &rewritten, 11).unwrap();
        assert_eq!((m.0, m.1), (1, 5));
        // The source re-batched from offset 5 on: different boundaries are a difference.
        let rebatched = [d(0, 4, 1), d(5, 7, 2)];
        assert_eq!(first_mismatch(&ours, &rebatched, 8).unwrap().1, 5);
        // The source lost its tail.
        let truncated = [d(0, 4, 1)];
        let m = first_mismatch(&ours, &truncated, 5).unwrap();
        assert_eq!((m.0, m.1), (1, 5));
        assert!(m.2.contains("no batch"));
    }
}
