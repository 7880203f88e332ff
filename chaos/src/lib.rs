//! Strait's chaos toolkit: a WAN emulator, fault injectors, a workload and a delivery checker.
//!
//! * [`wan`]: userspace UDP relay (for QUIC) and TCP relay (for Kafka-protocol baselines)
//!   imposing delay, jitter, random and Gilbert-Elliott burst loss, reordering, duplication,
//!   a bandwidth cap with a drop-tail queue, and partitions; run-time control over HTTP and
//!   schedule files. Also the `strait-chaos` binary (`udp`, `tcp`, `selfbench`).
//! * [`workload`]: an rdkafka producer writing numbered records (idempotent or transactional)
//!   and logging every acknowledgement; a consumer reading everything back.
//! * [`checker`]: a pure function from (acknowledged log, records read) to a [`checker::Report`]
//!   of lost, duplicated, reordered and offset-shifted records, aborted-visible and
//!   committed-missing transactions.
//! * [`faults`]: process faults (SIGKILL + restart, SIGSTOP/SIGCONT), partitions through the
//!   emulator, a size-limited tmpfs for disk-full.
//! * [`cluster`]: broker processes ([`cluster::Node`]) with start/kill/restart/pause and an
//!   optional emulator in front, the unit scenarios are written against.
//!
//! Scenarios live in `tests/scenarios.rs` (a broker alone) and `tests/link_scenarios.rs` (a
//! link between two brokers, [`cluster::LinkPair`], with the emulator between the agents);
//! results in `RESULTS.md`.
//!
//! # Using the emulator
//!
//! ```text
//! # QUIC between link agents: agent A sends to :7000 instead of B's :7001
//! strait-chaos udp --listen 127.0.0.1:7000 --target 127.0.0.1:7001 --control 127.0.0.1:7080 \
//!     --settings '{"delay_ms": 100, "jitter_ms": 10, "loss": 0.05}' --schedule faults.txt
//! curl -X PUT localhost:7080/settings -d '{"forward": {"rate_bps": 100000000}}'
//! curl -X POST localhost:7080/partition; curl -X POST localhost:7080/heal
//! curl localhost:7080/stats
//! # Kafka protocol through a slow link (start the broker with --advertise 127.0.0.1:9000)
//! strait-chaos tcp --listen 127.0.0.1:9000 --target 127.0.0.1:9092 --settings '{"delay_ms": 50}'
//! strait-chaos selfbench            # the relay's own ceiling
//! strait-chaos check-schedule faults.txt
//! ```
//!
//! Schedule grammar: see [`wan::schedule`]. Settings fields: see [`wan::DirectionSettings`].
//!
//! # Tests
//!
//! `cargo test -p strait-chaos` runs the unit tests, the emulator self-tests (`tests/wan.rs`,
//! ~11 s), the broker scenarios (`tests/scenarios.rs`, ~55 s) and the link scenarios
//! (`tests/link_scenarios.rs`, ~75 s; both need the `strait` binary:
//! `$STRAIT_BIN` or `target/release/strait`; the disk-full scenario needs root for `mount`
//! and skips itself otherwise). `STRAIT_CHAOS_DURATION=300` gives the long form,
//! `STRAIT_CHAOS_SEED` replays a run.

pub mod checker;
pub mod cluster;
pub mod faults;
pub mod rng;
pub mod wan;
pub mod workload;
