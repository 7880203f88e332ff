//! The wire protocol between two Strait link agents (not built yet; issue 6).
//!
//! This crate will own the versioned QUIC protocol that carries a source cluster's record batches,
//! unchanged, to the destination: the handshake (protocol version, link name, cluster ids,
//! capabilities), zstd-packed data frames, acknowledgements carrying the destination's durable
//! offset, and the size caps that keep a hostile peer from exhausting memory. It will be a sans-IO
//! codec and state machine; sockets stay in `linker`. It knows nothing of `linker`.
