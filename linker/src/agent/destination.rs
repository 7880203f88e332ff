//! The destination side of a link: dials the source agent, keeps the mirror topics' metadata
//! in step with the source (new topics, partitions, config changes), and runs the data streams
//! that append the source's batches at their source offsets.
//!
//! Exactly-once by construction: every data stream subscribes from the destination's log end
//! offset, and batches already present are skipped, so a reconnect, a crash of either broker
//! or a resent frame can neither lose nor double a record. Acks go back only once the appended
//! records are durable under the broker's fsync policy.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use broker_core::broker::MirrorSource;
use broker_core::broker::{NewTopic, Partition};
use broker_core::config::TopicConfig;
use mirror_protocol::{
    capabilities, Ack, AckEntry, BatchAnchor, EncodeOptions, Frame, Hello, HelloOk, ResumeCheck,
    Role, SourceOffset, StreamOptions, Subscribe, SubscribePartition, TopicFilter, TopicId,
    TopicInfo, TopicsRequest, TransportSettings,
};
use quinn::Connection;
use tokio::task::JoinSet;

use super::divergence::{self, LinkRequest};
use super::framing::{read_frame, read_frame_budgeted, write_frame};
use super::status::LinkShared;
use super::AgentShared;
use crate::model::{LinkSpec, LinkState};

/// How often the destination asks the source for topic metadata.
const METADATA_INTERVAL: Duration = Duration::from_millis(1000);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A source sends data or progress on every stream at least once a second; this much silence
/// (on a data stream, or for a metadata answer) means the path is gone even if QUIC has not
/// given up yet (after a long partition its probe timeouts have backed off to seconds), so the
/// link redials rather than wait.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Longest a QUIC handshake may take before the attempt is abandoned and retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FATAL_BACKOFF: Duration = Duration::from_secs(30);

/// An error retrying will not fix without a change (certificates, versions, refusal).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Runs a link until the task is aborted: connect, mirror, and on any failure reconnect with
/// exponential backoff; the status shows why.
pub async fn run_link(agent: Arc<AgentShared>, spec: LinkSpec, shared: Arc<LinkShared>) {
    retry_forever(&spec, &shared, || {
        connect_and_mirror(&agent, &spec, &shared)
    })
    .await
}

