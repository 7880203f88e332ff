//! The link agent inside `strait broker`: the link manager (links defined on this broker as a
//! destination, persisted in sled, each run by a task), and the source-side listener that
//! serves other brokers' links from this broker's logs.
//!
//! Data flow (destination-initiated): `destination::run_link` dials the source's
//! `source::run_listener`, handshakes, keeps mirror topics in step with the source's metadata
//! and opens data streams; the source packs batches into zstd `Data` frames; the destination
//! appends them at their source offsets (`Partition::append_mirrored`) and acks once durable.

pub mod destination;
pub mod dialer;
pub mod divergence;
pub mod framing;
pub mod mirror_state;
pub mod source;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use broker_core::Broker;
use mirror_protocol::{
    Congestion, Identity, Limits, TopicFilter, TransportSettings, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::model::{
    ControlError, LinkControl, LinkMode, LinkSpec, LinkStatus, MirrorStatus, PartitionVerify,
    ResolveChoice, ResolveOutcome, VerifyReport,
};
use status::LinkShared;

/// What every link task of this broker shares.
pub struct AgentShared {
    pub broker: Arc<Broker>,
    /// Our certificate, key and the CA we trust for peers; without it no link can run.
    pub identity: Option<Identity>,
    pub limits: Limits,
    /// Protocol versions this agent speaks (a test knob can narrow it to provoke a mismatch).
    pub versions: (u16, u16),
    /// Source-initiated links defined here, by name: where the link listener hands over a
    /// connection from a source that dialled in.
    pub inbound: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    /// The link listener's address, once listening.
    pub listening: Mutex<Option<SocketAddr>>,
    /// QUIC congestion controller for every link of this broker.
    pub congestion: Congestion,
    /// Memory all data streams may hold in frames at once (see `framing::MEMORY_BUDGET_KIB`).
    pub frame_budget: Arc<tokio::sync::Semaphore>,
    /// Divergences and retention gaps of this broker's mirror partitions (persisted).
    pub mirror_states: mirror_state::MirrorStates,
}

/// A connection a source dialled in on, handed to its source-initiated link after the
/// handshake.
pub struct Inbound {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub source_cluster_id: String,
    /// The protocol version negotiated in the handshake.
    pub version: u16,
}

struct RunningLink {
    spec: LinkSpec,
    shared: Arc<LinkShared>,
    task: Option<JoinHandle<()>>,
}

/// The links defined on this broker. Implements the admin API's [`LinkControl`].
pub struct LinkManager {
    agent: Arc<AgentShared>,
    db: sled::Db,
    links: Mutex<BTreeMap<String, RunningLink>>,
    runtime: tokio::runtime::Handle,
}

/// Agent settings from the broker's command line.
pub struct AgentOptions {
    pub identity: Option<Identity>,
    pub versions: (u16, u16),
    pub congestion: Congestion,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            identity: None,
            versions: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            congestion: Congestion::Bbr,
        }
    }
}

