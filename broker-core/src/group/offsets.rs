//! Durable committed offsets of consumer groups, in a sled tree.
//!
//! Why sled and not an internal `__consumer_offsets` log: committed offsets are small, keyed,
//! overwritten in place and read by key (OffsetFetch, and later by the link agent, which
//! translates and writes them across regions). A keyed store gives that directly, without
//! compaction. sled 0.34 is used for metadata only, with an explicit `flush()` (fsync) before a
//! commit is acknowledged, so an acknowledged commit survives SIGKILL.
//!
//! Key: `group \0 topic \0 partition(i32 BE)`. Value: `offset i64 | leader_epoch i32 |
//! commit_time_ms i64 | metadata (UTF-8, rest of the value)`.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OffsetStoreError {
    #[error("offset store: {0}")]
    Sled(#[from] sled::Error),
    #[error("offset store entry for {0} is corrupt")]
    Corrupt(String),
}

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub commit_time_ms: i64,
    pub metadata: String,
}

/// A (topic, partition) with its committed offset.
pub type TopicPartitionOffset = (String, i32, CommittedOffset);

pub struct OffsetStore {
    db: sled::Db,
    offsets: sled::Tree,
}

fn key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.push(0);
    k
}

fn encode(v: &CommittedOffset) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + v.metadata.len());
    out.extend_from_slice(&v.offset.to_be_bytes());
    out.extend_from_slice(&v.leader_epoch.to_be_bytes());
    out.extend_from_slice(&v.commit_time_ms.to_be_bytes());
    out.extend_from_slice(v.metadata.as_bytes());
    out
}

fn decode(k: &[u8], v: &[u8]) -> Result<(String, String, i32, CommittedOffset), OffsetStoreError> {
    let corrupt = || OffsetStoreError::Corrupt(String::from_utf8_lossy(k).into_owned());
    let mut parts = k.splitn(3, |b| *b == 0);
    let group = parts.next().ok_or_else(corrupt)?;
    let topic = parts.next().ok_or_else(corrupt)?;
    let partition: [u8; 4] = parts
        .next()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(corrupt)?;
    if v.len() < 20 {
        return Err(corrupt());
    }
    let mut i64b = [0u8; 8];
    i64b.copy_from_slice(&v[0..8]);
    let offset = i64::from_be_bytes(i64b);
    let leader_epoch = i32::from_be_bytes([v[8], v[9], v[10], v[11]]);
    i64b.copy_from_slice(&v[12..20]);
    let commit_time_ms = i64::from_be_bytes(i64b);
    let metadata = String::from_utf8(v[20..].to_vec()).map_err(|_| corrupt())?;
    Ok((
        String::from_utf8(group.to_vec()).map_err(|_| corrupt())?,
        String::from_utf8(topic.to_vec()).map_err(|_| corrupt())?,
        i32::from_be_bytes(partition),
        CommittedOffset {
            offset,
            leader_epoch,
            commit_time_ms,
            metadata,
        },
    ))
}

impl OffsetStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OffsetStoreError> {
        let db = crate::fsutil::open_sled(
            &sled::Config::new()
                .path(dir)
                .cache_capacity(16 << 20)
                .flush_every_ms(Some(500)),
        )?;
        let offsets = db.open_tree("committed_offsets")?;
        Ok(OffsetStore { db, offsets })
    }

    /// Writes a group's commits atomically and fsyncs them before returning.
    pub fn commit(
        &self,
        group: &str,
        entries: &[(String, i32, CommittedOffset)],
    ) -> Result<(), OffsetStoreError> {
        let mut batch = sled::Batch::default();
        for (topic, partition, value) in entries {
            batch.insert(key(group, topic, *partition), encode(value));
        }
        self.offsets.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn get(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<CommittedOffset>, OffsetStoreError> {
        let k = key(group, topic, partition);
        match self.offsets.get(&k)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(&k, &v)?.3)),
        }
    }

    /// Every committed offset of a group, ordered by topic and partition.
    pub fn group_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<TopicPartitionOffset>, OffsetStoreError> {
        self.offsets
            .scan_prefix(group_prefix(group))
            .map(|kv| {
                let (k, v) = kv?;
                let (_, topic, partition, value) = decode(&k, &v)?;
                Ok((topic, partition, value))
            })
            .collect()
    }

    /// Names of every group that has committed offsets.
    pub fn groups(&self) -> Result<Vec<String>, OffsetStoreError> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.offsets.iter() {
            let (k, _) = kv?;
            let name = k.split(|b| *b == 0).next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).into_owned();
            if out.last() != Some(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Removes some of a group's offsets (OffsetDelete) and fsyncs.
    pub fn delete(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<(), OffsetStoreError> {
        let mut batch = sled::Batch::default();
        for (topic, partition) in partitions {
            batch.remove(key(group, topic, *partition));
        }
        self.offsets.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes all of a group's offsets and fsyncs. Returns how many were removed.
    pub fn delete_group(&self, group: &str) -> Result<usize, OffsetStoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.offsets.scan_prefix(group_prefix(group)) {
            let (k, _) = kv?;
            batch.remove(k);
            n += 1;
        }
        self.offsets.apply_batch(batch)?;
        self.db.flush()?;
        Ok(n)
    }

    /// Removes every group's offsets for a deleted topic and fsyncs.
    pub fn delete_topic(&self, topic: &str) -> Result<usize, OffsetStoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.offsets.iter() {
            let (k, v) = kv?;
            if let Ok((_, t, _, _)) = decode(&k, &v) {
                if t == topic {
                    batch.remove(k);
                    n += 1;
                }
            }
        }
        self.offsets.apply_batch(batch)?;
        self.db.flush()?;
        Ok(n)
    }

    pub fn flush(&self) -> Result<(), OffsetStoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(o: i64) -> CommittedOffset {
        CommittedOffset {
            offset: o,
            leader_epoch: 0,
            commit_time_ms: 5,
            metadata: "m".into(),
        }
    }

    #[test]
    fn commit_read_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g1", &[("t".into(), 0, off(10)), ("t".into(), 1, off(20))])
                .unwrap();
            s.commit("g2", &[("u".into(), 0, off(3))]).unwrap();
            s.commit("g1", &[("t".into(), 0, off(11))]).unwrap();
            assert_eq!(s.get("g1", "t", 0).unwrap().unwrap().offset, 11);
            assert_eq!(
                s.groups().unwrap(),
                vec!["g1".to_string(), "g2".to_string()]
            );
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        let g1 = s.group_offsets("g1").unwrap();
        assert_eq!(g1.len(), 2);
        assert_eq!(g1[1], ("t".to_string(), 1, off(20)));
        assert_eq!(s.delete_topic("u").unwrap(), 1);
        assert!(s.group_offsets("g2").unwrap().is_empty());
        s.delete("g1", &[("t".into(), 1)]).unwrap();
        assert_eq!(s.group_offsets("g1").unwrap().len(), 1);
        assert_eq!(s.delete_group("g1").unwrap(), 1);
        assert!(s.groups().unwrap().is_empty());
    }
}
