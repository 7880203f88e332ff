//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//!
//! This broker is the coordinator of every group. Membership logic lives in
//! `group::state`; these handlers translate between it and the wire.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{encode_response, str_bytes, Ctx, ProtocolError, Reply};
use crate::group::offsets::CommittedOffset;
use crate::group::state::{code, GroupState, JoinRequest};
use crate::group::CommitError;

/// Kafka's `offset.metadata.max.bytes`.
const MAX_METADATA_BYTES: usize = 4096;
/// The offset is part of an open transaction: retry later (KIP-447).
const UNSTABLE_OFFSET_COMMIT: i16 = 88;
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn opt_str(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|v| v.to_string())
}

pub(super) fn find_coordinator(
    ctx: &Ctx,
    req: FindCoordinatorRequest,
) -> Result<Reply, ProtocolError> {
    let c = &ctx.broker.config;
    // This broker coordinates every group and every transactional id.
    let answer = |key_type: i8| -> (i16, Option<StrBytes>) {
        if key_type == KEY_TYPE_GROUP || key_type == KEY_TYPE_TRANSACTION {
            (0, None)
        } else {
            (
                ResponseError::InvalidRequest.code(),
                Some(StrBytes::from_string(format!(
                    "coordinator key type {key_type} is not supported (0 = group, 1 = transaction)"
                ))),
            )
        }
    };
    let body = if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let (error, message) = answer(req.key_type);
                let mut co = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(error)
                    .with_error_message(message);
                if error == 0 {
                    co = co
                        .with_node_id(BrokerId(c.node_id))
                        .with_host(str_bytes(&c.advertised_host))
                        .with_port(c.advertised_port);
                } else {
                    co = co.with_node_id(BrokerId(-1)).with_port(-1);
                }
                co
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (error, message) = answer(if ctx.version >= 1 { req.key_type } else { 0 });
        let mut body = FindCoordinatorResponse::default().with_error_code(error);
        if ctx.version >= 1 {
            body = body.with_error_message(message);
        }
        if error == 0 {
            body.with_node_id(BrokerId(c.node_id))
                .with_host(str_bytes(&c.advertised_host))
                .with_port(c.advertised_port)
        } else {
            body.with_node_id(BrokerId(-1)).with_port(-1)
        }
    };
    ctx.respond(&body)
}

pub(super) fn join_group(ctx: Ctx, req: JoinGroupRequest) -> Result<Reply, ProtocolError> {
    let join = JoinRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: opt_str(&req.group_instance_id),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if ctx.version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: ctx.version >= 4,
    };
    Ok(Reply::Later(Box::pin(async move {
        let r = ctx.broker.groups.join(join).await;
        let mut body = JoinGroupResponse::default()
            .with_error_code(r.error)
            .with_generation_id(r.generation)
            .with_protocol_name(r.protocol_name.as_deref().map(str_bytes))
            .with_leader(str_bytes(&r.leader))
            .with_member_id(str_bytes(&r.member_id))
            .with_members(
                r.members
                    .iter()
                    .map(|m| {
                        let mut jm = JoinGroupResponseMember::default()
                            .with_member_id(str_bytes(&m.member_id))
                            .with_metadata(m.metadata.clone());
                        if ctx.version >= 5 {
                            jm = jm.with_group_instance_id(
                                m.group_instance_id.as_deref().map(str_bytes),
                            );
                        }
                        jm
                    })
                    .collect(),
            );
        if ctx.version >= 7 {
            body = body.with_protocol_type(r.protocol_type.as_deref().map(str_bytes));
        }
        if ctx.version < 7 && body.protocol_name.is_none() {
            // Before v7 the protocol name is not nullable.
            body.protocol_name = Some(StrBytes::default());
        }
        encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
    })))
}

