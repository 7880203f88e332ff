//! The classic consumer-group protocol as a sans-IO state machine: membership, generations,
//! rebalances and timeouts, driven by requests and by `tick(now)`.
//!
//! JoinGroup and SyncGroup are long polls: a request that must wait is parked under a
//! [`Token`] chosen by the caller, and its answer comes back later as a [`Delivery`] returned
//! by whichever call completed it (another member's join, the leader's sync, a timeout).
//! Nothing here touches clocks or sockets; times are milliseconds passed in.
//!
//! Rebalances complete as soon as every member has rejoined, or when the rebalance timeout
//! removes the stragglers. Only a group forming from empty waits a short join window
//! ([`INITIAL_JOIN_WINDOW_MS`]), so that consumers started together settle in one rebalance
//! instead of the first one finishing alone and the others waiting for its next heartbeat
//! (Kafka waits `group.initial.rebalance.delay.ms`, 3 s, for the same reason).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// Identifies a parked JoinGroup or SyncGroup request. The caller keeps tokens unique across
/// all parked requests, joins and syncs alike (the coordinator draws them from one counter).
pub type Token = u64;

/// Kafka error codes used by the coordinator.
pub mod code {
    pub const NONE: i16 = 0;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
}

pub const MIN_SESSION_TIMEOUT_MS: i32 = 1_000;
pub const MAX_SESSION_TIMEOUT_MS: i32 = 1_800_000;
/// How long a group forming from empty waits for more members before its first rebalance.
pub const INITIAL_JOIN_WINDOW_MS: i64 = 100;
/// Members per group, like Kafka's `group.max.size`.
pub const MAX_GROUP_SIZE: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka uses in ListGroups and DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ gets MEMBER_ID_REQUIRED for a first join (KIP-394).
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResult {
    fn error(error: i16, member_id: &str) -> Self {
        JoinResult {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: i16) -> Self {
        SyncResult {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer for a parked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Join(Token, JoinResult),
    Sync(Token, SyncResult),
}

/// The immediate outcome of a call: an answer now, or parked (answered by a later Delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Now(T),
    Parked,
}

#[derive(Debug, Clone)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    awaiting_join: Option<Token>,
    awaiting_sync: Option<Token>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// One group's membership.
#[derive(Debug)]
pub struct Group {
    pub state: GroupState,
    pub generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry time.
    pending: HashMap<String, i64>,
    static_members: HashMap<String, String>,
    rebalance_deadline_ms: i64,
    /// While `now` is below this, a forming group does not complete its rebalance.
    join_window_until_ms: i64,
    next_member: u64,
}

impl Group {
    fn new() -> Self {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline_ms: 0,
            join_window_until_ms: 0,
            next_member: 0,
        }
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!(
            "{prefix}-{}-{:08x}",
            self.next_member,
            rand_suffix(self.next_member)
        )
    }

    /// Protocols every member supports; the one most preferred across members wins.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        // Vote: each member votes for its most preferred candidate.
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| (votes.get(*c).copied().unwrap_or(0), std::cmp::Reverse(*c)))
            .map(|c| (*c).clone())
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocols.is_empty();
        }
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != protocol_type)
        {
            return false;
        }
        // At least one protocol in common with every current member.
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(p, _)| p == name))
        })
    }

    fn start_rebalance(&mut self, now: i64) {
        if self.state != GroupState::PreparingRebalance {
            self.state = GroupState::PreparingRebalance;
            let timeout = self
                .members
                .values()
                .map(|m| m.rebalance_timeout_ms)
                .max()
                .unwrap_or(0) as i64;
            self.rebalance_deadline_ms = now + timeout;
        }
    }

    /// Syncs parked in CompletingRebalance get REBALANCE_IN_PROGRESS when a new rebalance starts.
    fn fail_pending_syncs(&mut self, out: &mut Vec<Delivery>) {
        for m in self.members.values_mut() {
            if let Some(token) = m.awaiting_sync.take() {
                out.push(Delivery::Sync(
                    token,
                    SyncResult::error(code::REBALANCE_IN_PROGRESS),
                ));
            }
        }
    }

    fn remove_member(&mut self, member_id: &str, now: i64, out: &mut Vec<Delivery>) {
        if let Some(m) = self.members.remove(member_id) {
            if let Some(id) = &m.group_instance_id {
                if self.static_members.get(id).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(id);
                }
            }
            if let Some(token) = m.awaiting_join {
                out.push(Delivery::Join(
                    token,
                    JoinResult::error(code::UNKNOWN_MEMBER_ID, member_id),
                ));
            }
            if let Some(token) = m.awaiting_sync {
                out.push(Delivery::Sync(
                    token,
                    SyncResult::error(code::UNKNOWN_MEMBER_ID),
                ));
            }
            if self.leader.as_deref() == Some(member_id) {
                self.leader = None;
            }
        }
        self.pending.remove(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.fail_pending_syncs(out);
                self.start_rebalance(now);
                self.try_complete_join(now, out);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now, out),
        }
    }

    /// Completes the rebalance if every member has rejoined.
    fn try_complete_join(&mut self, now: i64, out: &mut Vec<Delivery>) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if self.members.values().any(|m| m.awaiting_join.is_none()) {
            return;
        }
        if now < self.join_window_until_ms {
            return; // a forming group: `tick` completes it when the window closes
        }
        self.complete_join(now, out);
    }

    fn complete_join(&mut self, now: i64, out: &mut Vec<Delivery>) {
        self.generation += 1;
        self.join_window_until_ms = 0;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.protocol_type = self
            .members
            .values()
            .next()
            .map(|m| m.protocol_type.clone());
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let all: Vec<JoinedMember> = self
            .members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.assignment = Bytes::new();
            m.last_heartbeat_ms = now;
            if let Some(token) = m.awaiting_join.take() {
                out.push(Delivery::Join(
                    token,
                    JoinResult {
                        error: code::NONE,
                        generation: self.generation,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol_name.clone(),
                        leader: leader.clone(),
                        member_id: id.clone(),
                        members: if *id == leader {
                            all.clone()
                        } else {
                            Vec::new()
                        },
                    },
                ));
            }
        }
    }

    fn current_join_result(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResult {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            members: if member_id == leader {
                self.members
                    .iter()
                    .map(|(id, m)| JoinedMember {
                        member_id: id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            leader,
            member_id: member_id.to_string(),
        }
    }

    /// Checks member id, static instance and generation of a request from a member.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: Option<i32>,
    ) -> Result<(), i16> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(code::FENCED_INSTANCE_ID),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        if let Some(g) = generation {
            if g != self.generation {
                return Err(code::ILLEGAL_GENERATION);
            }
        }
        Ok(())
    }
}

