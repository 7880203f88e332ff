//! The source side of a link: accepts QUIC connections from destination agents on the
//! broker's `--link-listen` address, checks the handshake, answers topic-metadata requests and
//! serves each data stream from the local partition logs.
//!
//! A data stream carries the partitions one `Subscribe` named. The server reads whole batches
//! below each partition's high watermark (only durable records leave the source), packs them
//! with a [`DataPacker`] and writes `Data` frames; QUIC flow control blocks the writer when the
//! destination is behind, so memory per stream is one packer (bounded by its size threshold)
//! plus quinn's send window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use broker_core::batch::end_offset;
use broker_core::broker::{Partition, PartitionOffsets};
use broker_core::Broker;
use bytes::Bytes;
use mirror_protocol::{
    capabilities, DataEntry, DataPacker, Diverged, DivergenceKind, EncodeOptions, ErrorCode,
    ErrorFrame, Frame, HelloOk, Limits, PackerConfig, Role, SourceOffset, Subscribe,
    SubscribePartition, TopicId, TopicInfo, TopicsReply,
};
use quinn::{Connection, RecvStream, SendStream};

use super::framing::{read_frame, write_frame};

/// Longest a caught-up stream stays silent: progress entries (high watermarks) are sent at
/// least this often so the destination's lag figures stay fresh.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Most bytes read from one partition at a time.
const MAX_READ_BYTES: usize = 1 << 20;

/// What the source side needs: the broker, the protocol limits and versions it speaks.
pub struct SourceContext {
    pub broker: Arc<Broker>,
    pub limits: Limits,
    pub versions: (u16, u16),
    /// The destination's durable offsets as acknowledged, per (link, topic, partition).
    pub acked: Mutex<HashMap<(String, String, i32), i64>>,
    /// Where a source dialling in (source-initiated links) is handed over.
    pub agent: Arc<super::AgentShared>,
    /// The live connection per (link, destination cluster): a new one supersedes the old,
    /// which is closed at once instead of being fed until its idle timeout (a restarted
    /// destination cannot close its previous process's connection itself).
    live: Mutex<HashMap<(String, String), Connection>>,
}

impl SourceContext {
    pub fn new(agent: Arc<super::AgentShared>) -> Arc<SourceContext> {
        Arc::new(SourceContext {
            broker: agent.broker.clone(),
            limits: agent.limits,
            versions: agent.versions,
            acked: Mutex::new(HashMap::new()),
            agent,
            live: Mutex::new(HashMap::new()),
        })
    }
}

/// Accepts connections until the endpoint closes.
pub async fn run_listener(endpoint: quinn::Endpoint, ctx: Arc<SourceContext>) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => match serve_connection(conn, ctx).await {
                    Err(e) if !format!("{e:#}").contains("closed by peer: 0") => {
                        tracing::warn!(%remote, error = format!("{e:#}"), "link connection ended")
                    }
                    _ => tracing::info!(%remote, "link connection closed by the destination"),
                },
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "link connection refused during the handshake")
                }
            }
        });
    }
}

/// Picks the highest protocol version both sides speak.
pub fn negotiate(ours: (u16, u16), theirs: (u16, u16)) -> Option<u16> {
    let version = ours.1.min(theirs.1);
    (version >= ours.0.max(theirs.0)).then_some(version)
}

/// Writes a final `Reject` or `Error` frame and finishes the stream; whether it went out.
async fn write_last_frame(send: &mut SendStream, ctx: &SourceContext, frame: Frame) -> bool {
    let sent = write_frame(
        send,
        &frame,
        &EncodeOptions::default(),
        &ctx.limits,
        &mut Vec::new(),
    )
    .await
    .is_ok();
    let _ = send.finish();
    sent
}