pub(super) fn sync_group(ctx: Ctx, req: SyncGroupRequest) -> Result<Reply, ProtocolError> {
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    Ok(Reply::Later(Box::pin(async move {
        let instance = opt_str(&req.group_instance_id);
        let r = ctx
            .broker
            .groups
            .sync(
                &req.group_id,
                &req.member_id,
                instance.as_deref(),
                req.generation_id,
                assignments,
            )
            .await;
        let mut error = r.error;
        if error == 0 && ctx.version >= 5 {
            let mismatch = |asked: &Option<StrBytes>, have: &Option<String>| {
                asked
                    .as_ref()
                    .is_some_and(|a| have.as_deref().is_some_and(|h| h != a.as_str()))
            };
            if mismatch(&req.protocol_type, &r.protocol_type)
                || mismatch(&req.protocol_name, &r.protocol_name)
            {
                error = code::INCONSISTENT_GROUP_PROTOCOL;
            }
        }
        let mut body = SyncGroupResponse::default()
            .with_error_code(error)
            .with_assignment(r.assignment);
        if ctx.version >= 5 {
            body = body
                .with_protocol_type(r.protocol_type.as_deref().map(str_bytes))
                .with_protocol_name(r.protocol_name.as_deref().map(str_bytes));
        }
        encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
    })))
}

pub(super) fn heartbeat(ctx: &Ctx, req: HeartbeatRequest) -> Result<Reply, ProtocolError> {
    let instance = opt_str(&req.group_instance_id);
    let error = ctx.broker.groups.heartbeat(
        &req.group_id,
        &req.member_id,
        instance.as_deref(),
        req.generation_id,
    );
    ctx.respond(&HeartbeatResponse::default().with_error_code(error))
}

pub(super) fn leave_group(ctx: &Ctx, req: LeaveGroupRequest) -> Result<Reply, ProtocolError> {
    if ctx.version < 3 {
        let codes = ctx
            .broker
            .groups
            .leave(&req.group_id, &[(req.member_id.to_string(), None)]);
        let error = codes.first().copied().unwrap_or(code::UNKNOWN_MEMBER_ID);
        return ctx.respond(&LeaveGroupResponse::default().with_error_code(error));
    }
    let members: Vec<(String, Option<String>)> = req
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
        .collect();
    let codes = ctx.broker.groups.leave(&req.group_id, &members);
    let responses = req
        .members
        .iter()
        .zip(codes)
        .map(|(m, error)| {
            MemberResponse::default()
                .with_member_id(m.member_id.clone())
                .with_group_instance_id(m.group_instance_id.clone())
                .with_error_code(error)
        })
        .collect();
    ctx.respond(&LeaveGroupResponse::default().with_members(responses))
}

pub(super) fn offset_commit(ctx: Ctx, req: OffsetCommitRequest) -> Result<Reply, ProtocolError> {
    // Per-partition checks first; valid entries are then committed together.
    let now = crate::broker::now_ms();
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut entries = Vec::new();
    for t in &req.topics {
        let mut parts = Vec::new();
        for p in &t.partitions {
            let error = match ctx.broker.partition(&t.name, p.partition_index) {
                Err(_) => ResponseError::UnknownTopicOrPartition.code(),
                Ok(_)
                    if p.committed_metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > MAX_METADATA_BYTES) =>
                {
                    ResponseError::OffsetMetadataTooLarge.code()
                }
                Ok(_) => {
                    entries.push((
                        t.name.to_string(),
                        p.partition_index,
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: if ctx.version >= 6 {
                                p.committed_leader_epoch
                            } else {
                                -1
                            },
                            commit_time_ms: now,
                            metadata: opt_str(&p.committed_metadata).unwrap_or_default(),
                        },
                    ));
                    0
                }
            };
            parts.push((p.partition_index, error));
        }
        results.push((t.name.clone(), parts));
    }
    Ok(Reply::Later(Box::pin(async move {
        let broker = ctx.broker.clone();
        let instance = opt_str(&req.group_instance_id);
        let group = req.group_id.to_string();
        let member = req.member_id.to_string();
        let generation = req.generation_id_or_member_epoch;
        // sled's flush is a blocking fsync.
        let outcome = tokio::task::spawn_blocking(move || {
            broker
                .groups
                .commit(&group, &member, instance.as_deref(), generation, &entries)
        })
        .await;
        let group_error = match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(CommitError::Group(code))) => code,
            Ok(Err(CommitError::Store(e))) => {
                tracing::error!(error = %e, "offset commit failed");
                ResponseError::CoordinatorNotAvailable.code()
            }
            Err(e) => {
                tracing::error!(error = %e, "offset commit task failed");
                ResponseError::CoordinatorNotAvailable.code()
            }
        };
        let topics = results
            .into_iter()
            .map(|(name, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(index, error)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(if error != 0 { error } else { group_error })
                            })
                            .collect(),
                    )
            })
            .collect();
        let body = OffsetCommitResponse::default().with_topics(topics);
        encode_response(ctx.correlation_id, ctx.version, &body).map(Some)
    })))
}

