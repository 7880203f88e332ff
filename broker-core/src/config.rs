//! Topic configuration: the Kafka topic configs Strait implements, their defaults, validation,
//! and the conversion to the log's own settings.
//!
//! Only configs with real behaviour are accepted; any other name is refused with
//! INVALID_CONFIG and a message naming the supported ones, so a user never believes a setting
//! took effect when it did not.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::log::LogConfig;

/// How a config's value is typed, as DescribeConfigs v3+ reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Int,
    Long,
    String,
    List,
}

impl ConfigKind {
    /// The `config_type` code of DescribeConfigs v3+ (STRING=2, INT=3, LONG=5, LIST=7).
    pub fn wire_code(self) -> i8 {
        match self {
            ConfigKind::String => 2,
            ConfigKind::Int => 3,
            ConfigKind::Long => 5,
            ConfigKind::List => 7,
        }
    }
}

/// One supported topic config.
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: ConfigKind,
    pub default: &'static str,
    pub doc: &'static str,
}

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";

/// Every topic config Strait implements, with Kafka's defaults.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: CLEANUP_POLICY,
        kind: ConfigKind::List,
        default: "delete",
        doc: "Only `delete` (time/size retention of whole segments) is implemented.",
    },
    ConfigDef {
        name: INDEX_INTERVAL_BYTES,
        kind: ConfigKind::Int,
        default: "4096",
        doc: "Bytes between two entries of the sparse offset index.",
    },
    ConfigDef {
        name: MAX_MESSAGE_BYTES,
        kind: ConfigKind::Int,
        default: "1048588",
        doc: "Largest record batch accepted by Produce.",
    },
    ConfigDef {
        name: MESSAGE_TIMESTAMP_TYPE,
        kind: ConfigKind::String,
        default: "CreateTime",
        doc: "CreateTime keeps the producer's timestamps; LogAppendTime stamps the broker's clock.",
    },
    ConfigDef {
        name: RETENTION_BYTES,
        kind: ConfigKind::Long,
        default: "-1",
        doc: "Size above which the oldest whole segments are deleted; -1 = no limit.",
    },
    ConfigDef {
        name: RETENTION_MS,
        kind: ConfigKind::Long,
        default: "604800000",
        doc: "Age after which whole segments are deleted; -1 = forever.",
    },
    ConfigDef {
        name: SEGMENT_BYTES,
        kind: ConfigKind::Int,
        default: "1073741824",
        doc: "Size at which the active segment is rolled.",
    },
    ConfigDef {
        name: SEGMENT_MS,
        kind: ConfigKind::Long,
        default: "604800000",
        doc: "Age at which the active segment is rolled.",
    },
];

/// A refused config.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown topic config `{0}`; Strait implements: {names}", names = supported_names())]
    Unknown(String),
    #[error("invalid value `{value}` for `{name}`: {reason}")]
    InvalidValue {
        name: String,
        value: String,
        reason: String,
    },
    #[error("`{0}` cannot be null")]
    Null(String),
}

fn supported_names() -> String {
    TOPIC_CONFIGS
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn definition(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks that `value` is acceptable for config `name`.
pub fn validate(name: &str, value: &str) -> Result<(), ConfigError> {
    let def = definition(name).ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
    let bad = |reason: &str| ConfigError::InvalidValue {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    match def.kind {
        ConfigKind::Int => {
            let v: i32 = value
                .trim()
                .parse()
                .map_err(|_| bad("not a 32-bit integer"))?;
            let min = match name {
                SEGMENT_BYTES => 14,
                MAX_MESSAGE_BYTES => 0,
                _ => 0,
            };
            if v < min {
                return Err(bad(&format!("must be at least {min}")));
            }
        }
        ConfigKind::Long => {
            let v: i64 = value
                .trim()
                .parse()
                .map_err(|_| bad("not a 64-bit integer"))?;
            let min = if name == SEGMENT_MS { 1 } else { -1 };
            if v < min {
                return Err(bad(&format!("must be at least {min}")));
            }
        }
        ConfigKind::String => {
            if name == MESSAGE_TIMESTAMP_TYPE && value != "CreateTime" && value != "LogAppendTime" {
                return Err(bad("must be CreateTime or LogAppendTime"));
            }
        }
        ConfigKind::List => {
            if name == CLEANUP_POLICY {
                for policy in value.split(',').map(str::trim) {
                    match policy {
                        "delete" => {}
                        "compact" => {
                            return Err(bad("log compaction is not implemented by Strait yet"))
                        }
                        _ => return Err(bad("must be `delete`")),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The overrides set on one topic (only validated, supported names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    /// Builds a config from name/value pairs, validating each.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Self, ConfigError> {
        let mut config = TopicConfig::default();
        for (name, value) in pairs {
            let value = value.ok_or_else(|| ConfigError::Null(name.to_string()))?;
            config.set(name, value)?;
        }
        Ok(config)
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        validate(name, value)?;
        self.overrides
            .insert(name.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Removes an override (IncrementalAlterConfigs DELETE); unknown names are an error.
    pub fn remove(&mut self, name: &str) -> Result<(), ConfigError> {
        definition(name).ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
        self.overrides.remove(name);
        Ok(())
    }

    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_override(&self, name: &str) -> bool {
        self.overrides.contains_key(name)
    }

    /// The effective value: the override, else the default.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.overrides
            .get(name)
            .map(String::as_str)
            .or_else(|| definition(name).map(|d| d.default))
    }

    fn number(&self, name: &str) -> i64 {
        // Values were validated on the way in; a default that does not parse is a programming
        // error caught by the unit test below.
        self.value(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }

    pub fn max_message_bytes(&self) -> usize {
        self.number(MAX_MESSAGE_BYTES).max(0) as usize
    }

    pub fn log_append_time(&self) -> bool {
        self.value(MESSAGE_TIMESTAMP_TYPE) == Some("LogAppendTime")
    }

    /// The settings the partition log needs.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.number(SEGMENT_BYTES).max(14) as u64,
            segment_ms: self.number(SEGMENT_MS).max(1),
            retention_ms: self.number(RETENTION_MS),
            retention_bytes: self.number(RETENTION_BYTES),
            index_interval_bytes: self.number(INDEX_INTERVAL_BYTES).max(0) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        for def in TOPIC_CONFIGS {
            validate(def.name, def.default).unwrap();
        }
        let log = TopicConfig::default().log_config();
        assert_eq!(log.segment_bytes, 1 << 30);
        assert_eq!(log.retention_bytes, -1);
        assert_eq!(TopicConfig::default().max_message_bytes(), 1048588);
    }

    #[test]
    fn unknown_and_invalid_are_refused() {
        assert!(matches!(
            validate("min.compaction.lag.ms", "1"),
            Err(ConfigError::Unknown(_))
        ));
        assert!(validate(RETENTION_MS, "soon").is_err());
        assert!(validate(CLEANUP_POLICY, "compact").is_err());
        assert!(validate(MESSAGE_TIMESTAMP_TYPE, "Now").is_err());
        let mut c = TopicConfig::default();
        c.set(RETENTION_BYTES, "1000").unwrap();
        assert_eq!(c.log_config().retention_bytes, 1000);
        assert!(c.is_override(RETENTION_BYTES));
        c.remove(RETENTION_BYTES).unwrap();
        assert_eq!(c.log_config().retention_bytes, -1);
    }
}