async fn reject(
    conn: &Connection,
    send: &mut SendStream,
    ctx: &SourceContext,
    code: ErrorCode,
    message: String,
) -> anyhow::Error {
    let frame = Frame::Reject(ErrorFrame {
        code,
        message: message.clone(),
    });
    if write_last_frame(send, ctx, frame).await {
        // Give the reject a moment to reach the peer before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(quinn::VarInt::from_u32(1), message.as_bytes());
    anyhow!("refused the link: {message}")
}

async fn serve_connection(conn: Connection, ctx: Arc<SourceContext>) -> Result<()> {
    let remote = conn.remote_address();
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .context("waiting for the control stream")?;
    let hello = match read_frame(&mut recv, &ctx.limits).await? {
        Some((Frame::Hello(h), _)) => h,
        Some((other, _)) => {
            return Err(reject(
                &conn,
                &mut send,
                &ctx,
                ErrorCode::MalformedFrame,
                format!("expected Hello, got {}", other.name()),
            )
            .await)
        }
        None => bail!("peer closed the control stream before Hello"),
    };
    let Some(version) = negotiate(ctx.versions, (hello.min_version, hello.max_version)) else {
        return Err(reject(
            &conn,
            &mut send,
            &ctx,
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version mismatch: the peer speaks versions {}..={}, this agent {}..={}",
                hello.min_version, hello.max_version, ctx.versions.0, ctx.versions.1
            ),
        )
        .await);
    };
    if hello.role == Role::Source {
        // A source dialling out to us (a source-initiated link defined on this destination).
        let sender = ctx
            .agent
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hello.link_name)
            .cloned();
        let Some(sender) = sender else {
            return Err(reject(
                &conn,
                &mut send,
                &ctx,
                ErrorCode::LinkRefused,
                format!(
                    "no source-initiated link named `{}` is defined on this destination (create it with `strait link create {} --source-initiated ...`)",
                    hello.link_name, hello.link_name
                ),
            )
            .await);
        };
        write_frame(
            &mut send,
            &Frame::HelloOk(HelloOk {
                version,
                cluster_id: ctx.broker.cluster_id.clone(),
                capabilities: capabilities::ZSTD | capabilities::SOURCE_INITIATED,
            }),
            &EncodeOptions::default(),
            &ctx.limits,
            &mut Vec::new(),
        )
        .await?;
        tracing::info!(%remote, link = %hello.link_name, source_cluster = %hello.cluster_id, "source dialled in");
        let handed = super::Inbound {
            conn,
            send,
            recv,
            source_cluster_id: hello.cluster_id,
            version,
        };
        if sender.send(handed).await.is_err() {
            bail!(
                "link `{}` stopped while its source dialled in",
                hello.link_name
            );
        }
        return Ok(());
    }
    let mut scratch = Vec::new();
    write_frame(
        &mut send,
        &Frame::HelloOk(HelloOk {
            version,
            cluster_id: ctx.broker.cluster_id.clone(),
            capabilities: capabilities::ZSTD,
        }),
        &EncodeOptions::default(),
        &ctx.limits,
        &mut scratch,
    )
    .await?;
    let link = hello.link_name.clone();
    tracing::info!(%remote, link = %link, destination_cluster = %hello.cluster_id, version, "link connected");
    let previous = ctx
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((link.clone(), hello.cluster_id.clone()), conn.clone());
    if let Some(old) = previous {
        if old.stable_id() != conn.stable_id() {
            tracing::info!(link = %link, old = %old.remote_address(), "closing the connection this one supersedes");
            old.close(
                quinn::VarInt::from_u32(2),
                b"superseded by a new connection",
            );
        }
    }
    serve_established(conn, send, recv, ctx, link, version).await
}

/// Serves an established link connection as its source: topic metadata on the control stream,
/// data on the streams the destination opens. Returns when the connection ends.
pub async fn serve_established(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<SourceContext>,
    link: String,
    version: u16,
) -> Result<()> {
    let data_conn = conn.clone();
    let data_ctx = ctx.clone();
    let data_link = link.clone();
    let streams = tokio::spawn(async move {
        loop {
            match data_conn.accept_bi().await {
                Ok((send, recv)) => {
                    let ctx = data_ctx.clone();
                    let link = data_link.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            serve_data_stream(send, recv, ctx, link.clone(), version).await
                        {
                            tracing::debug!(link = %link, error = format!("{e:#}"), "data stream ended");
                        }
                    });
                }
                Err(_) => return,
            }
        }
    });
    let result = control_loop(&mut send, &mut recv, &ctx, version).await;
    streams.abort();
    result
}