/// (topic, partition, offset, leader epoch, metadata, error) for one group's fetch.
type FetchedOffset = (String, i32, i64, i32, Option<String>, i16);

fn fetch_group_offsets(
    ctx: &Ctx,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<FetchedOffset>, i16> {
    let store = &ctx.broker.groups.offsets;
    let fail = |e| {
        tracing::error!(error = %e, "offset fetch failed");
        ResponseError::CoordinatorNotAvailable.code()
    };
    match topics {
        None => Ok(store
            .group_offsets(group)
            .map_err(fail)?
            .into_iter()
            .map(|(t, p, o)| (t, p, o.offset, o.leader_epoch, Some(o.metadata), 0))
            .collect()),
        Some(list) => {
            let mut out = Vec::new();
            for (topic, partitions) in list {
                for p in partitions {
                    if require_stable && ctx.broker.txns.has_pending_offset(group, &topic, p) {
                        out.push((topic.clone(), p, -1, -1, None, UNSTABLE_OFFSET_COMMIT));
                        continue;
                    }
                    let entry = match store.get(group, &topic, p).map_err(fail)? {
                        Some(o) => (
                            topic.clone(),
                            p,
                            o.offset,
                            o.leader_epoch,
                            Some(o.metadata),
                            0,
                        ),
                        None => (topic.clone(), p, -1, -1, Some(String::new()), 0),
                    };
                    out.push(entry);
                }
            }
            Ok(out)
        }
    }
}

pub(super) fn offset_fetch(ctx: &Ctx, req: OffsetFetchRequest) -> Result<Reply, ProtocolError> {
    let epoch = |e: i32| if ctx.version >= 5 { e } else { -1 };
    if ctx.version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let resp = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match fetch_group_offsets(ctx, &g.group_id, topics, req.require_stable) {
                    Err(error) => resp.with_error_code(error),
                    Ok(list) => {
                        let mut by_topic: Vec<OffsetFetchResponseTopics> = Vec::new();
                        for (t, p, off, le, meta, err) in list {
                            let part = OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(off)
                                .with_committed_leader_epoch(le)
                                .with_metadata(meta.as_deref().map(str_bytes))
                                .with_error_code(err);
                            match by_topic.last_mut() {
                                Some(last) if last.name.as_str() == t => last.partitions.push(part),
                                _ => by_topic.push(
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(str_bytes(&t)))
                                        .with_partitions(vec![part]),
                                ),
                            }
                        }
                        resp.with_topics(by_topic)
                    }
                }
            })
            .collect();
        return ctx.respond(&OffsetFetchResponse::default().with_groups(groups));
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let body = match fetch_group_offsets(
        ctx,
        &req.group_id,
        topics,
        ctx.version >= 7 && req.require_stable,
    ) {
        Err(error) => OffsetFetchResponse::default().with_error_code(error),
        Ok(list) => {
            let mut by_topic: Vec<OffsetFetchResponseTopic> = Vec::new();
            for (t, p, off, le, meta, err) in list {
                let part = OffsetFetchResponsePartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(off)
                    .with_committed_leader_epoch(epoch(le))
                    .with_metadata(meta.as_deref().map(str_bytes))
                    .with_error_code(err);
                match by_topic.last_mut() {
                    Some(last) if last.name.as_str() == t => last.partitions.push(part),
                    _ => by_topic.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(str_bytes(&t)))
                            .with_partitions(vec![part]),
                    ),
                }
            }
            OffsetFetchResponse::default().with_topics(by_topic)
        }
    };
    ctx.respond(&body)
}

