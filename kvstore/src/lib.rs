//! lparos-kvstore: the small durable key-value service that the cluster's
//! active partition runs on the shared disk (issue 9 item 5, seed 004's
//! "service" on the single-port device; protocol and format in
//! `docs/kvstore.md`).
//!
//! Pure logic, no I/O of its own, unit- and property-tested on the host:
//!
//! - [`resp`]: the RESP2 request decoder (arrays of bulk strings and inline
//!   commands) with hard limits, and the reply encoder.
//! - [`log`]: the store, an append-only, checksummed record log on a
//!   512-byte-sector [`log::Disk`], replayed on open; a write is
//!   acknowledged only after the device flushed it.
//! - [`command`]: one client connection ([`command::Session`]): bytes in,
//!   requests decoded, commands run against the store, replies out.
//!
//! The guest's TCP server (`kernel/src/kv/`) only moves bytes between
//! smoltcp sockets and sessions and commits the store between rounds.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod command;
pub mod log;
pub mod resp;