async fn control_loop(
    send: &mut SendStream,
    recv: &mut RecvStream,
    ctx: &SourceContext,
    version: u16,
) -> Result<()> {
    let mut scratch = Vec::new();
    while let Some((frame, _)) = read_frame(recv, &ctx.limits).await? {
        let reply = match frame {
            Frame::TopicsRequest(req) => match req.filter.compile() {
                Ok(filter) => Frame::TopicsReply(TopicsReply {
                    topics: ctx
                        .broker
                        .topics()
                        .into_iter()
                        .filter(|t| filter.matches(&t.name))
                        .map(|t| TopicInfo {
                            name: t.name.clone(),
                            partitions: t.partition_count(),
                            configs: t
                                .config()
                                .overrides()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            // Version 1 peers reject the extension.
                            topic_id: (version >= 2).then(|| TopicId(*t.id.as_bytes())),
                        })
                        .collect(),
                }),
                Err(e) => Frame::Error(ErrorFrame {
                    code: e.code(),
                    message: e.to_string(),
                }),
            },
            other => Frame::Error(ErrorFrame {
                code: ErrorCode::MalformedFrame,
                message: format!("unexpected {} on the control stream", other.name()),
            }),
        };
        write_frame(
            send,
            &reply,
            &EncodeOptions::default(),
            &ctx.limits,
            &mut scratch,
        )
        .await?;
    }
    Ok(())
}

/// The Diverged frame for a partition whose log now ends below the mirror's end.
fn source_truncated(
    topic: &str,
    partition: i32,
    mirror_end: i64,
    offsets: &PartitionOffsets,
) -> Diverged {
    Diverged {
        topic: topic.to_string(),
        partition,
        kind: DivergenceKind::SourceTruncated,
        mirror_end: SourceOffset(mirror_end),
        source_log_start: SourceOffset(offsets.log_start_offset),
        source_log_end: SourceOffset(offsets.log_end_offset),
        message: ErrorFrame::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "the source log of {topic}-{partition} ends at offset {} but the mirror holds records up to {}: the source lost records the mirror has",
                offsets.log_end_offset, mirror_end
            ),
        )
        .message,
    }
}

/// Checks a resubscribing destination's claims about a partition (version 2): same source
/// topic, and the source's batch at the mirror's last batch offset is the mirror's last batch.
/// Returns the divergence, if any. Without claims (a version-1 destination) nothing is checked.
fn check_resume(
    broker: &Broker,
    partition: &Partition,
    sub: &SubscribePartition,
) -> Option<Diverged> {
    let offsets = partition.offsets();
    let diverged = |kind, message: String| Diverged {
        topic: sub.topic.clone(),
        partition: sub.partition,
        kind,
        mirror_end: sub.start,
        source_log_start: SourceOffset(offsets.log_start_offset),
        source_log_end: SourceOffset(offsets.log_end_offset),
        message: ErrorFrame::new(ErrorCode::Internal, message).message,
    };
    if let (Some(claimed), Some(topic)) = (sub.resume.source_topic_id, broker.topic(&sub.topic)) {
        let actual = TopicId(*topic.id.as_bytes());
        if claimed != actual {
            return Some(diverged(
                DivergenceKind::TopicRecreated,
                format!(
                    "the source topic {} has id {actual} but the mirror follows {claimed}: it was deleted and created again",
                    sub.topic
                ),
            ));
        }
    }
    if sub.resume.is_empty() {
        return None;
    }
    if sub.start.0 > offsets.log_end_offset {
        return Some(source_truncated(
            &sub.topic,
            sub.partition,
            sub.start.0,
            &offsets,
        ));
    }
    let anchor = sub.resume.last_batch?;
    if anchor.base_offset.0 < offsets.log_start_offset {
        // Retention removed the batch: nothing left to compare it with.
        return None;
    }
    let found = match partition.batch_at(anchor.base_offset.0) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(topic = %sub.topic, partition = sub.partition, error = %e, "cannot read the batch at the mirror's resume point");
            return None;
        }
    };
    let same = found.is_some_and(|h| {
        h.base_offset == anchor.base_offset.0
            && h.last_offset() == anchor.last_offset.0
            && h.crc == anchor.crc
            && h.partition_leader_epoch == anchor.leader_epoch
    });
    if same {
        return None;
    }
    let theirs = found.map_or("no batch".to_string(), |h| {
        format!(
            "batch [{}..={}] epoch {} crc {:08x}",
            h.base_offset,
            h.last_offset(),
            h.partition_leader_epoch,
            h.crc
        )
    });
    Some(diverged(
        DivergenceKind::HistoryRewritten,
        format!(
            "at offset {} the source has {theirs} but the mirror has batch [{}..={}] epoch {} crc {:08x}: the source's log was truncated and rewritten",
            anchor.base_offset, anchor.base_offset, anchor.last_offset, anchor.leader_epoch, anchor.crc
        ),
    ))
}