/// Every known group: live ones with their state, plus groups that only have offsets (Empty).
fn all_groups(ctx: &Ctx) -> Vec<(String, String, GroupState)> {
    let mut out: Vec<(String, String, GroupState)> = ctx
        .broker
        .groups
        .groups()
        .iter()
        .map(|(name, g)| {
            (
                name.clone(),
                g.protocol_type().unwrap_or("consumer").to_string(),
                g.state,
            )
        })
        .collect();
    if let Ok(stored) = ctx.broker.groups.offsets.groups() {
        for name in stored {
            if !out.iter().any(|(n, ..)| *n == name) {
                out.push((name, "consumer".to_string(), GroupState::Empty));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub(super) fn list_groups(ctx: &Ctx, req: ListGroupsRequest) -> Result<Reply, ProtocolError> {
    let groups = all_groups(ctx)
        .into_iter()
        .filter(|(_, _, state)| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state.name()))
        })
        .filter(|_| {
            req.types_filter.is_empty()
                || req
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case("classic"))
        })
        .map(|(name, protocol_type, state)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(&protocol_type));
            if ctx.version >= 4 {
                g = g.with_group_state(StrBytes::from_static_str(state.name()));
            }
            if ctx.version >= 5 {
                g = g.with_group_type(StrBytes::from_static_str("classic"));
            }
            g
        })
        .collect();
    ctx.respond(&ListGroupsResponse::default().with_groups(groups))
}

pub(super) fn describe_groups(
    ctx: &Ctx,
    req: DescribeGroupsRequest,
) -> Result<Reply, ProtocolError> {
    let known = all_groups(ctx);
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            let Some((_, protocol_type, state)) = known.iter().find(|(n, ..)| n == id.as_str())
            else {
                return described.with_group_state(StrBytes::from_static_str("Dead"));
            };
            let groups = ctx.broker.groups.groups();
            let protocol = groups
                .get(id)
                .and_then(|g| g.protocol_name().map(str::to_string))
                .unwrap_or_default();
            let members = groups
                .describe_members(id)
                .into_iter()
                .map(|m| {
                    let mut dm = DescribedGroupMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_client_id(str_bytes(&m.client_id))
                        .with_client_host(str_bytes(&m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if ctx.version >= 4 {
                        dm = dm
                            .with_group_instance_id(m.group_instance_id.as_deref().map(str_bytes));
                    }
                    dm
                })
                .collect();
            described
                .with_group_state(StrBytes::from_static_str(state.name()))
                .with_protocol_type(str_bytes(protocol_type))
                .with_protocol_data(str_bytes(&protocol))
                .with_members(members)
        })
        .collect();
    ctx.respond(&DescribeGroupsResponse::default().with_groups(groups))
}

pub(super) fn delete_groups(ctx: &Ctx, req: DeleteGroupsRequest) -> Result<Reply, ProtocolError> {
    let results = req
        .groups_names
        .iter()
        .map(|id| {
            let error = match ctx.broker.groups.delete_group(id) {
                Ok(()) => 0,
                Err(CommitError::Group(code)) => code,
                Err(CommitError::Store(e)) => {
                    tracing::error!(error = %e, "group deletion failed");
                    ResponseError::CoordinatorNotAvailable.code()
                }
            };
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(error)
        })
        .collect();
    ctx.respond(&DeleteGroupsResponse::default().with_results(results))
}

pub(super) fn offset_delete(ctx: &Ctx, req: OffsetDeleteRequest) -> Result<Reply, ProtocolError> {
    let coordinator = &ctx.broker.groups;
    let live = coordinator
        .groups()
        .get(&req.group_id)
        .is_some_and(|g| g.member_count() > 0);
    let has_offsets = coordinator
        .offsets
        .group_offsets(&req.group_id)
        .map(|o| !o.is_empty())
        .unwrap_or(false);
    if !live && !has_offsets {
        return ctx
            .respond(&OffsetDeleteResponse::default().with_error_code(code::GROUP_ID_NOT_FOUND));
    }
    let subscribed = coordinator.groups().subscribed_topics(&req.group_id);
    let mut to_delete = Vec::new();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let busy = live && subscribed.iter().any(|s| s == t.name.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if busy {
                        ResponseError::GroupSubscribedToTopic.code()
                    } else {
                        to_delete.push((t.name.to_string(), p.partition_index));
                        0
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let error = match coordinator.offsets.delete(&req.group_id, &to_delete) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "offset deletion failed");
            ResponseError::CoordinatorNotAvailable.code()
        }
    };
    ctx.respond(
        &OffsetDeleteResponse::default()
            .with_error_code(error)
            .with_topics(topics),
    )
}
