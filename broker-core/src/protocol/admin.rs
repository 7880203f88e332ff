//! Administrative APIs: topics (create, delete, add partitions), configs (describe, alter,
//! incremental alter) and DescribeCluster.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{error_code, error_message, str_bytes, Ctx, ProtocolError, Reply};
use crate::broker::{BrokerError, NewTopic};
use crate::config::{self, ConfigError, TopicConfig, TOPIC_CONFIGS};

/// Config resource types of the Describe/Alter config APIs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources of DescribeConfigs v1+.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn new_topic_from_request(
    ctx: &Ctx,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, BrokerError> {
    let node = ctx.broker.config.node_id;
    let partitions = if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(BrokerError::InvalidReplicaAssignment(
                "give either assignments or partitions/replication factor, not both".into(),
            ));
        }
        for (i, a) in t.assignments.iter().enumerate() {
            if a.partition_index != i as i32 {
                return Err(BrokerError::InvalidReplicaAssignment(
                    "partition indexes must be 0..n in order".into(),
                ));
            }
            if a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() != 1 {
                return Err(BrokerError::InvalidReplicaAssignment(format!(
                    "the only broker is node {node}"
                )));
            }
        }
        t.assignments.len() as i32
    } else {
        if t.replication_factor != -1 && t.replication_factor != 1 {
            return Err(BrokerError::InvalidReplicationFactor(t.replication_factor));
        }
        if t.num_partitions == -1 {
            ctx.broker.config.default_partitions
        } else {
            t.num_partitions
        }
    };
    let config = TopicConfig::from_pairs(
        t.configs
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
    )?;
    Ok(NewTopic {
        name: t.name.to_string(),
        partitions,
        config,
    })
}

fn created_configs(config: &TopicConfig) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(def.name))
                .with_value(config.value(def.name).map(str_bytes))
                .with_config_source(if config.is_override(def.name) {
                    SOURCE_DYNAMIC_TOPIC
                } else {
                    SOURCE_DEFAULT
                })
        })
        .collect()
}

pub(super) fn create_topics(ctx: &Ctx, req: CreateTopicsRequest) -> Result<Reply, ProtocolError> {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let outcome = new_topic_from_request(ctx, t).and_then(|new| {
            if req.validate_only {
                ctx.broker.validate_new_topic(&new)?;
                Ok((new.partitions, new.config, None))
            } else {
                let partitions = new.partitions;
                let config = new.config.clone();
                let topic = ctx.broker.create_topic(new)?;
                Ok((partitions, config, Some(topic.id)))
            }
        });
        match outcome {
            Ok((partitions, config, id)) => {
                if ctx.version >= 5 {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                        .with_configs(Some(created_configs(&config)));
                }
                if ctx.version >= 7 {
                    if let Some(id) = id {
                        result = result.with_topic_id(id);
                    }
                }
            }
            Err(e) => {
                result = result.with_error_code(error_code(&e));
                if ctx.version >= 1 {
                    result = result.with_error_message(error_message(&e));
                }
            }
        }
        results.push(result);
    }
    ctx.respond(&CreateTopicsResponse::default().with_topics(results))
}

pub(super) fn delete_topics(ctx: &Ctx, req: DeleteTopicsRequest) -> Result<Reply, ProtocolError> {
    // v0-5 name topics in `topic_names`; v6 in `topics` by name or id.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id)),
    );
    let responses = wanted
        .into_iter()
        .map(|(name, id)| {
            let name = name.or_else(|| {
                ctx.broker
                    .topics()
                    .into_iter()
                    .find(|t| t.id == id)
                    .map(|t| t.name.clone())
            });
            let mut r = DeletableTopicResult::default()
                .with_name(name.as_deref().map(|n| TopicName(str_bytes(n))));
            match name {
                None => {
                    r = r
                        .with_topic_id(id)
                        .with_error_code(ResponseError::UnknownTopicId.code())
                }
                Some(n) => match ctx.broker.delete_topic(&n) {
                    Ok(topic_id) => {
                        if ctx.version >= 6 {
                            r = r.with_topic_id(topic_id);
                        }
                    }
                    Err(e) => {
                        r = r.with_error_code(error_code(&e));
                        if ctx.version >= 5 {
                            r = r.with_error_message(error_message(&e));
                        }
                    }
                },
            }
            r
        })
        .collect();
    ctx.respond(&DeleteTopicsResponse::default().with_responses(responses))
}