/// One subscribed partition and the next offset to send.
struct Cursor {
    topic: String,
    partition: Arc<Partition>,
    next: i64,
}

impl Cursor {
    /// An entry for this partition carrying `offsets` and no batches yet (progress only).
    fn entry(&self, offsets: &PartitionOffsets) -> DataEntry {
        DataEntry {
            topic: self.topic.clone(),
            partition: self.partition.index,
            source_log_start: SourceOffset(offsets.log_start_offset),
            source_high_watermark: SourceOffset(offsets.high_watermark),
            batches: Bytes::new(),
        }
    }
}

async fn send_error(
    send: &mut SendStream,
    ctx: &SourceContext,
    code: ErrorCode,
    message: String,
) -> anyhow::Error {
    let frame = Frame::Error(ErrorFrame {
        code,
        message: message.clone(),
    });
    write_last_frame(send, ctx, frame).await;
    anyhow!(message)
}

async fn serve_data_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<SourceContext>,
    link: String,
    version: u16,
) -> Result<()> {
    let sub: Subscribe = match read_frame(&mut recv, &ctx.limits).await? {
        Some((Frame::Subscribe(s), _)) => s,
        Some((Frame::VerifyRequest(request), _)) if version >= 2 => {
            return super::divergence::serve_verify(
                &mut send,
                &mut recv,
                &ctx.broker,
                &ctx.limits,
                request,
            )
            .await;
        }
        Some((other, _)) => {
            return Err(send_error(
                &mut send,
                &ctx,
                ErrorCode::MalformedFrame,
                format!("expected Subscribe, got {}", other.name()),
            )
            .await)
        }
        None => return Ok(()),
    };
    let mut cursors = Vec::with_capacity(sub.partitions.len());
    let mut scratch = Vec::new();
    for p in &sub.partitions {
        match ctx.broker.partition(&p.topic, p.partition) {
            Ok(partition) => {
                if let Some(diverged) = check_resume(&ctx.broker, &partition, p) {
                    tracing::warn!(link = %link, topic = %p.topic, partition = p.partition, kind = diverged.kind.as_str(),
                        reason = %diverged.message, "the destination's mirror is not this partition's history: not serving it");
                    write_frame(
                        &mut send,
                        &Frame::Diverged(diverged),
                        &EncodeOptions::default(),
                        &ctx.limits,
                        &mut scratch,
                    )
                    .await?;
                    continue;
                }
                cursors.push(Cursor {
                    topic: p.topic.clone(),
                    partition,
                    next: p.start.0,
                })
            }
            Err(e) => {
                return Err(send_error(
                    &mut send,
                    &ctx,
                    ErrorCode::UnknownTopicOrPartition,
                    e.to_string(),
                )
                .await)
            }
        }
    }
    let opts = EncodeOptions {
        zstd_level: sub.options.zstd_level,
        ..EncodeOptions::default()
    };
    let mut packer = DataPacker::new(PackerConfig {
        max_bytes: (sub.options.max_bytes as usize).clamp(16 << 10, ctx.limits.max_frame_bytes / 2),
        linger: Duration::from_millis(u64::from(sub.options.linger_ms)),
    });
    // Acks arrive on the same stream; a finished receive side means the destination is gone.
    let ack_ctx = ctx.clone();
    let ack_link = link.clone();
    let mut acks = tokio::spawn(async move {
        while let Ok(Some((frame, _))) = read_frame(&mut recv, &ack_ctx.limits).await {
            if let Frame::Ack(ack) = frame {
                let mut acked = ack_ctx.acked.lock().unwrap_or_else(|p| p.into_inner());
                for e in ack.entries {
                    acked.insert((ack_link.clone(), e.topic, e.partition), e.durable.0);
                }
            }
        }
    });
    let mut last_sent = Instant::now();
    let result: Result<()> = async {
        loop {
            let notified = ctx.broker.data_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut read_any = false;
            let now = Instant::now();
            let mut truncated = None;
            for (i, c) in cursors.iter_mut().enumerate() {
                if packer.is_full() {
                    break;
                }
                let offsets = c.partition.offsets();
                if c.next > offsets.log_end_offset && version >= 2 {
                    // The log lost records the destination already has, under this stream.
                    truncated = Some((i, source_truncated(&c.topic, c.partition.index, c.next, &offsets)));
                    break;
                }
                if c.next > offsets.log_end_offset {
                    return Err(send_error(
                        &mut send,
                        &ctx,
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "{}-{}: the destination is at offset {} but the source's log ends at {}",
                            c.topic, c.partition.index, c.next, offsets.log_end_offset
                        ),
                    )
                    .await);
                }
                let mut entry = c.entry(&offsets);
                if c.next < offsets.log_start_offset {
                    // Retention removed records the destination never got: it restarts its
                    // log at our log start (it learns that from this entry).
                    c.next = offsets.log_start_offset;
                    packer.push(entry, now);
                    read_any = true;
                    continue;
                }
                if c.next >= offsets.high_watermark {
                    continue;
                }
                let data = match c.partition.read(c.next, MAX_READ_BYTES, false) {
                    Ok((data, _)) => data,
                    Err(e) => {
                        // Retention may have moved the start between offsets() and read().
                        tracing::debug!(topic = %c.topic, partition = c.partition.index, error = %e, "read failed; retrying");
                        continue;
                    }
                };
                let Some(end) = end_offset(&data) else {
                    continue;
                };
                c.next = end;
                read_any = true;
                entry.batches = Bytes::from(data);
                packer.push(entry, now);
            }
            if let Some((i, diverged)) = truncated {
                tracing::warn!(link = %link, topic = %diverged.topic, partition = diverged.partition,
                    reason = %diverged.message, "source log truncated below the mirror's end: no longer serving the partition");
                // Whatever is packed for it came before the truncation: send it first.
                if let Some(data) = packer.take() {
                    write_frame(&mut send, &Frame::Data(data), &opts, &ctx.limits, &mut scratch).await?;
                }
                write_frame(&mut send, &Frame::Diverged(diverged), &opts, &ctx.limits, &mut scratch).await?;
                cursors.remove(i);
                continue;
            }
            let now = Instant::now();
            if packer.ready(now) {
                if let Some(data) = packer.take() {
                    write_frame(&mut send, &Frame::Data(data), &opts, &ctx.limits, &mut scratch).await?;
                    last_sent = now;
                }
            }
            if read_any {
                tokio::task::yield_now().await;
                continue;
            }
            if packer.pending_bytes() == 0 && last_sent.elapsed() >= PROGRESS_INTERVAL {
                let entries = cursors
                    .iter()
                    .map(|c| c.entry(&c.partition.offsets()))
                    .collect();
                write_frame(
                    &mut send,
                    &Frame::Data(mirror_protocol::Data { entries }),
                    &opts,
                    &ctx.limits,
                    &mut scratch,
                )
                .await?;
                last_sent = Instant::now();
            }
            let wait = packer
                .deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(PROGRESS_INTERVAL)
                .min(PROGRESS_INTERVAL);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = &mut acks => bail!("the destination closed the stream"),
            }
        }
    }
    .await;
    acks.abort();
    result
}

