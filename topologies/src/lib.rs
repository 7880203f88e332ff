//! Runnable deployment shapes built from links (not built yet).
//!
//! This crate will own disaster-recovery standby, on-prem-to-cloud migration and active-active
//! configurations as validated, runnable descriptions that `strait` can start.
