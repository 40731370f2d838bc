//! lparos kernel library: the parts of the kernel that are plain logic and
//! are unit-tested on the host. The bare-metal binary (`main.rs`, the HAL in
//! `hal/` and the services) builds on these.
//!
//! Both crates share one folder per subsystem: this file declares the pure
//! modules of each folder inline, the binary declares the rest through the
//! folder's `mod.rs` (which re-exports the pure part).
//!
//! - `runtime`: the `key=value` command line, the cooperative executor (tasks, timers, interrupt wake-ups) and
//!   interrupt vector allocation, and the boot stage marks.
//! - `hcall::spec`: the hypercall test behaviours' command line, statistics
//!   and shared-memory pattern.
//! - `vios::initiator`: the PAUSE/RESUME initiator state machine and the
//!   freeze (THAWED) clock assessment.
//! - `storage`: rootvg activation and LV I/O over an asynchronous disk
//!   (`rootvg_io`).
//!
//! The formats shared with lparhv (event lines, the checked-write record,
//! the test patterns) are in the `proto` crate (`lparos-proto`).
//! - `testing`: the command-line keys of the test-only behaviours and the
//!   parsers of their values.
//! - `cluster::args`: the clustering service's command line.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod runtime {
    pub mod boot_stages;
    pub mod cmdline;
    pub mod executor;
    pub mod vectors;
}
pub mod hcall {
    pub mod spec;
}
pub mod vios {
    pub mod initiator;
}
pub mod storage {
    pub mod rootvg_io;
}
pub mod testing {
    pub mod keys;
    pub mod spec;
}
pub mod cluster {
    pub mod args;
}

// The flat paths the binary and lparhv have used so far.
pub use hcall::spec as hcall_spec;
pub use runtime::{cmdline, executor, vectors};
pub use storage::rootvg_io;
pub use vios::initiator as vios_initiator;