#[cfg(test)]
mod tests {
    use broker_core::batch::build_uncompressed;
    use broker_core::broker::{BrokerConfig, NewTopic};
    use broker_core::config::TopicConfig;
    use broker_core::durability::FsyncPolicy;
    use mirror_protocol::{BatchAnchor, ResumeCheck};

    use super::*;

    fn broker(dir: &std::path::Path) -> Arc<Broker> {
        Broker::open(BrokerConfig::new(
            dir.to_path_buf(),
            "127.0.0.1".into(),
            9092,
        ))
        .unwrap()
    }

    fn append(b: &Broker, topic: &str, value: &[u8]) {
        b.partition(topic, 0)
            .unwrap()
            .append_produced(
                build_uncompressed(&[(None, value)], 1_000),
                &TopicConfig::default(),
                FsyncPolicy::Never,
                &b.data_arrived,
            )
            .unwrap();
    }

    fn subscription(start: i64, resume: ResumeCheck) -> SubscribePartition {
        SubscribePartition {
            topic: "t".into(),
            partition: 0,
            start: SourceOffset(start),
            resume,
        }
    }

    /// The anchor a mirror of `b`'s `t`-0 would send after copying offsets below `end`.
    fn anchor_at(b: &Broker, offset: i64) -> BatchAnchor {
        let h = b
            .partition("t", 0)
            .unwrap()
            .batch_at(offset)
            .unwrap()
            .unwrap();
        BatchAnchor {
            base_offset: SourceOffset(h.base_offset),
            last_offset: SourceOffset(h.last_offset()),
            leader_epoch: h.partition_leader_epoch,
            crc: h.crc,
        }
    }