impl LinkManager {
    /// Opens the link store (`<data-dir>/links`) and starts every link that is not paused.
    pub fn open(broker: Arc<Broker>, options: AgentOptions) -> Result<Arc<LinkManager>> {
        let path = broker.config.data_dir.join("links");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::LowSpace)
            .open()
            .with_context(|| format!("opening the link store {}", path.display()))?;
        let agent = Arc::new(AgentShared {
            broker,
            identity: options.identity,
            limits: Limits::default(),
            versions: options.versions,
            inbound: Mutex::new(HashMap::new()),
            listening: Mutex::new(None),
            congestion: options.congestion,
            frame_budget: Arc::new(tokio::sync::Semaphore::new(framing::MEMORY_BUDGET_KIB)),
            mirror_states: mirror_state::MirrorStates::open(
                db.open_tree("mirror-partitions")
                    .context("opening the mirror partition states")?,
            )?,
        });
        let manager = Arc::new(LinkManager {
            agent,
            db,
            links: Mutex::new(BTreeMap::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        for item in manager.db.iter() {
            let (key, value) = item.context("reading the link store")?;
            let spec: LinkSpec = serde_json::from_slice(&value).with_context(|| {
                format!(
                    "link store entry {:?} is not a valid link definition",
                    String::from_utf8_lossy(&key)
                )
            })?;
            manager.start(spec);
        }
        Ok(manager)
    }

    /// Serves other brokers' links from this broker's logs on `addr` (UDP).
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let identity = self.agent.identity.as_ref().context(
            "--link-listen needs this broker's link certificate: add --link-ca, --link-cert and --link-key (`strait certs generate` makes test ones)",
        )?;
        let settings = TransportSettings {
            congestion: self.agent.congestion,
            ..TransportSettings::default()
        };
        let config = mirror_protocol::server_config(identity, &settings)
            .context("building the link listener's TLS configuration")?;
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("cannot listen for links on {addr} (UDP)"))?;
        let secret = self.endpoint_secret()?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &secret,
        )));
        // Connection ids are keyed from the same secret: after a restart the endpoint still
        // recognises its old connection ids as its own and answers them with a stateless reset
        // (with a per-process random key it drops them as invalid and the peer waits for its
        // idle timeout).
        let cid_key = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            b"strait connection ids",
        );
        let mut key = [0u8; 8];
        key.copy_from_slice(&cid_key.as_ref()[..8]);
        let cid_key = u64::from_be_bytes(key);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("cannot listen for links on {addr} (UDP)"))?;
        let bound = endpoint.local_addr()?;
        *self
            .agent
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(bound);
        let ctx = source::SourceContext::new(self.agent.clone());
        self.runtime.spawn(source::run_listener(endpoint, ctx));
        Ok(bound)
    }

    /// The secret behind QUIC stateless resets and connection ids, kept in
    /// `<data-dir>/link-reset.key` so that after a restart this broker can tell peers at once
    /// that their old connection is gone (they reconnect immediately instead of waiting for the
    /// idle timeout).
    fn endpoint_secret(&self) -> Result<Vec<u8>> {
        let path = self.agent.broker.config.data_dir.join("link-reset.key");
        let secret = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            _ => {
                let mut fresh = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                    .map_err(|_| anyhow::anyhow!("no randomness for the link reset key"))?;
                let tmp = path.with_extension("tmp");
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(true)
                        .write(true)
                        .mode(0o600)
                        .open(&tmp)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    f.write_all(&fresh)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("writing {}", path.display()))?;
                fresh.to_vec()
            }
        };
        Ok(secret)
    }

    fn start(&self, spec: LinkSpec) {
        let shared = Arc::new(LinkShared::new(spec.paused));
        self.unregister_inbound(&spec.name);
        let task = (!spec.paused).then(|| {
            let (agent, spec, shared) = (self.agent.clone(), spec.clone(), shared.clone());
            if spec.dial_destination.is_some() {
                self.runtime
                    .spawn(dialer::run_outbound(agent, spec, shared))
            } else if spec.mode == LinkMode::SourceInitiated {
                let (tx, rx) = mpsc::channel(1);
                self.agent
                    .inbound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(spec.name.clone(), tx);
                self.runtime
                    .spawn(destination::run_inbound_link(agent, spec, shared, rx))
            } else {
                self.runtime
                    .spawn(destination::run_link(agent, spec, shared))
            }
        });
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = links.insert(spec.name.clone(), RunningLink { spec, shared, task }) {
            if let Some(task) = old.task {
                task.abort();
            }
        }
    }

    fn unregister_inbound(&self, name: &str) {
        self.agent
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn persist(&self, spec: &LinkSpec) -> Result<(), ControlError> {
        let value = serde_json::to_vec(spec).map_err(|e| ControlError::Internal(e.to_string()))?;
        self.db
            .insert(spec.name.as_bytes(), value)
            .and_then(|_| self.db.flush())
            .map_err(|e| ControlError::Internal(format!("saving the link: {e}")))?;
        Ok(())
    }

    fn with_link<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RunningLink) -> T,
    ) -> Result<T, ControlError> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .get_mut(name)
            .map(f)
            .ok_or_else(|| ControlError::NotFound(name.to_string()))
    }

    fn set_paused(&self, name: &str, paused: bool) -> Result<(), ControlError> {
        let mut spec = self.with_link(name, |l| l.spec.clone())?;
        if spec.paused == paused {
            return Ok(());
        }
        spec.paused = paused;
        self.persist(&spec)?;
        self.start(spec);
        Ok(())
    }

    /// Stops every link task (broker shutdown).
    pub fn shutdown(&self) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        for link in links.values_mut() {
            if let Some(task) = link.task.take() {
                task.abort();
            }
        }
        let _ = self.db.flush();
    }

    fn validate(&self, spec: &LinkSpec) -> Result<(), ControlError> {
        let invalid = |m: String| Err(ControlError::Invalid(m));
        if spec.name.is_empty()
            || spec.name.len() > 100
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return invalid(format!(
                "link name {:?} must be 1-100 characters of A-Z a-z 0-9 . _ -",
                spec.name
            ));
        }
        let host_port = |a: &str| {
            a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        };
        if self.agent.identity.is_none() {
            return invalid("this broker has no link certificate: start it with --link-ca, --link-cert and --link-key (`strait certs generate` makes test ones)".into());
        }
        if let Some(destination) = &spec.dial_destination {
            // The source side of a source-initiated link: the destination picks the topics.
            if !host_port(destination) {
                return invalid(format!(
                    "destination address {destination:?} is not HOST:PORT"
                ));
            }
            return Ok(());
        }
        if spec.mode == LinkMode::SourceInitiated {
            let listening = self
                .agent
                .listening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !listening {
                return invalid("a source-initiated link needs this broker to accept the source's connection: start it with --link-listen".into());
            }
        } else if !host_port(&spec.source_addr) {
            return invalid(format!(
                "source address {:?} is not HOST:PORT",
                spec.source_addr
            ));
        }
        let filter = TopicFilter {
            names: spec.topics.names.clone(),
            prefixes: spec.topics.prefixes.clone(),
            regexes: spec.topics.regexes.clone(),
        };
        if filter.names.is_empty() && filter.prefixes.is_empty() && filter.regexes.is_empty() {
            return invalid("select topics to mirror: names, prefixes or regexes".into());
        }
        filter
            .compile()
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        if !(1..=256).contains(&spec.streams) {
            return invalid(format!("streams must be 1..=256, got {}", spec.streams));
        }
        if !(0..=22).contains(&spec.zstd_level) {
            return invalid(format!(
                "zstd level must be 0 (off) to 22, got {}",
                spec.zstd_level
            ));
        }
        let max = self.agent.limits.max_frame_bytes / 2;
        if !(16 << 10..=max).contains(&spec.batch_max_bytes) {
            return invalid(format!(
                "batch size must be 16 KiB..={max} bytes, got {}",
                spec.batch_max_bytes
            ));
        }
        Ok(())
    }

    fn mirror_status_of(&self, statuses: &[LinkStatus]) -> Vec<MirrorStatus> {
        let mut out = Vec::new();
        for topic in self.agent.broker.topics() {
            let Some(link) = topic.mirror_link() else {
                continue;
            };
            let partitions: Vec<_> = statuses
                .iter()
                .filter(|s| s.spec.name == link)
                .flat_map(|s| s.partitions.iter())
                .filter(|p| p.topic == topic.name)
                .cloned()
                .collect();
            out.push(MirrorStatus {
                topic: topic.name.clone(),
                lag_records: partitions.iter().map(|p| p.lag_records).sum(),
                link,
                partitions,
            });
        }
        out
    }
}