pub(super) fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> Result<Reply, ProtocolError> {
    let results = req
        .topics
        .iter()
        .map(|t| {
            let r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            match ctx
                .broker
                .create_partitions(&t.name, t.count, req.validate_only)
            {
                Ok(()) => r,
                Err(e) => r
                    .with_error_code(error_code(&e))
                    .with_error_message(error_message(&e)),
            }
        })
        .collect();
    ctx.respond(&CreatePartitionsResponse::default().with_results(results))
}

/// One config as DescribeConfigs reports it.
struct Entry<'a> {
    name: &'a str,
    value: Option<&'a str>,
    source: i8,
    read_only: bool,
    kind: i8,
    doc: &'a str,
}

/// What the request asked to include.
#[derive(Clone, Copy)]
struct Include {
    synonyms: bool,
    docs: bool,
}

fn config_entry(ctx: &Ctx, e: Entry<'_>, include: Include) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(e.name))
        .with_value(e.value.map(str_bytes))
        .with_read_only(e.read_only)
        .with_config_source(e.source);
    if include.synonyms && ctx.version >= 1 {
        r = r.with_synonyms(vec![DescribeConfigsSynonym::default()
            .with_name(str_bytes(e.name))
            .with_value(e.value.map(str_bytes))
            .with_source(e.source)]);
    }
    if ctx.version >= 3 {
        r = r.with_config_type(e.kind);
        if include.docs {
            r = r.with_documentation(Some(str_bytes(e.doc)));
        }
    }
    r
}

fn describe_topic_configs(
    ctx: &Ctx,
    name: &str,
    keys: Option<&Vec<StrBytes>>,
    include: Include,
) -> Result<Vec<DescribeConfigsResourceResult>, BrokerError> {
    let topic = ctx
        .broker
        .topic(name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
    let config = topic.config();
    Ok(TOPIC_CONFIGS
        .iter()
        .filter(|d| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == d.name)))
        .map(|def| {
            let source = if config.is_override(def.name) {
                SOURCE_DYNAMIC_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            let entry = Entry {
                name: def.name,
                value: config.value(def.name),
                source,
                read_only: false,
                kind: def.kind.wire_code(),
                doc: def.doc,
            };
            config_entry(ctx, entry, include)
        })
        .collect())
}

fn describe_broker_configs(
    ctx: &Ctx,
    name: &str,
    keys: Option<&Vec<StrBytes>>,
    include: Include,
) -> Result<Vec<DescribeConfigsResourceResult>, BrokerError> {
    let c = &ctx.broker.config;
    if !name.is_empty() && name != c.node_id.to_string() {
        return Err(BrokerError::InvalidPartitions(format!(
            "unknown broker `{name}`; this is node {}",
            c.node_id
        )));
    }
    let entries: Vec<(&str, String, i8, &str)> = vec![
        (
            "broker.id",
            c.node_id.to_string(),
            3,
            "This broker's node id.",
        ),
        (
            "node.id",
            c.node_id.to_string(),
            3,
            "This broker's node id.",
        ),
        (
            "log.dirs",
            c.data_dir.display().to_string(),
            2,
            "The data directory.",
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://{}:{}", c.advertised_host, c.advertised_port),
            7,
            "The address clients are told to connect to.",
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            1,
            "Whether Metadata requests create missing topics.",
        ),
        (
            "num.partitions",
            c.default_partitions.to_string(),
            3,
            "Partitions of auto-created topics.",
        ),
        (
            "strait.fsync",
            c.fsync.to_string(),
            2,
            "When partition data is fsynced.",
        ),
    ];
    Ok(entries
        .into_iter()
        .filter(|(n, ..)| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == *n)))
        .map(|(n, v, kind, doc)| {
            let entry = Entry {
                name: n,
                value: Some(&v),
                source: SOURCE_STATIC_BROKER,
                read_only: true,
                kind,
                doc,
            };
            config_entry(ctx, entry, include)
        })
        .collect())
}

