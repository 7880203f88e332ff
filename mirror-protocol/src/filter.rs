//! Topic selection for a link: explicit names, name prefixes and anchored regexes. Internal
//! topics (names starting with `__`) are mirrored only when named explicitly.

use crate::error::ProtocolError;

/// Compiled-program size cap per regex: a hostile or careless pattern fails to compile
/// instead of taking memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Prefix of Kafka internal topic names (`__consumer_offsets`, `__transaction_state`...).
const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Which source topics a link mirrors, as sent in a TopicsRequest.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    /// Exact topic names (the only way to select an internal `__` topic).
    pub names: Vec<String>,
    /// Name prefixes.
    pub prefixes: Vec<String>,
    /// Regexes that must match the whole name.
    pub regexes: Vec<String>,
}

/// A [`TopicFilter`] ready for matching.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    names: std::collections::HashSet<String>,
    prefixes: Vec<String>,
    regexes: Vec<regex::Regex>,
}

impl TopicFilter {
    /// Compiles the regexes (anchored: the whole name must match). Error names the bad pattern.
    pub fn compile(&self) -> Result<CompiledFilter, ProtocolError> {
        let regexes = self
            .regexes
            .iter()
            .map(|pattern| {
                regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|source| ProtocolError::BadRegex {
                        pattern: pattern.clone(),
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledFilter {
            names: self.names.iter().cloned().collect(),
            prefixes: self.prefixes.clone(),
            regexes,
        })
    }

    /// True if the filter selects nothing at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty() && self.regexes.is_empty()
    }
}

impl CompiledFilter {
    /// Whether `topic` is mirrored: listed by name, or (unless internal) starting with a prefix
    /// or wholly matching a regex.
    pub fn matches(&self, topic: &str) -> bool {
        if self.names.contains(topic) {
            return true;
        }
        if topic.starts_with(INTERNAL_TOPIC_PREFIX) {
            return false;
        }
        self.prefixes
            .iter()
            .any(|prefix| topic.starts_with(prefix.as_str()))
            || self.regexes.iter().any(|regex| regex.is_match(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(names: &[&str], prefixes: &[&str], regexes: &[&str]) -> CompiledFilter {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        TopicFilter {
            names: owned(names),
            prefixes: owned(prefixes),
            regexes: owned(regexes),
        }
        .compile()
        .unwrap()
    }

    #[test]
    fn names_prefixes_and_anchored_regexes() {
        let f = filter(&["orders"], &["eu."], &["metrics-[0-9]+"]);
        assert!(f.matches("orders"));
        assert!(!f.matches("orders2"));
        assert!(f.matches("eu.payments"));
        assert!(!f.matches("us.payments"));
        assert!(f.matches("metrics-42"));
        assert!(!f.matches("metrics-42x"), "regex must match the whole name");
        assert!(!f.matches("xmetrics-42"), "regex must match the whole name");
        assert!(!f.matches("metrics-"));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let f = filter(&[], &[], &["a|b"]);
        assert!(f.matches("a"));
        assert!(f.matches("b"));
        assert!(!f.matches("ab"));
        assert!(!f.matches("xa"));
    }

    #[test]
    fn internal_topics_only_by_explicit_name() {
        let f = filter(&["__consumer_offsets"], &["", "__"], &[".*"]);
        assert!(f.matches("__consumer_offsets"));
        assert!(!f.matches("__transaction_state"));
        assert!(
            f.matches("anything"),
            "empty prefix selects every normal topic"
        );
        let none = filter(&[], &[], &[]);
        assert!(!none.matches("orders"));
        assert!(TopicFilter::default().is_empty());
    }

    #[test]
    fn bad_regex_names_the_pattern() {
        let error = TopicFilter {
            regexes: vec!["ok".into(), "bad(".into()],
            ..TopicFilter::default()
        }
        .compile()
        .unwrap_err();
        assert!(error.to_string().contains("\"bad(\""), "{error}");
        assert_eq!(error.code(), crate::ErrorCode::MalformedFrame);
    }

    #[test]
    fn oversized_regex_is_refused() {
        let error = TopicFilter {
            regexes: vec!["[a-z]{1000}{1000}".into()],
            ..TopicFilter::default()
        }
        .compile();
        assert!(error.is_err());
    }
}