impl LinkControl for LinkManager {
    fn list_links(&self) -> Vec<LinkStatus> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .values()
            .map(|l| l.shared.status(&l.spec, &self.agent))
            .collect()
    }

    fn link_status(&self, name: &str) -> Result<LinkStatus, ControlError> {
        self.with_link(name, |l| l.shared.status(&l.spec, &self.agent))
    }

    fn create_link(&self, spec: LinkSpec) -> Result<LinkStatus, ControlError> {
        self.validate(&spec)?;
        if self.with_link(&spec.name, |_| ()).is_ok() {
            return Err(ControlError::AlreadyExists(spec.name));
        }
        self.persist(&spec)?;
        let name = spec.name.clone();
        self.start(spec);
        tracing::info!(link = %name, "link created");
        self.link_status(&name)
    }

    fn pause_link(&self, name: &str) -> Result<(), ControlError> {
        self.set_paused(name, true)
    }

    fn resume_link(&self, name: &str) -> Result<(), ControlError> {
        self.set_paused(name, false)
    }

    fn delete_link(&self, name: &str) -> Result<(), ControlError> {
        let removed = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links
                .remove(name)
                .ok_or_else(|| ControlError::NotFound(name.to_string()))?
        };
        if let Some(task) = removed.task {
            task.abort();
        }
        self.unregister_inbound(name);
        self.db
            .remove(name.as_bytes())
            .and_then(|_| self.db.flush())
            .map_err(|e| ControlError::Internal(format!("removing the link: {e}")))?;
        // Its mirror topics become ordinary, writable topics (promoted): nothing feeds them now.
        for topic in self.agent.broker.topics() {
            if topic.mirror_link().as_deref() == Some(name) {
                if let Err(e) = self.agent.broker.set_mirror_link(&topic.name, None) {
                    tracing::warn!(topic = %topic.name, error = %e, "could not promote a mirror topic of the deleted link");
                }
            }
        }
        tracing::info!(link = %name, "link deleted; its mirror topics are now writable");
        Ok(())
    }

    fn mirrors(&self) -> Vec<MirrorStatus> {
        let statuses = self.list_links();
        self.mirror_status_of(&statuses)
    }

    fn resolve_mirror(
        &self,
        topic: &str,
        partition: i32,
        choice: ResolveChoice,
    ) -> Result<ResolveOutcome, ControlError> {
        let (link, spec, shared) = self.mirror_link_of(topic)?;
        let divergence =
            divergence::divergence_of(&self.agent, topic, partition).ok_or_else(|| {
                ControlError::Invalid(format!(
                    "{topic}-{partition} is not diverged: there is nothing to resolve"
                ))
            })?;
        let common = match choice {
            ResolveChoice::Reseed => None,
            ResolveChoice::Truncate => {
                if matches!(
                    divergence.kind.as_str(),
                    "topic-recreated" | "source-cluster-changed"
                ) {
                    return Err(ControlError::Conflict(format!(
                        "{topic}-{partition} diverged because {}: the new source history shares nothing with the mirror, so there is no common point to truncate to; use --reseed",
                        divergence.reason
                    )));
                }
                let end = self
                    .agent
                    .broker
                    .partition(topic, partition)
                    .map_err(|e| ControlError::Internal(e.to_string()))?
                    .offsets()
                    .log_end_offset;
                let verdict = self.ask_link(&shared, topic, partition, 0, end)?;
                Some(verdict.first_difference.unwrap_or(verdict.to))
            }
        };
        let outcome =
            divergence::resolve_locally(&self.agent, &link, topic, partition, choice, common)
                .map_err(|e| ControlError::Internal(format!("{e:#}")))?;
        // Restart the link task so every lane resubscribes from the new mirror end.
        self.start(spec);
        Ok(outcome)
    }

    fn verify_mirror(
        &self,
        topic: &str,
        partition: Option<i32>,
        from: i64,
        to: i64,
    ) -> Result<VerifyReport, ControlError> {
        let (link, _, shared) = self.mirror_link_of(topic)?;
        let count = self
            .agent
            .broker
            .topic(topic)
            .map_or(0, |t| t.partition_count());
        let partitions: Vec<i32> = match partition {
            Some(p) if (0..count).contains(&p) => vec![p],
            Some(p) => {
                return Err(ControlError::BadRequest(format!(
                    "{topic} has no partition {p} (it has {count})"
                )))
            }
            None => (0..count).collect(),
        };
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            results.push(self.ask_link(&shared, topic, p, from, to)?);
        }
        Ok(VerifyReport {
            topic: topic.to_string(),
            link,
            equal: results.iter().all(|r| r.first_difference.is_none()),
            partitions: results,
        })
    }
}

