//! Offset translation between a source and a destination cluster (not built yet).
//!
//! This crate will own the sled tables that map source offsets to destination offsets for links
//! whose destination cannot keep the source's offsets (an ordinary Kafka cluster), the sync of
//! committed consumer-group offsets across a link, and the failover procedure that moves a group
//! to the destination without skipping a record.