    #[test]
    fn resume_checks_accept_the_same_history_and_name_each_divergence() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path());
        let topic = b
            .create_topic(NewTopic {
                name: "t".into(),
                partitions: 1,
                config: TopicConfig::default(),
            })
            .unwrap();
        for i in 0..5u8 {
            append(&b, "t", &[b'a' + i]);
        }
        let p = b.partition("t", 0).unwrap();
        let id = TopicId(*topic.id.as_bytes());
        let same = ResumeCheck {
            source_topic_id: Some(id),
            last_batch: Some(anchor_at(&b, 2)),
        };
        // A mirror at 3 whose last batch is the source's: continue (also with no claims).
        assert_eq!(check_resume(&b, &p, &subscription(3, same)), None);
        assert_eq!(
            check_resume(&b, &p, &subscription(9, ResumeCheck::default())),
            None
        );
        // Another topic id.
        let other = ResumeCheck {
            source_topic_id: Some(TopicId([9; 16])),
            ..same
        };
        let d = check_resume(&b, &p, &subscription(3, other)).unwrap();
        assert_eq!(d.kind, DivergenceKind::TopicRecreated);
        // The mirror is past the source's end.
        let beyond = ResumeCheck {
            last_batch: Some(BatchAnchor {
                base_offset: SourceOffset(6),
                last_offset: SourceOffset(6),
                ..anchor_at(&b, 4)
            }),
            ..same
        };
        let d = check_resume(&b, &p, &subscription(7, beyond)).unwrap();
        assert_eq!(d.kind, DivergenceKind::SourceTruncated);
        assert_eq!((d.mirror_end.0, d.source_log_end.0), (7, 5));
        // Same offsets, other bytes (CRC): the source's history was rewritten.
        let rewritten = ResumeCheck {
            last_batch: Some(BatchAnchor {
                crc: anchor_at(&b, 2).crc ^ 1,
                ..anchor_at(&b, 2)
            }),
            ..same
        };
        let d = check_resume(&b, &p, &subscription(3, rewritten)).unwrap();
        assert_eq!(d.kind, DivergenceKind::HistoryRewritten);
        assert!(d.message.contains("at offset 2"), "{}", d.message);
        // Another leader epoch at the same offsets is a divergence too.
        let epoch = ResumeCheck {
            last_batch: Some(BatchAnchor {
                leader_epoch: 7,
                ..anchor_at(&b, 2)
            }),
            ..same
        };
        assert_eq!(
            check_resume(&b, &p, &subscription(3, epoch)).map(|d| d.kind),
            Some(DivergenceKind::HistoryRewritten)
        );
        // Retention removed the anchor's batch: nothing to compare, no false alarm.
        p.delete_records_before(4).unwrap();
        let old = ResumeCheck {
            last_batch: Some(BatchAnchor {
                crc: 12345,
                ..anchor_at(&b, 4)
            }),
            ..same
        };
        let gone = ResumeCheck {
            last_batch: Some(BatchAnchor {
                base_offset: SourceOffset(2),
                last_offset: SourceOffset(2),
                ..old.last_batch.unwrap()
            }),
            ..same
        };
        assert_eq!(check_resume(&b, &p, &subscription(3, gone)), None);
    }
}
