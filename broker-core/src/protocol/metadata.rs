//! ApiVersions and Metadata.
//!
//! Strait is one broker that leads every partition, so metadata lists this node as leader and
//! the only replica of everything. Topics named in a Metadata request that do not exist are
//! created when both the broker (`--auto-create-topics`) and the request allow it, as Kafka does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, TopicName,
};

use super::{advertised, error_code, str_bytes, Ctx, ProtocolError, Reply};
use crate::broker::{BrokerError, NewTopic, Topic, LEADER_EPOCH};
use crate::config::TopicConfig;

/// The ApiVersions body listing exactly the implemented APIs. Tagged fields keep their default
/// values, so they are left out on the wire (librdkafka <= 2.0 cannot skip them).
pub(super) fn api_versions_body(error: i16) -> ApiVersionsResponse {
    let keys = ApiKey::iter()
        .filter_map(|k| {
            advertised(k).map(|v| {
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(v.min)
                    .with_max_version(v.max)
            })
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(keys)
}

pub(super) fn broker_entry(ctx: &Ctx) -> MetadataResponseBroker {
    let c = &ctx.broker.config;
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(c.node_id))
        .with_host(str_bytes(&c.advertised_host))
        .with_port(c.advertised_port)
}

fn topic_entry(ctx: &Ctx, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(ctx.broker.config.node_id);
    let partitions = (0..topic.partition_count())
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(node)
                .with_leader_epoch(if ctx.version >= 7 { LEADER_EPOCH } else { -1 })
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    let mut entry = MetadataResponseTopic::default()
        .with_name(Some(TopicName(super::str_bytes(&topic.name))))
        .with_partitions(partitions);
    if ctx.version >= 10 {
        entry = entry.with_topic_id(topic.id);
    }
    entry
}

fn error_entry(name: &str, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_error_code(code)
}

pub(super) fn metadata(ctx: &Ctx, req: MetadataRequest) -> Result<Reply, ProtocolError> {
    let broker = &ctx.broker;
    let topics = match &req.topics {
        // null = all topics (v0: an empty list also means all)
        None => broker
            .topics()
            .iter()
            .map(|t| topic_entry(ctx, t))
            .collect(),
        Some(list) if list.is_empty() && ctx.version == 0 => broker
            .topics()
            .iter()
            .map(|t| topic_entry(ctx, t))
            .collect(),
        Some(list) => {
            let auto_create = broker.config.auto_create_topics
                && (ctx.version < 4 || req.allow_auto_topic_creation);
            list.iter()
                .map(|requested| {
                    let Some(name) = requested.name.as_ref() else {
                        // Lookup by topic id (v10+).
                        return broker
                            .topics()
                            .into_iter()
                            .find(|t| t.id == requested.topic_id)
                            .map(|t| topic_entry(ctx, &t))
                            .unwrap_or_else(|| {
                                MetadataResponseTopic::default()
                                    .with_topic_id(requested.topic_id)
                                    .with_error_code(ResponseError::UnknownTopicId.code())
                            });
                    };
                    if let Some(t) = broker.topic(name) {
                        return topic_entry(ctx, &t);
                    }
                    if !auto_create {
                        return error_entry(name, ResponseError::UnknownTopicOrPartition.code());
                    }
                    let created = broker.create_topic(NewTopic {
                        name: name.to_string(),
                        partitions: broker.config.default_partitions,
                        config: TopicConfig::default(),
                    });
                    match created {
                        Ok(t) => topic_entry(ctx, &t),
                        Err(BrokerError::TopicExists(_)) => broker
                            .topic(name)
                            .map(|t| topic_entry(ctx, &t))
                            .unwrap_or_else(|| {
                                error_entry(name, ResponseError::UnknownTopicOrPartition.code())
                            }),
                        Err(e) => {
                            tracing::warn!(topic = %name.as_str(), error = %e, "auto-create failed");
                            error_entry(name, error_code(&e))
                        }
                    }
                })
                .collect()
        }
    };
    let mut body = MetadataResponse::default()
        .with_brokers(vec![broker_entry(ctx)])
        .with_topics(topics);
    if ctx.version >= 2 {
        body = body.with_cluster_id(Some(str_bytes(&broker.cluster_id)));
    }
    if ctx.version >= 1 {
        body = body.with_controller_id(BrokerId(broker.config.node_id));
    }
    ctx.respond(&body)
}