impl LinkManager {
    /// The running link that mirrors `topic`.
    fn mirror_link_of(
        &self,
        topic: &str,
    ) -> Result<(String, LinkSpec, Arc<LinkShared>), ControlError> {
        let link = self
            .agent
            .broker
            .topic(topic)
            .and_then(|t| t.mirror_link())
            .ok_or_else(|| ControlError::BadRequest(format!("{topic} is not a mirror topic")))?;
        let (spec, shared) = self.with_link(&link, |l| (l.spec.clone(), l.shared.clone()))?;
        Ok((link, spec, shared))
    }

    /// Runs a verify of one partition on the link's live connection (called from a blocking
    /// thread of the admin API).
    fn ask_link(
        &self,
        shared: &LinkShared,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<PartitionVerify, ControlError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = divergence::LinkRequest::Verify {
            topic: topic.to_string(),
            partition,
            from,
            to,
            reply,
        };
        let unavailable = || {
            ControlError::Unavailable(
                "the link is not connected to its source, which verify and truncate need (to compare batches); retry once `strait link status` shows it active".into(),
            )
        };
        shared
            .request_sender()
            .ok_or_else(unavailable)?
            .try_send(request)
            .map_err(|_| unavailable())?;
        self.runtime
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(600), answer).await
            })
            .map_err(|_| ControlError::Internal("verify timed out after 600 s".into()))?
            .map_err(|_| unavailable())?
            .map_err(ControlError::Internal)
    }
}

/// Reads the agent's identity from PEM files, with errors naming the file.
pub fn load_identity(ca: &Path, cert: &Path, key: &Path) -> Result<Identity> {
    Identity::from_pem_files(ca, cert, key).context("loading the link certificate")
}