/// Runs `attempt` again and again (a link's life): after a failure the status shows the
/// reason; errors retrying cannot fix (certificates, versions, refusals) mark the link failed
/// and are retried slowly, others with exponential backoff up to 10 s.
pub async fn retry_forever<F, Fut>(spec: &LinkSpec, shared: &LinkShared, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let err = match attempt().await {
            Ok(()) => anyhow!("the peer closed the connection"),
            Err(e) => e,
        };
        let message = format!("{err:#}");
        tracing::warn!(link = %spec.name, error = %message, "link interrupted; reconnecting");
        shared.set_error(message.clone());
        let fatal = err.downcast_ref::<Fatal>().is_some() || looks_like_tls_failure(&message);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let wait = if fatal {
            shared.set_state(LinkState::Failed(message));
            FATAL_BACKOFF
        } else {
            shared.set_state(LinkState::Connecting(Some(message)));
            backoff
        };
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A source-initiated link on the destination: waits for the source to dial in (the link
/// listener hands the connection over) and mirrors over each connection it gets.
pub async fn run_inbound_link(
    agent: Arc<AgentShared>,
    spec: LinkSpec,
    shared: Arc<LinkShared>,
    mut inbound: tokio::sync::mpsc::Receiver<super::Inbound>,
) {
    shared.set_state(LinkState::Connecting(Some(
        "waiting for the source to dial in".into(),
    )));
    while let Some(handed) = inbound.recv().await {
        shared.connected(handed.source_cluster_id.clone());
        let result = mirror_established(
            Established {
                conn: handed.conn,
                send: handed.send,
                recv: handed.recv,
                version: handed.version,
                source_cluster_id: handed.source_cluster_id,
            },
            &agent,
            &spec,
            &shared,
        )
        .await;
        let message = match result {
            Ok(()) => "the source closed the connection".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(link = %spec.name, error = %message, "link interrupted; waiting for the source to dial in again");
        shared.set_error(message.clone());
        shared.set_state(LinkState::Connecting(Some(format!(
            "{message}; waiting for the source to dial in"
        ))));
    }
}

fn looks_like_tls_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("certificate") || m.contains("cryptographic handshake") || m.contains("tls")
}

pub fn transport_settings(agent: &AgentShared, spec: &LinkSpec) -> TransportSettings {
    TransportSettings {
        rtt: Duration::from_millis(spec.rtt_ms.max(1)),
        bandwidth_bytes_per_sec: spec.bandwidth_mbit.max(1) * 1_000_000 / 8,
        congestion: agent.congestion,
        ..TransportSettings::default()
    }
}

fn filter_of(spec: &LinkSpec) -> TopicFilter {
    TopicFilter {
        names: spec.topics.names.clone(),
        prefixes: spec.topics.prefixes.clone(),
        regexes: spec.topics.regexes.clone(),
    }
}

async fn connect_and_mirror(
    agent: &Arc<AgentShared>,
    spec: &LinkSpec,
    shared: &Arc<LinkShared>,
) -> Result<()> {
    let dialled = dial(agent, spec, &spec.source_addr, Role::Destination).await?;
    tracing::info!(link = %spec.name, source_cluster = %dialled.hello_ok.cluster_id, version = dialled.hello_ok.version, "link connected to the source");
    shared.connected(dialled.hello_ok.cluster_id.clone());
    let result = mirror_established(
        Established {
            conn: dialled.conn,
            send: dialled.send,
            recv: dialled.recv,
            version: dialled.hello_ok.version,
            source_cluster_id: dialled.hello_ok.cluster_id.clone(),
        },
        agent,
        spec,
        shared,
    )
    .await;
    dialled
        .endpoint
        .close(quinn::VarInt::from_u32(0), b"link stopped");
    result
}

/// A connection this agent dialled, past the handshake.
pub struct Dialled {
    pub endpoint: quinn::Endpoint,
    pub conn: Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub hello_ok: HelloOk,
}

/// Dials the peer agent at `addr` (the source, or for a source-initiated link the
/// destination), opens the control stream and says Hello as `role`. Certificate, version and
/// refusal errors are [`Fatal`]; the caller closes `endpoint` when done with the connection.
pub async fn dial(agent: &AgentShared, spec: &LinkSpec, addr: &str, role: Role) -> Result<Dialled> {
    let peer = match role {
        Role::Destination => "source",
        Role::Source => "destination",
    };
    let identity = agent
        .identity
        .as_ref()
        .ok_or_else(|| Fatal("this broker has no link certificate: start it with --link-ca, --link-cert and --link-key".into()))?;
    let remote: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve the {peer} address {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
    let client = mirror_protocol::client_config(identity, &transport_settings(agent, spec))
        .map_err(|e| Fatal(format!("link TLS configuration: {e}")))?;
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
    endpoint.set_default_client_config(client);
    let handshake = async {
        let connecting = endpoint
            .connect(remote, &spec.server_name)
            .context("starting the connection")?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                anyhow!("no answer from the {peer} at {remote} within {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("connecting to the {peer} at {remote}"))?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
        let capabilities = match role {
            Role::Destination => capabilities::ZSTD,
            Role::Source => capabilities::ZSTD | capabilities::SOURCE_INITIATED,
        };
        write_frame(
            &mut send,
            &Frame::Hello(Hello {
                min_version: agent.versions.0,
                max_version: agent.versions.1,
                link_name: spec.name.clone(),
                cluster_id: agent.broker.cluster_id.clone(),
                role,
                capabilities,
            }),
            &EncodeOptions::default(),
            &agent.limits,
            &mut Vec::new(),
        )
        .await
        .context("sending Hello")?;
        let answer = read_frame(&mut recv, &agent.limits)
            .await
            .with_context(|| {
                format!("waiting for the {peer}'s answer to Hello (a TLS refusal shows up here)")
            })?;
        let hello_ok = match answer {
            Some((Frame::HelloOk(ok), _)) => ok,
            Some((Frame::Reject(r), _)) => {
                return Err(Fatal(format!(
                    "the {peer} refused the link ({:?}): {}",
                    r.code, r.message
                ))
                .into())
            }
            Some((other, _)) => bail!("protocol error: expected HelloOk, got {}", other.name()),
            None => bail!("the {peer} closed the control stream during the handshake"),
        };
        anyhow::Ok((conn, send, recv, hello_ok))
    };
    match handshake.await {
        Ok((conn, send, recv, hello_ok)) => Ok(Dialled {
            endpoint,
            conn,
            send,
            recv,
            hello_ok,
        }),
        Err(e) => {
            endpoint.close(quinn::VarInt::from_u32(0), b"handshake failed");
            Err(e)
        }
    }
}

/// A connection to the source past its handshake.
pub struct Established {
    pub conn: Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// The negotiated protocol version (2 and up: continuity checks).
    pub version: u16,
    pub source_cluster_id: String,
}

/// Closes the link's request channel when the connection's task ends.
struct RequestsOpen<'a>(&'a LinkShared);

impl Drop for RequestsOpen<'_> {
    fn drop(&mut self) {
        self.0.close_requests();
    }
}

/// Mirrors over an established connection (whichever side dialled): topic metadata on the
/// control stream, data streams opened by this destination, and the admin API's requests
/// (verify) on streams of their own.
async fn mirror_established(
    established: Established,
    agent: &Arc<AgentShared>,
    spec: &LinkSpec,
    shared: &Arc<LinkShared>,
) -> Result<()> {
    let Established {
        conn,
        mut send,
        mut recv,
        version,
        source_cluster_id,
    } = established;
    if version < 2 {
        tracing::warn!(link = %spec.name, version, "the source speaks link protocol version 1: divergence checks (topic ids, resume points) are not available on this connection");
    }
    let mut requests = shared.open_requests();
    let _requests_open = RequestsOpen(shared);
    let limits = agent.limits;
    let mut scratch = Vec::new();
    let plain = EncodeOptions::default();
    let filter = filter_of(spec);
    let mut subscribed: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut lanes: JoinSet<Result<()>> = JoinSet::new();
    let mut ticker = tokio::time::interval(METADATA_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                write_frame(&mut send, &Frame::TopicsRequest(TopicsRequest { filter: filter.clone() }), &plain, &limits, &mut scratch).await?;
                let answer = tokio::time::timeout(SILENCE_LIMIT, read_frame(&mut recv, &limits))
                    .await
                    .map_err(|_| anyhow!("no metadata answer from the source within {SILENCE_LIMIT:?}"))??;
                let topics = match answer {
                    Some((Frame::TopicsReply(reply), _)) => reply.topics,
                    Some((Frame::Error(e), _)) => return Err(Fatal(format!("the source rejected the topic selection: {}", e.message)).into()),
                    Some((other, _)) => bail!("protocol error: expected TopicsReply, got {}", other.name()),
                    None => bail!("the source closed the control stream"),
                };
                let synced = sync_topics(agent, spec, shared, &topics, &source_cluster_id)?;
                if synced.reseeded {
                    bail!("re-seeded diverged mirror partitions (policy on-divergence=reseed); reconnecting to resubscribe them");
                }
                let ready = synced.ready;
                let new: Vec<(String, i32)> = ready.into_iter().filter(|p| !subscribed.contains(p)).collect();
                if !new.is_empty() {
                    let groups = if subscribed.is_empty() { spec.streams.max(1) } else { 1 };
                    for group in spread(&new, groups) {
                        let conn = conn.clone();
                        let agent = agent.clone();
                        let spec = spec.clone();
                        let shared = shared.clone();
                        lanes.spawn(async move { run_lane(conn, agent, spec, shared, group, version).await });
                    }
                    subscribed.extend(new);
                }
                shared.tick_rates();
            }
            Some(ended) = lanes.join_next() => {
                match ended {
                    Ok(Ok(())) => bail!("the source closed a data stream"),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => bail!("a data stream task failed: {e}"),
                }
            }
            Some(request) = requests.recv() => {
                let (conn, agent) = (conn.clone(), agent.clone());
                tokio::spawn(async move { serve_request(conn, agent, request, version).await });
            }
            reason = conn.closed() => {
                return Err(anyhow!("connection lost: {reason}"));
            }
        }
    }
}

