//! Heartbeat clustering agent (active / standby failover). Filled in by the
//! hot-plug and clustering work; the crate exists so the workspace layout is
//! fixed.
#![cfg_attr(not(test), no_std)]
