//! End-to-end tests of Strait with real Kafka clients live in `tests/tests/`; this library is empty.