/// Does one admin request on the live connection and sends the answer back.
async fn serve_request(
    conn: Connection,
    agent: Arc<AgentShared>,
    request: LinkRequest,
    version: u16,
) {
    match request {
        LinkRequest::Verify {
            topic,
            partition,
            from,
            to,
            reply,
        } => {
            let result = if version < 2 {
                Err("the source speaks link protocol version 1, which cannot verify".to_string())
            } else {
                divergence::compare_with_source(&conn, &agent, &topic, partition, from, to)
                    .await
                    .map_err(|e| format!("{e:#}"))
            };
            let _ = reply.send(result);
        }
    }
}

/// Splits partitions into at most `n` groups, round robin (a topic's partitions spread out).
fn spread(parts: &[(String, i32)], n: usize) -> Vec<Vec<(String, i32)>> {
    let n = n.clamp(1, parts.len().max(1));
    let mut groups = vec![Vec::new(); n];
    for (i, p) in parts.iter().enumerate() {
        groups[i % n].push(p.clone());
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// What a metadata round decided.
struct Synced {
    /// Partitions ready to be mirrored (not diverged).
    ready: Vec<(String, i32)>,
    /// Whether the divergence policy re-seeded partitions (they must be resubscribed).
    reseeded: bool,
}

/// Brings the mirror topics in line with the source's metadata and checks that each still
/// follows the same source topic (id and cluster); returns the partitions that are ready to be
/// mirrored. Errors only if a divergence cannot be recorded.
fn sync_topics(
    agent: &AgentShared,
    spec: &LinkSpec,
    shared: &LinkShared,
    topics: &[TopicInfo],
    source_cluster_id: &str,
) -> Result<Synced> {
    let broker = &agent.broker;
    let mut ready = Vec::new();
    let mut reseeded = false;
    let mut names = Vec::new();
    for info in topics {
        let config = match TopicConfig::from_pairs(
            info.configs
                .iter()
                .filter(|(k, _)| broker_core::config::definition(k).is_some())
                .map(|(k, v)| (k.as_str(), Some(v.as_str()))),
        ) {
            Ok(c) => c,
            Err(e) => {
                shared.partition_failure(
                    &info.name,
                    0,
                    Some(format!("source config rejected: {e}")),
                );
                continue;
            }
        };
        let topic = match broker.topic(&info.name) {
            None => match broker.create_mirror_topic(
                NewTopic {
                    name: info.name.clone(),
                    partitions: info.partitions,
                    config: config.clone(),
                },
                &spec.name,
            ) {
                Ok(t) => {
                    tracing::info!(link = %spec.name, topic = %info.name, partitions = info.partitions, "created mirror topic");
                    if let Some(id) = info.topic_id {
                        broker.set_mirror_source(
                            &info.name,
                            Some(MirrorSource {
                                cluster_id: source_cluster_id.to_string(),
                                topic_id: uuid::Uuid::from_bytes(id.0),
                            }),
                        )?;
                    }
                    t
                }
                Err(e) => {
                    shared.partition_failure(
                        &info.name,
                        0,
                        Some(format!("cannot create the mirror topic: {e}")),
                    );
                    continue;
                }
            },
            Some(t) => t,
        };
        if topic.mirror_link().as_deref() != Some(spec.name.as_str()) {
            shared.partition_failure(
                &info.name,
                0,
                Some(format!(
                    "a topic of that name exists on the destination and is not a mirror of link `{}`",
                    spec.name
                )),
            );
            continue;
        }
        if info.partitions > topic.partition_count() {
            match broker.create_partitions(&info.name, info.partitions, false) {
                Ok(()) => {
                    tracing::info!(link = %spec.name, topic = %info.name, partitions = info.partitions, "mirror topic grew")
                }
                Err(e) => {
                    tracing::warn!(link = %spec.name, topic = %info.name, error = %e, "cannot add partitions to the mirror topic")
                }
            }
        }
        let current = topic.config();
        let differs =
            current.overrides().collect::<Vec<_>>() != config.overrides().collect::<Vec<_>>();
        if differs {
            match broker.set_topic_config(&info.name, config) {
                Ok(()) => {
                    tracing::info!(link = %spec.name, topic = %info.name, "mirror topic config updated from the source")
                }
                Err(e) => {
                    tracing::warn!(link = %spec.name, topic = %info.name, error = %e, "cannot update the mirror topic config")
                }
            }
        }
        names.push(info.name.clone());
        if let Some(id) = info.topic_id {
            let seen = MirrorSource {
                cluster_id: source_cluster_id.to_string(),
                topic_id: uuid::Uuid::from_bytes(id.0),
            };
            match topic.mirror_source() {
                None => {
                    // A mirror made before topic ids were recorded, or re-seeded after a
                    // re-creation: it follows this source topic from now on.
                    broker.set_mirror_source(&info.name, Some(seen.clone()))?;
                    tracing::info!(link = %spec.name, topic = %info.name, source_topic_id = %seen.topic_id, "mirror topic now records its source topic id");
                }
                Some(recorded) if recorded != seen => {
                    let (kind, reason) = if recorded.cluster_id != seen.cluster_id {
                        (
                            "source-cluster-changed",
                            format!(
                            "the link's source is now cluster {} but the mirror follows cluster {}",
                            seen.cluster_id, recorded.cluster_id
                        ),
                        )
                    } else {
                        ("topic-recreated", format!(
                            "the source topic {} was deleted and created again: its id is now {} but the mirror follows {}",
                            info.name, seen.topic_id, recorded.topic_id
                        ))
                    };
                    for p in 0..topic.partition_count() {
                        let end = broker.partition(&info.name, p)?.offsets().log_end_offset;
                        let d = divergence::divergence(kind, end, -1, -1, reason.clone());
                        reseeded |= divergence::diverged(agent, spec, &info.name, p, d)?;
                    }
                }
                Some(_) => {}
            }
        }
        for p in 0..topic.partition_count().min(info.partitions) {
            if divergence::divergence_of(agent, &info.name, p).is_none() {
                ready.push((info.name.clone(), p));
            }
        }
    }
    shared.set_mirror_topics(names);
    Ok(Synced { ready, reseeded })
}

/// One data stream: subscribes its partitions from the destination's log end offsets and
/// appends what arrives.
async fn run_lane(
    conn: Connection,
    agent: Arc<AgentShared>,
    spec: LinkSpec,
    shared: Arc<LinkShared>,
    parts: Vec<(String, i32)>,
    version: u16,
) -> Result<()> {
    let broker = &agent.broker;
    let limits = agent.limits;
    let fsync = broker.config.fsync;
    let notify = broker.data_arrived.clone();
    let mut partitions: Vec<Arc<Partition>> = Vec::with_capacity(parts.len());
    let mut subscribe = Vec::with_capacity(parts.len());
    for (topic, index) in &parts {
        let p = broker.partition(topic, *index)?;
        let resume = if version >= 2 {
            resume_check(broker, topic, &p)?
        } else {
            ResumeCheck::default()
        };
        subscribe.push(SubscribePartition {
            topic: topic.clone(),
            partition: *index,
            start: SourceOffset(p.offsets().log_end_offset),
            resume,
        });
        partitions.push(p);
    }
    let find = |topic: &str, index: i32| {
        partitions
            .iter()
            .find(|p| p.index == index && p.topic == topic)
            .cloned()
    };
    let (mut send, mut recv) = conn.open_bi().await.context("opening a data stream")?;
    let mut scratch = Vec::new();
    let plain = EncodeOptions::default();
    write_frame(
        &mut send,
        &Frame::Subscribe(Subscribe {
            partitions: subscribe,
            options: StreamOptions {
                zstd_level: spec.zstd_level,
                max_bytes: spec.batch_max_bytes.min(u32::MAX as usize) as u32,
                linger_ms: spec.linger_ms.min(u64::from(u32::MAX)) as u32,
            },
        }),
        &plain,
        &limits,
        &mut scratch,
    )
    .await?;
    // Acks are written by their own task once the records are durable, so reading and
    // appending the next frame does not wait for this one's fsync. The channel is bounded:
    // if fsyncs fall behind, reading pauses (and QUIC flow control then slows the source).
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<Vec<(Arc<Partition>, i64)>>(64);
    let ack_notify = notify.clone();
    let mut acker = AbortOnDrop(tokio::spawn(async move {
        let mut scratch = Vec::new();
        while let Some(appended) = ack_rx.recv().await {
            let mut entries = Vec::with_capacity(appended.len());
            for (p, end) in appended {
                p.wait_durable(end, fsync, &ack_notify).await?;
                entries.push(AckEntry {
                    topic: p.topic.clone(),
                    partition: p.index,
                    durable: SourceOffset(end),
                });
            }
            write_frame(
                &mut send,
                &Frame::Ack(Ack { entries }),
                &EncodeOptions::default(),
                &limits,
                &mut scratch,
            )
            .await?;
        }
        anyhow::Ok(())
    }));
    // Partitions stopped by an invalid batch: their data is dropped for this connection.
    let mut stopped: BTreeSet<(String, i32)> = BTreeSet::new();
    loop {
        let next = tokio::time::timeout(
            SILENCE_LIMIT,
            read_frame_budgeted(&mut recv, &limits, &agent.frame_budget),
        )
        .await
        .map_err(|_| {
            anyhow!("no data or progress from the source for {SILENCE_LIMIT:?} on a data stream")
        })??;
        let Some(read) = next else {
            return Ok(());
        };
        let wire = read.wire_bytes;
        let data = match &read.frame {
            Frame::Data(d) => d,
            Frame::Diverged(d) => {
                let found = divergence::divergence(
                    d.kind.as_str(),
                    d.mirror_end.0,
                    d.source_log_start.0,
                    d.source_log_end.0,
                    d.message.clone(),
                );
                if divergence::diverged(&agent, &spec, &d.topic, d.partition, found)? {
                    bail!(
                        "re-seeded {}-{} (policy on-divergence=reseed); resubscribing",
                        d.topic,
                        d.partition
                    );
                }
                continue;
            }
            Frame::Error(e) => bail!("the source reported {:?}: {}", e.code, e.message),
            other => bail!(
                "protocol error: unexpected {} on a data stream",
                other.name()
            ),
        };
        shared.wire_bytes.fetch_add(wire, Ordering::Relaxed);
        let mut appended: Vec<(Arc<Partition>, i64)> = Vec::new();
        for entry in &data.entries {
            if stopped
                .iter()
                .any(|(t, i)| *t == entry.topic && *i == entry.partition)
            {
                continue;
            }
            let Some(p) = find(&entry.topic, entry.partition) else {
                bail!(
                    "protocol error: data for {}-{}, which this stream did not subscribe",
                    entry.topic,
                    entry.partition
                );
            };
            // Nothing of a diverged partition is appended (the source stops sending it, but a
            // frame may already be on its way, or the divergence came from metadata).
            if divergence::divergence_of(&agent, &entry.topic, entry.partition).is_some() {
                continue;
            }
            // The destination's log end offset, kept up to date below without re-reading it.
            let mut end = p.offsets().log_end_offset;
            if entry.source_log_start.0 > end {
                let gap = entry.source_log_start.0 - end;
                tracing::warn!(topic = %entry.topic, partition = entry.partition, from = end, to = entry.source_log_start.0, gap_offsets = gap,
                    "the source deleted records this mirror never got (retention); restarting the mirror partition at the source's log start");
                let id = divergence::mirror_topic_id(&agent, &entry.topic)
                    .ok_or_else(|| anyhow!("mirror topic {} vanished", entry.topic))?;
                agent
                    .mirror_states
                    .update(&entry.topic, entry.partition, &id, |s| s.gap_offsets += gap)?;
                p.reset_for_mirror(entry.source_log_start.0, &notify)?;
                end = entry.source_log_start.0;
            }
            let mut bytes = 0;
            let mut records = 0;
            let mut stop_reason = None;
            if !entry.batches.is_empty() {
                adopt_straddling_start(&agent, &p, &entry.batches, end)?;
                let r = p.append_mirrored(&entry.batches, fsync, &notify)?;
                if let Some(refused) = &r.refused {
                    // A structurally broken batch from the source: it was not written (the
                    // batches before it were). Retrying would fetch the same bytes, so the
                    // partition stops here, the rest of the link goes on, and the status says
                    // why.
                    let reason = format!(
                        "stopped: the source sent an invalid record batch at offset {}, which \
                         was not written: {}",
                        refused.offset, refused.reason
                    );
                    tracing::error!(link = %spec.name, topic = %entry.topic, partition = entry.partition, %reason,
                        "mirror partition stopped");
                    stop_reason = Some(reason);
                }
                bytes = r.appended_bytes;
                records = r.appended_records.max(0) as u64;
                p.start_sync(fsync, &notify);
                appended.push((p.clone(), r.end_offset));
                end = r.end_offset;
            }
            shared.source_bytes.fetch_add(bytes, Ordering::Relaxed);
            shared.records.fetch_add(records, Ordering::Relaxed);
            shared.observe(
                &entry.topic,
                entry.partition,
                entry.source_high_watermark.0,
                end,
                bytes,
                records,
            );
            if let Some(reason) = stop_reason {
                shared.partition_failure(&entry.topic, entry.partition, Some(reason));
                stopped.insert((entry.topic.clone(), entry.partition));
            }
        }
        if !appended.is_empty() && ack_tx.send(appended).await.is_err() {
            // The ack task ended: it failed (durability or the stream); report why.
            return match (&mut acker.0).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => bail!("the ack task stopped"),
                Err(e) => bail!("the ack task failed: {e}"),
            };
        }
    }
}

/// After a restart at the source's log start, the log is empty at an offset that may fall
/// inside a batch (DeleteRecords cuts anywhere; the source still serves that whole batch, as
/// Kafka does). An empty mirror log then starts at that batch's base instead, and the offsets
/// it does get are taken off the retention gap.
fn adopt_straddling_start(
    agent: &AgentShared,
    p: &Partition,
    batches: &[u8],
    end: i64,
) -> Result<()> {
    // Only a batch that will be appended may move the log (append_mirrored reports a bad one).
    let first = broker_core::batch::Batches::new(batches)
        .next()
        .and_then(|b| b.ok())
        .and_then(|b| broker_core::batch::validate(b).ok());
    let Some(first) = first else {
        return Ok(());
    };
    let offsets = p.offsets();
    let straddles = first.base_offset < end && first.last_offset() >= end;
    if !straddles || offsets.log_start_offset != offsets.log_end_offset {
        return Ok(());
    }
    p.restart_mirror_at(first.base_offset, &agent.broker.data_arrived)?;
    if let Some(id) = divergence::mirror_topic_id(agent, &p.topic) {
        agent.mirror_states.update(&p.topic, p.index, &id, |s| {
            s.gap_offsets = (s.gap_offsets - (end - first.base_offset)).max(0)
        })?;
    }
    tracing::info!(topic = %p.topic, partition = p.index, from = end, to = first.base_offset,
        "the source's log start is inside a batch: the mirror starts at that batch");
    Ok(())
}

/// What the source must check before continuing a partition from the mirror's end: the source
/// topic the mirror follows and the mirror's last batch.
fn resume_check(broker: &broker_core::Broker, topic: &str, p: &Partition) -> Result<ResumeCheck> {
    let source_topic_id = broker
        .topic(topic)
        .and_then(|t| t.mirror_source())
        .map(|s| TopicId(*s.topic_id.as_bytes()));
    let last_batch = p.last_batch()?.map(|h| BatchAnchor {
        base_offset: SourceOffset(h.base_offset),
        last_offset: SourceOffset(h.last_offset()),
        leader_epoch: h.partition_leader_epoch,
        crc: h.crc,
    });
    Ok(ResumeCheck {
        source_topic_id,
        last_batch,
    })
}

/// Aborts a task when dropped (a lane's ack writer ends with the lane).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
