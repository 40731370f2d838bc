//! The one test kit of lparhv's integration tests (docs/testing.md): every
//! file under `tests/` says `mod support;` and takes what it needs.
//!
//! - [`image`]: the kernel image, the accelerator and a guest spec on it,
//!   scratch directories (`tempfile`), the SKIPPED notice;
//! - [`events`]: waits for guest events, all on
//!   [`lparhv::machine::console::EventStream`], and typed field access;
//! - [`daemon`]: a managed system in a scratch directory run by the real
//!   daemon, and raw guests on its channel sockets;
//! - [`owner`]: the owner-table fixture of the property and transition
//!   tests.
//!
//! Tests that boot QEMU (or start qemu-storage-daemon) have names starting
//! with `qemu_`: `cargo test -p lparhv -- --skip qemu_` runs the rest,
//! `cargo test -p lparhv qemu_` only them. A QEMU test that runs never
//! passes without QEMU: a missing kernel image or QEMU binary fails it.
#![allow(dead_code)] // each test file uses a different subset

pub mod daemon;
pub mod events;
pub mod image;
pub mod owner;
