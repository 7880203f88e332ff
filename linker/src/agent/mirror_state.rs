//! What the destination remembers about each mirror partition beyond its log: whether it is
//! `diverged` (the source's history is no longer the one it holds, and why), the offsets the
//! source deleted before the mirror got them (retention gaps), and the last resolution.
//!
//! Kept in a sled tree of the link store (`mirror-partitions`), written and flushed before
//! anything acts on it, so a restart of the destination keeps a diverged partition diverged;
//! entries are keyed by the mirror topic's own id, so a mirror topic deleted and created again
//! starts clean.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{Divergence, ResolveOutcome};

/// Per mirror partition, persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorPartitionState {
    /// The destination topic's id when this was written (a re-created mirror topic starts over).
    pub mirror_topic_id: String,
    #[serde(default)]
    pub divergence: Option<Divergence>,
    #[serde(default)]
    pub gap_offsets: i64,
    #[serde(default)]
    pub last_resolution: Option<ResolveOutcome>,
}

/// The persisted states of every mirror partition of this broker.
pub struct MirrorStates {
    tree: sled::Tree,
    cache: Mutex<BTreeMap<(String, i32), MirrorPartitionState>>,
}

fn key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = topic.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

impl MirrorStates {
    /// Loads every entry; undecodable ones are an error (never silently forgotten).
    pub fn open(tree: sled::Tree) -> anyhow::Result<MirrorStates> {
        let mut cache = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let split = k.iter().position(|b| *b == 0);
            let (Some(split), Ok(state)) = (split, serde_json::from_slice(&v)) else {
                anyhow::bail!(
                    "mirror partition state {:?} is not readable",
                    String::from_utf8_lossy(&k)
                );
            };
            let topic = String::from_utf8_lossy(&k[..split]).into_owned();
            let partition = k
                .get(split + 1..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_be_bytes)
                .ok_or_else(|| anyhow::anyhow!("mirror partition state key for {topic:?}"))?;
            cache.insert((topic, partition), state);
        }
        Ok(MirrorStates {
            tree,
            cache: Mutex::new(cache),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), MirrorPartitionState>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of a partition of the mirror topic whose id is `mirror_topic_id`.
    pub fn get(&self, topic: &str, partition: i32, mirror_topic_id: &str) -> MirrorPartitionState {
        self.lock()
            .get(&(topic.to_string(), partition))
            .filter(|s| s.mirror_topic_id == mirror_topic_id)
            .cloned()
            .unwrap_or_else(|| MirrorPartitionState {
                mirror_topic_id: mirror_topic_id.to_string(),
                ..MirrorPartitionState::default()
            })
    }

    /// The divergence of a partition, if it is diverged.
    pub fn divergence(
        &self,
        topic: &str,
        partition: i32,
        mirror_topic_id: &str,
    ) -> Option<Divergence> {
        // On every data entry: look, clone only the divergence.
        self.lock()
            .get(&(topic.to_string(), partition))
            .filter(|s| s.mirror_topic_id == mirror_topic_id)
            .and_then(|s| s.divergence.clone())
    }

    /// Changes a partition's state and makes it durable before returning.
    pub fn update(
        &self,
        topic: &str,
        partition: i32,
        mirror_topic_id: &str,
        change: impl FnOnce(&mut MirrorPartitionState),
    ) -> anyhow::Result<MirrorPartitionState> {
        let mut cache = self.lock();
        let mut state = cache
            .get(&(topic.to_string(), partition))
            .filter(|s| s.mirror_topic_id == mirror_topic_id)
            .cloned()
            .unwrap_or_else(|| MirrorPartitionState {
                mirror_topic_id: mirror_topic_id.to_string(),
                ..MirrorPartitionState::default()
            });
        change(&mut state);
        self.tree
            .insert(key(topic, partition), serde_json::to_vec(&state)?)?;
        self.tree.flush()?;
        cache.insert((topic.to_string(), partition), state.clone());
        Ok(state)
    }

    /// Marks a partition diverged unless it already is (the first detection is kept). Returns
    /// whether it was newly marked.
    pub fn mark_diverged(
        &self,
        topic: &str,
        partition: i32,
        mirror_topic_id: &str,
        divergence: Divergence,
    ) -> anyhow::Result<bool> {
        let mut marked = false;
        self.update(topic, partition, mirror_topic_id, |s| {
            if s.divergence.is_none() {
                s.divergence = Some(divergence);
                marked = true;
            }
        })?;
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn divergence(kind: &str) -> Divergence {
        Divergence {
            kind: kind.into(),
            mirror_end_offset: 10,
            source_log_start_offset: 0,
            source_log_end_offset: 4,
            detected_at_ms: 1,
            reason: "test".into(),
        }
    }

    #[test]
    fn divergence_survives_reopen_and_is_scoped_to_the_mirror_topic_id() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let states = MirrorStates::open(db.open_tree("m").unwrap()).unwrap();
            assert!(states
                .mark_diverged("t", 3, "id1", divergence("source-truncated"))
                .unwrap());
            assert!(!states
                .mark_diverged("t", 3, "id1", divergence("history-rewritten"))
                .unwrap());
            states
                .update("t", 3, "id1", |s| s.gap_offsets += 7)
                .unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let states = MirrorStates::open(db.open_tree("m").unwrap()).unwrap();
        let s = states.get("t", 3, "id1");
        assert_eq!(s.divergence.unwrap().kind, "source-truncated");
        assert_eq!(s.gap_offsets, 7);
        assert!(
            states.divergence("t", 3, "id2").is_none(),
            "another mirror topic"
        );
        assert!(states.divergence("t", 2, "id1").is_none());
    }
}