impl Delivery {
    fn token(&self) -> Token {
        match self {
            Delivery::Join(t, _) | Delivery::Sync(t, _) => *t,
        }
    }
}

/// If the call that parked `token` also completed it, takes that answer out of `out` and
/// returns it directly; otherwise the request stays parked.
fn take_own_answer<T>(
    out: &mut Vec<Delivery>,
    token: Token,
    unwrap: impl Fn(Delivery) -> Option<T>,
) -> Answer<T> {
    match out.iter().position(|d| d.token() == token) {
        Some(pos) => unwrap(out.remove(pos)).map_or(Answer::Parked, Answer::Now),
        None => Answer::Parked,
    }
}

/// A small, dependency-free mix to make member ids hard to guess by accident.
fn rand_suffix(n: u64) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t;
    x ^= x >> 31;
    x as u32
}

/// Every group of the broker.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<String, Group>,
}

impl Groups {
    pub fn get(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Group)> {
        self.groups.iter()
    }

    pub fn join(
        &mut self,
        now: i64,
        req: JoinRequest,
        token: Token,
    ) -> (Answer<JoinResult>, Vec<Delivery>) {
        let mut out = Vec::new();
        if req.group_id.is_empty() {
            return (
                Answer::Now(JoinResult::error(code::INVALID_GROUP_ID, &req.member_id)),
                out,
            );
        }
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&req.session_timeout_ms) {
            return (
                Answer::Now(JoinResult::error(
                    code::INVALID_SESSION_TIMEOUT,
                    &req.member_id,
                )),
                out,
            );
        }
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(Group::new);
        if !group.supports_protocols(&req.protocol_type, &req.protocols) {
            return (
                Answer::Now(JoinResult::error(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    &req.member_id,
                )),
                out,
            );
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            if let Some(instance) = &req.group_instance_id {
                // A static member coming back (or new): it takes over its instance id, and any
                // old member id of that instance is fenced.
                let new_id = group.new_member_id(&req.client_id);
                if let Some(old) = group.static_members.get(instance).cloned() {
                    if let Some(mut m) = group.members.remove(&old) {
                        if let Some(t) = m.awaiting_join.take() {
                            out.push(Delivery::Join(
                                t,
                                JoinResult::error(code::FENCED_INSTANCE_ID, &old),
                            ));
                        }
                        if let Some(t) = m.awaiting_sync.take() {
                            out.push(Delivery::Sync(
                                t,
                                SyncResult::error(code::FENCED_INSTANCE_ID),
                            ));
                        }
                        let was_leader = group.leader.as_deref() == Some(old.as_str());
                        let same_protocols = m.protocols == req.protocols;
                        m.last_heartbeat_ms = now;
                        m.session_timeout_ms = req.session_timeout_ms;
                        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                        group.members.insert(new_id.clone(), m);
                        group
                            .static_members
                            .insert(instance.clone(), new_id.clone());
                        if was_leader {
                            group.leader = Some(new_id.clone());
                        }
                        if group.state == GroupState::Stable && same_protocols && !was_leader {
                            // KIP-345: no rebalance; its assignment is kept for SyncGroup.
                            return (Answer::Now(group.current_join_result(&new_id)), out);
                        }
                        return Self::rejoin(group, now, &new_id, req, token, out);
                    }
                }
                group
                    .static_members
                    .insert(instance.clone(), new_id.clone());
                member_id = new_id;
            } else if req.require_known_member_id {
                let new_id = group.new_member_id(&req.client_id);
                group
                    .pending
                    .insert(new_id.clone(), now + req.session_timeout_ms as i64);
                return (
                    Answer::Now(JoinResult::error(code::MEMBER_ID_REQUIRED, &new_id)),
                    out,
                );
            } else {
                member_id = group.new_member_id(&req.client_id);
            }
        } else if !group.members.contains_key(&member_id) {
            if group.pending.remove(&member_id).is_none() {
                return (
                    Answer::Now(JoinResult::error(code::UNKNOWN_MEMBER_ID, &member_id)),
                    out,
                );
            }
        } else if let Some(instance) = &req.group_instance_id {
            if group.static_members.get(instance) != Some(&member_id) {
                return (
                    Answer::Now(JoinResult::error(code::FENCED_INSTANCE_ID, &member_id)),
                    out,
                );
            }
        }
        if !group.members.contains_key(&member_id) {
            if group.members.len() >= MAX_GROUP_SIZE {
                return (
                    Answer::Now(JoinResult::error(code::GROUP_MAX_SIZE_REACHED, &member_id)),
                    out,
                );
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    group_instance_id: req.group_instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout_ms: req.session_timeout_ms,
                    rebalance_timeout_ms: req.rebalance_timeout_ms,
                    protocol_type: req.protocol_type.clone(),
                    protocols: req.protocols.clone(),
                    assignment: Bytes::new(),
                    last_heartbeat_ms: now,
                    awaiting_join: None,
                    awaiting_sync: None,
                },
            );
            if group.protocol_type.is_none() {
                group.protocol_type = Some(req.protocol_type.clone());
            }
            if group.state == GroupState::Empty {
                group.join_window_until_ms = now + INITIAL_JOIN_WINDOW_MS;
            }
            group.fail_pending_syncs(&mut out);
            group.start_rebalance(now);
            return Self::park_join(group, now, &member_id, token, out);
        }
        Self::rejoin(group, now, &member_id, req, token, out)
    }

    /// A known member sends JoinGroup again.
    fn rejoin(
        group: &mut Group,
        now: i64,
        member_id: &str,
        req: JoinRequest,
        token: Token,
        mut out: Vec<Delivery>,
    ) -> (Answer<JoinResult>, Vec<Delivery>) {
        let is_leader = group.leader.as_deref() == Some(member_id);
        let Some(m) = group.members.get_mut(member_id) else {
            return (
                Answer::Now(JoinResult::error(code::UNKNOWN_MEMBER_ID, member_id)),
                out,
            );
        };
        let changed = m.protocols != req.protocols;
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.last_heartbeat_ms = now;
        if let Some(old) = m.awaiting_join.take() {
            // A duplicate join replaces the earlier one, which is told to retry.
            out.push(Delivery::Join(
                old,
                JoinResult::error(code::REBALANCE_IN_PROGRESS, member_id),
            ));
        }
        match group.state {
            GroupState::CompletingRebalance | GroupState::Stable if !changed && !is_leader => {
                // Nothing changed for a follower: it gets the current generation back.
                (Answer::Now(group.current_join_result(member_id)), out)
            }
            GroupState::PreparingRebalance => Self::park_join(group, now, member_id, token, out),
            _ => {
                group.fail_pending_syncs(&mut out);
                group.start_rebalance(now);
                Self::park_join(group, now, member_id, token, out)
            }
        }
    }

    fn park_join(
        group: &mut Group,
        now: i64,
        member_id: &str,
        token: Token,
        mut out: Vec<Delivery>,
    ) -> (Answer<JoinResult>, Vec<Delivery>) {
        if let Some(m) = group.members.get_mut(member_id) {
            m.awaiting_join = Some(token);
        }
        group.try_complete_join(now, &mut out);
        let answer = take_own_answer(&mut out, token, |d| match d {
            Delivery::Join(_, r) => Some(r),
            Delivery::Sync(..) => None,
        });
        (answer, out)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        token: Token,
    ) -> (Answer<SyncResult>, Vec<Delivery>) {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (Answer::Now(SyncResult::error(code::UNKNOWN_MEMBER_ID)), out);
        };
        if let Err(e) = group.check_member(member_id, instance_id, Some(generation)) {
            return (Answer::Now(SyncResult::error(e)), out);
        }
        let result_for = |g: &Group, id: &str| SyncResult {
            error: code::NONE,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol_name.clone(),
            assignment: g
                .members
                .get(id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        };
        match group.state {
            GroupState::Empty => (Answer::Now(SyncResult::error(code::UNKNOWN_MEMBER_ID)), out),
            GroupState::PreparingRebalance => (
                Answer::Now(SyncResult::error(code::REBALANCE_IN_PROGRESS)),
                out,
            ),
            GroupState::Stable => {
                if let Some(m) = group.members.get_mut(member_id) {
                    m.last_heartbeat_ms = now;
                }
                (Answer::Now(result_for(group, member_id)), out)
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = group.members.get_mut(member_id) {
                    m.last_heartbeat_ms = now;
                    if let Some(old) = m.awaiting_sync.replace(token) {
                        out.push(Delivery::Sync(
                            old,
                            SyncResult::error(code::REBALANCE_IN_PROGRESS),
                        ));
                    }
                }
                if group.leader.as_deref() == Some(member_id) {
                    for (id, assignment) in assignments {
                        if let Some(m) = group.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                    group.state = GroupState::Stable;
                    let ids: Vec<String> = group.members.keys().cloned().collect();
                    for id in ids {
                        let result = result_for(group, &id);
                        if let Some(t) = group
                            .members
                            .get_mut(&id)
                            .and_then(|m| m.awaiting_sync.take())
                        {
                            out.push(Delivery::Sync(t, result));
                        }
                    }
                }
                let answer = take_own_answer(&mut out, token, |d| match d {
                    Delivery::Sync(_, r) => Some(r),
                    Delivery::Join(..) => None,
                });
                (answer, out)
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if let Err(e) = group.check_member(member_id, instance_id, None) {
            return e;
        }
        if let Some(m) = group.members.get_mut(member_id) {
            m.last_heartbeat_ms = now;
        }
        match group.state {
            GroupState::Empty => code::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ if generation != group.generation => code::ILLEGAL_GENERATION,
            _ => code::NONE,
        }
    }

    /// Removes members; each gets its own error code (v3+ batches members).
    pub fn leave(
        &mut self,
        now: i64,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> (Vec<i16>, Vec<Delivery>) {
        let mut out = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (vec![code::UNKNOWN_MEMBER_ID; members.len()], out);
        };
        let mut codes = Vec::with_capacity(members.len());
        for (member_id, instance) in members {
            // v3+ may name a static member by instance id only.
            let id = if member_id.is_empty() {
                instance
                    .as_ref()
                    .and_then(|i| group.static_members.get(i).cloned())
                    .unwrap_or_default()
            } else {
                member_id.clone()
            };
            match group.check_member(&id, instance.as_deref(), None) {
                Ok(()) => {
                    group.remove_member(&id, now, &mut out);
                    codes.push(code::NONE);
                }
                Err(e) => codes.push(e),
            }
        }
        (codes, out)
    }

    /// Whether an OffsetCommit from this member/generation may be applied.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        let Some(group) = self.groups.get(group_id) else {
            // No live group: only "simple" commits (no generation) are valid. A member of a
            // group this broker no longer knows (e.g. after a restart) is told it is unknown,
            // so it rejoins at once, as Kafka does.
            return if generation < 0 {
                Ok(())
            } else {
                Err(code::UNKNOWN_MEMBER_ID)
            };
        };
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(code::ILLEGAL_GENERATION)
            };
        }
        group.check_member(member_id, instance_id, Some(generation))?;
        if group.state == GroupState::CompletingRebalance {
            return Err(code::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    /// Forgets an empty group's membership (DeleteGroups); offsets are the caller's.
    pub fn delete(&mut self, group_id: &str) -> Result<(), i16> {
        match self.groups.get(group_id) {
            Some(g) if !g.members.is_empty() => Err(code::NON_EMPTY_GROUP),
            Some(_) => {
                self.groups.remove(group_id);
                Ok(())
            }
            None => Err(code::GROUP_ID_NOT_FOUND),
        }
    }

    /// Expires sessions, pending member ids and rebalance timeouts.
    pub fn tick(&mut self, now: i64) -> Vec<Delivery> {
        let mut out = Vec::new();
        for group in self.groups.values_mut() {
            group.pending.retain(|_, expiry| *expiry > now);
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    // A member parked in JoinGroup is alive: its session waits for the rebalance.
                    m.awaiting_join.is_none()
                        && now - m.last_heartbeat_ms > m.session_timeout_ms as i64
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "group member session expired");
                group.remove_member(&id, now, &mut out);
            }
            if group.state == GroupState::PreparingRebalance && now >= group.join_window_until_ms {
                group.try_complete_join(now, &mut out);
            }
            if group.state == GroupState::PreparingRebalance && now >= group.rebalance_deadline_ms {
                let stragglers: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.awaiting_join.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &stragglers {
                    tracing::info!(member = %id, "member did not rejoin within the rebalance timeout");
                    if let Some(m) = group.members.remove(id) {
                        if let Some(inst) = m.group_instance_id {
                            group.static_members.remove(&inst);
                        }
                    }
                    if group.leader.as_deref() == Some(id.as_str()) {
                        group.leader = None;
                    }
                }
                group.complete_join(now, &mut out);
            }
        }
        // Drop empty groups that hold no state worth keeping (offsets live in the store).
        self.groups.retain(|_, g| {
            !(g.state == GroupState::Empty && g.members.is_empty() && g.pending.is_empty())
        });
        out
    }

    /// Describe data: (member id, instance id, client id, host, metadata, assignment).
    pub fn describe_members(&self, group_id: &str) -> Vec<MemberDescription> {
        let Some(g) = self.groups.get(group_id) else {
            return Vec::new();
        };
        let protocol = g.protocol_name.clone().unwrap_or_default();
        g.members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata_for(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect()
    }

    /// Topics the members subscribe to, read from the consumer protocol's subscription
    /// metadata (version i16, then an array of topic names).
    pub fn subscribed_topics(&self, group_id: &str) -> Vec<String> {
        let mut topics = Vec::new();
        for m in self.describe_members(group_id) {
            topics.extend(parse_subscription_topics(&m.metadata));
        }
        topics.sort();
        topics.dedup();
        topics
    }
}

