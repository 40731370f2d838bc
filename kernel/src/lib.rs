//! lparos kernel library: the parts of the kernel that are plain logic and
//! are unit-tested on the host. The bare-metal side (`main.rs` and `arch/`)
//! builds on these.
//!
//! - `cmdline`: the `key=value` kernel command line.
//! - `event`: machine-readable event lines on the console.
//! - `executor`: cooperative async tasks, timers and interrupt wake-ups.
//! - `hcall_spec`: the hypercall test behaviours' command line, statistics
//!   and shared-memory pattern.
//! - `vectors`: interrupt vector allocation.
//! - `rootvg_io`: rootvg activation and LV I/O over an asynchronous disk.
//! - `vios_initiator`: the PAUSE/RESUME initiator state machine and the
//!   freeze (THAWED) clock assessment.
//! - `writer_log`: the record format of the checked-write service (guest
//!   writes it, lparhv verifies it).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod event;
pub mod executor;
pub mod hcall_spec;
pub mod rootvg_io;
pub mod vectors;
pub mod vios_initiator;
pub mod writer_log;
