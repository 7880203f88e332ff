//! WAN emulation, fault injection and delivery checking (not built yet; issue 7).
//!
//! This crate will own a userspace UDP/TCP relay that adds delay, jitter, loss, reordering,
//! duplication, bandwidth caps and partitions, the fault injectors (kill, pause, disk full), and a
//! Jepsen-style checker that reports lost, duplicated and reordered records.