pub(super) fn describe_configs(
    ctx: &Ctx,
    req: DescribeConfigsRequest,
) -> Result<Reply, ProtocolError> {
    let results = req
        .resources
        .iter()
        .map(|r| {
            let keys = r.configuration_keys.as_ref();
            let include = Include {
                synonyms: req.include_synonyms,
                docs: req.include_documentation,
            };
            let described = match r.resource_type {
                RESOURCE_TOPIC => describe_topic_configs(ctx, &r.resource_name, keys, include),
                RESOURCE_BROKER => describe_broker_configs(ctx, &r.resource_name, keys, include),
                other => Err(BrokerError::InvalidPartitions(format!(
                    "config resource type {other} is not supported"
                ))),
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match described {
                Ok(configs) => result.with_configs(configs),
                Err(e @ BrokerError::InvalidPartitions(_)) => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(error_message(&e)),
                Err(e) => result
                    .with_error_code(error_code(&e))
                    .with_error_message(error_message(&e)),
            }
        })
        .collect();
    ctx.respond(&DescribeConfigsResponse::default().with_results(results))
}

/// Applies a config change to a topic resource: `change` edits a copy of the current config.
fn alter_topic(
    ctx: &Ctx,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut TopicConfig) -> Result<(), ConfigError>,
) -> (i16, Option<StrBytes>) {
    if resource_type != RESOURCE_TOPIC {
        return (
            ResponseError::InvalidRequest.code(),
            Some(str_bytes(
                "only topic configs can be altered; broker configs are set on the command line",
            )),
        );
    }
    let result = ctx
        .broker
        .topic(name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
        .and_then(|topic| {
            let mut config = topic.config();
            change(&mut config)?;
            if !validate_only {
                ctx.broker.set_topic_config(name, config)?;
            }
            Ok(())
        });
    match result {
        Ok(()) => (0, None),
        Err(e) => (error_code(&e), error_message(&e)),
    }
}

pub(super) fn alter_configs(ctx: &Ctx, req: AlterConfigsRequest) -> Result<Reply, ProtocolError> {
    let responses = req
        .resources
        .iter()
        .map(|r| {
            // AlterConfigs replaces the whole set of overrides.
            let (code, message) = alter_topic(
                ctx,
                r.resource_type,
                &r.resource_name,
                req.validate_only,
                |cfg| {
                    *cfg = TopicConfig::from_pairs(
                        r.configs
                            .iter()
                            .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
                    )?;
                    Ok(())
                },
            );
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    ctx.respond(&AlterConfigsResponse::default().with_responses(responses))
}

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn apply_incremental(
    cfg: &mut TopicConfig,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), ConfigError> {
    let def = config::definition(name).ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
    let list_op = |current: &str, v: &str, append: bool| -> String {
        let mut items: Vec<&str> = current
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if append {
            if !items.contains(&v) {
                items.push(v);
            }
        } else {
            items.retain(|i| *i != v);
        }
        items.join(",")
    };
    match op {
        OP_SET => cfg.set(
            name,
            value.ok_or_else(|| ConfigError::Null(name.to_string()))?,
        ),
        OP_DELETE => cfg.remove(name),
        OP_APPEND | OP_SUBTRACT if def.kind == config::ConfigKind::List => {
            let v = value.ok_or_else(|| ConfigError::Null(name.to_string()))?;
            let current = cfg.value(name).unwrap_or_default().to_string();
            cfg.set(name, &list_op(&current, v, op == OP_APPEND))
        }
        _ => Err(ConfigError::InvalidValue {
            name: name.to_string(),
            value: value.unwrap_or_default().to_string(),
            reason: format!("operation {op} is not valid for this config"),
        }),
    }
}

pub(super) fn incremental_alter_configs(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> Result<Reply, ProtocolError> {
    let responses = req
        .resources
        .iter()
        .map(|r| {
            let (code, message) = alter_topic(
                ctx,
                r.resource_type,
                &r.resource_name,
                req.validate_only,
                |cfg| {
                    for c in &r.configs {
                        apply_incremental(
                            cfg,
                            &c.name,
                            c.config_operation,
                            c.value.as_ref().map(|v| v.as_str()),
                        )?;
                    }
                    Ok(())
                },
            );
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    ctx.respond(&IncrementalAlterConfigsResponse::default().with_responses(responses))
}

pub(super) fn describe_cluster(
    ctx: &Ctx,
    _req: DescribeClusterRequest,
) -> Result<Reply, ProtocolError> {
    let c = &ctx.broker.config;
    let body = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&ctx.broker.cluster_id))
        .with_controller_id(BrokerId(c.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(c.node_id))
            .with_host(str_bytes(&c.advertised_host))
            .with_port(c.advertised_port)]);
    ctx.respond(&body)
}