#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// Topic names of a ConsumerProtocolSubscription (any version): `version i16, topics
/// [string]`. Malformed metadata yields the names read so far.
pub fn parse_subscription_topics(metadata: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if metadata.len() < 6 {
        return out;
    }
    let count = i32::from_be_bytes([metadata[2], metadata[3], metadata[4], metadata[5]]);
    let mut at = 6usize;
    for _ in 0..count.max(0) {
        let Some(len_bytes) = metadata.get(at..at + 2) else {
            break;
        };
        let len = i16::from_be_bytes([len_bytes[0], len_bytes[1]]);
        if len < 0 {
            break;
        }
        let Some(name) = metadata.get(at + 2..at + 2 + len as usize) else {
            break;
        };
        out.push(String::from_utf8_lossy(name).into_owned());
        at += 2 + len as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(group: &str, member: &str) -> JoinRequest {
        JoinRequest {
            group_id: group.into(),
            member_id: member.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 6000,
            rebalance_timeout_ms: 10000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: true,
        }
    }

    /// KIP-394 first join, then the real join; returns (member id, result).
    fn join_new(
        g: &mut Groups,
        now: i64,
        token: Token,
    ) -> (String, Answer<JoinResult>, Vec<Delivery>) {
        let (a, _) = g.join(now, join_req("g", ""), token);
        let Answer::Now(r) = a else {
            panic!("first join must answer")
        };
        assert_eq!(r.error, code::MEMBER_ID_REQUIRED);
        let (a, mut d) = g.join(now, join_req("g", &r.member_id), token);
        // A join parked only by a forming group's join window is settled by a later tick.
        if a == Answer::Parked {
            d.extend(g.tick(now + INITIAL_JOIN_WINDOW_MS));
            let mine = d
                .iter()
                .position(|x| matches!(x, Delivery::Join(t, _) if *t == token));
            if let Some(Delivery::Join(_, res)) = mine.map(|pos| d.remove(pos)) {
                return (r.member_id, Answer::Now(res), d);
            }
        }
        (r.member_id, a, d)
    }

    #[test]
    fn members_joining_a_forming_group_together_share_one_rebalance() {
        let mut g = Groups::default();
        let mut ids = Vec::new();
        for token in 1..=3 {
            let (a, _) = g.join(token as i64 * 10, join_req("g", ""), token);
            let Answer::Now(r) = a else { panic!() };
            let (a, d) = g.join(token as i64 * 10, join_req("g", &r.member_id), token);
            assert_eq!(a, Answer::Parked);
            assert!(d.is_empty());
            ids.push(r.member_id);
        }
        assert!(
            g.tick(10 + INITIAL_JOIN_WINDOW_MS - 1).is_empty(),
            "window still open"
        );
        let d = g.tick(10 + INITIAL_JOIN_WINDOW_MS);
        assert_eq!(d.len(), 3, "all three answered by the first rebalance");
        for delivery in d {
            let Delivery::Join(_, r) = delivery else {
                panic!()
            };
            assert_eq!((r.error, r.generation), (0, 1));
        }
    }

    #[test]
    fn single_member_joins_and_syncs_at_once() {
        let mut g = Groups::default();
        let (id, a, d) = join_new(&mut g, 0, 1);
        assert!(d.is_empty());
        let Answer::Now(r) = a else {
            panic!("a lone member must not wait")
        };
        assert_eq!(
            (r.error, r.generation, r.leader.as_str()),
            (0, 1, id.as_str())
        );
        assert_eq!(r.members.len(), 1);
        let (a, _) = g.sync(
            1,
            "g",
            &id,
            None,
            1,
            vec![(id.clone(), Bytes::from_static(b"A"))],
            2,
        );
        assert_eq!(
            a,
            Answer::Now(SyncResult {
                error: 0,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignment: Bytes::from_static(b"A"),
            })
        );
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        assert_eq!(g.heartbeat(2, "g", &id, None, 1), code::NONE);
        assert_eq!(g.heartbeat(2, "g", &id, None, 0), code::ILLEGAL_GENERATION);
        assert_eq!(
            g.heartbeat(2, "g", "nobody", None, 1),
            code::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn second_member_rebalance_completes_when_both_rejoined() {
        let mut g = Groups::default();
        let (a_id, _, _) = join_new(&mut g, 0, 1);
        g.sync(
            0,
            "g",
            &a_id,
            None,
            1,
            vec![(a_id.clone(), Bytes::from_static(b"all"))],
            2,
        );
        // b joins: parked; a learns from its heartbeat
        let (b_id, ans, _) = join_new(&mut g, 100, 3);
        assert_eq!(ans, Answer::Parked);
        assert_eq!(
            g.heartbeat(150, "g", &a_id, None, 1),
            code::REBALANCE_IN_PROGRESS
        );
        // a rejoins: the rebalance completes at once, both get generation 2
        let (ans, deliveries) = g.join(200, join_req("g", &a_id), 4);
        let Answer::Now(ra) = ans else {
            panic!("a's rejoin completes the rebalance")
        };
        assert_eq!(ra.generation, 2);
        assert_eq!(deliveries.len(), 1);
        let Delivery::Join(3, rb) = &deliveries[0] else {
            panic!("b is answered")
        };
        assert_eq!(rb.generation, 2);
        assert_eq!(rb.member_id, b_id);
        // leader stays a (it was leader before), and sees both members
        assert_eq!(ra.leader, a_id);
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty());
        // follower syncs first (parked), then the leader's sync answers both
        let (ans, _) = g.sync(210, "g", &b_id, None, 2, vec![], 5);
        assert_eq!(ans, Answer::Parked);
        let (ans, deliveries) = g.sync(
            220,
            "g",
            &a_id,
            None,
            2,
            vec![
                (a_id.clone(), Bytes::from_static(b"p0")),
                (b_id.clone(), Bytes::from_static(b"p1")),
            ],
            6,
        );
        assert!(matches!(ans, Answer::Now(SyncResult { error: 0, .. })));
        assert_eq!(deliveries.len(), 1);
        let Delivery::Sync(5, rb) = &deliveries[0] else {
            panic!()
        };
        assert_eq!(rb.assignment, Bytes::from_static(b"p1"));
    }

    #[test]
    fn leave_and_session_expiry_trigger_rebalances() {
        let mut g = Groups::default();
        let (a, _, _) = join_new(&mut g, 0, 1);
        let (b, _, _) = join_new(&mut g, 0, 2);
        let (_, d) = g.join(0, join_req("g", &a), 3);
        let _ = d;
        g.sync(0, "g", &a, None, 2, vec![], 4);
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        // b leaves: a must rejoin, and alone it completes at once
        let (codes, _) = g.leave(10, "g", &[(b.clone(), None)]);
        assert_eq!(codes, vec![0]);
        assert_eq!(
            g.heartbeat(20, "g", &a, None, 2),
            code::REBALANCE_IN_PROGRESS
        );
        let (ans, _) = g.join(30, join_req("g", &a), 5);
        let Answer::Now(r) = ans else { panic!() };
        assert_eq!((r.generation, r.members.len()), (3, 1));
        g.sync(30, "g", &a, None, 3, vec![], 6);
        // a stops heartbeating: after the session timeout the group is empty
        let d = g.tick(30 + 6001);
        assert!(d.is_empty());
        assert!(g.get("g").is_none(), "empty group is dropped");
    }

    #[test]
    fn rebalance_timeout_removes_members_that_do_not_rejoin() {
        let mut g = Groups::default();
        let (a, _, _) = join_new(&mut g, 0, 1);
        g.sync(0, "g", &a, None, 1, vec![], 2);
        let (_b, ans, _) = join_new(&mut g, 1000, 3);
        assert_eq!(ans, Answer::Parked);
        // a keeps heartbeating but never rejoins
        for t in (2000..11000).step_by(1000) {
            assert_eq!(
                g.heartbeat(t, "g", &a, None, 1),
                code::REBALANCE_IN_PROGRESS
            );
            assert!(g.tick(t).is_empty());
        }
        let d = g.tick(11_001);
        assert_eq!(d.len(), 1);
        let Delivery::Join(3, r) = &d[0] else {
            panic!()
        };
        assert_eq!((r.error, r.generation, r.members.len()), (0, 2, 1));
        assert_eq!(
            g.heartbeat(11_002, "g", &a, None, 1),
            code::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn static_member_rejoin_keeps_assignment_and_fences_the_old_id() {
        let mut g = Groups::default();
        let mut req = join_req("g", "");
        req.group_instance_id = Some("i1".into());
        let (ans, _) = g.join(0, req.clone(), 1);
        assert_eq!(ans, Answer::Parked, "a forming group waits its join window");
        let r1 = match g.tick(INITIAL_JOIN_WINDOW_MS).pop() {
            Some(Delivery::Join(1, r)) => r,
            other => panic!("the window's end completes the join: {other:?}"),
        };
        let old = r1.member_id.clone();
        let mut other = join_req("g", "");
        other.require_known_member_id = false;
        let (ans, d) = g.join(0, other, 2);
        assert_eq!(ans, Answer::Parked);
        assert!(d.is_empty());
        let (ans, d) = g.join(
            0,
            {
                let mut r = req.clone();
                r.member_id = old.clone();
                r
            },
            3,
        );
        let leader = match (ans, d.first()) {
            (Answer::Now(r), _) => r.leader,
            (_, Some(Delivery::Join(_, r))) => r.leader.clone(),
            _ => panic!("rebalance should complete"),
        };
        let members: Vec<String> = g
            .describe_members("g")
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        let follower = members.iter().find(|m| **m != leader).unwrap().clone();
        let assignments = members
            .iter()
            .map(|m| (m.clone(), Bytes::from(m.clone().into_bytes())))
            .collect();
        g.sync(1, "g", &follower, None, 2, vec![], 4);
        g.sync(1, "g", &leader, None, 2, assignments, 5);
        assert_eq!(g.get("g").unwrap().state, GroupState::Stable);
        if old != leader {
            // the static follower restarts with no member id: no rebalance, old id fenced
            let (ans, _) = g.join(2, req, 6);
            let Answer::Now(r) = ans else { panic!() };
            assert_eq!(r.generation, 2);
            assert_ne!(r.member_id, old);
            assert_eq!(
                g.heartbeat(3, "g", &old, Some("i1"), 2),
                code::FENCED_INSTANCE_ID
            );
            let (ans, _) = g.sync(3, "g", &r.member_id, Some("i1"), 2, vec![], 7);
            let Answer::Now(s) = ans else { panic!() };
            assert_eq!(s.assignment, Bytes::from(old.into_bytes()));
        }
    }

    #[test]
    fn errors_for_bad_requests() {
        let mut g = Groups::default();
        let (a, _) = g.join(0, join_req("", ""), 1);
        assert!(matches!(
            a,
            Answer::Now(JoinResult {
                error: code::INVALID_GROUP_ID,
                ..
            })
        ));
        let mut r = join_req("g", "");
        r.session_timeout_ms = 10;
        let (a, _) = g.join(0, r, 1);
        assert!(matches!(
            a,
            Answer::Now(JoinResult {
                error: code::INVALID_SESSION_TIMEOUT,
                ..
            })
        ));
        let (a, _) = g.join(0, join_req("g", "made-up"), 1);
        assert!(matches!(
            a,
            Answer::Now(JoinResult {
                error: code::UNKNOWN_MEMBER_ID,
                ..
            })
        ));
        let (id, _, _) = join_new(&mut g, 0, 2);
        let mut other = join_req("g", "");
        other.protocols = vec![("roundrobin-only".into(), Bytes::new())];
        let (a, _) = g.join(0, other, 3);
        assert!(matches!(
            a,
            Answer::Now(JoinResult {
                error: code::INCONSISTENT_GROUP_PROTOCOL,
                ..
            })
        ));
        assert_eq!(
            g.check_commit("g", &id, None, 1),
            Err(code::REBALANCE_IN_PROGRESS)
        );
        g.sync(0, "g", &id, None, 1, vec![], 4);
        assert_eq!(g.check_commit("g", &id, None, 1), Ok(()));
        assert_eq!(
            g.check_commit("g", &id, None, 7),
            Err(code::ILLEGAL_GENERATION)
        );
        assert_eq!(
            g.check_commit("g", "", None, -1),
            Err(code::ILLEGAL_GENERATION)
        );
        assert_eq!(g.check_commit("other", "", None, -1), Ok(()));
        assert_eq!(
            g.check_commit("other", "m", None, 3),
            Err(code::UNKNOWN_MEMBER_ID)
        );
        assert_eq!(g.delete("g"), Err(code::NON_EMPTY_GROUP));
    }

    #[test]
    fn subscription_topics_parse() {
        let mut m = vec![0, 1, 0, 0, 0, 2];
        for t in ["ab", "c"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        assert_eq!(parse_subscription_topics(&m), vec!["ab", "c"]);
        assert!(parse_subscription_topics(&m[..7]).is_empty());
    }
}
