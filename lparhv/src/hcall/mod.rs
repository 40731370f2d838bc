//! The hypercall channel server and the daemon around it.
//!
//! - `server`: one unix socket per partition, framed with `hypercall-abi`,
//!   HELLO negotiation, requests dispatched under one lock.
//! - `system`: the state behind that lock (grant table + durable store,
//!   memory-region files, sessions for pushing events, event log) and the
//!   owner operations the CLI uses.
//! - `codes`: owner-model refusals → wire return codes, in one place.
//! - `memory`: file-backed owner memory regions.
//! - `control`: the JSON-lines control socket and its client.
//! - `daemon`: what `lparhv up` runs.
//! - `partitions`: detached QEMU partitions (survive lparhv, reattached
//!   after its restart) and their supervisor.
//!
//! `docs/lparhv.md` describes the behaviour; `docs/abi.md` the wire format.

pub mod codes;
pub mod control;
pub mod daemon;
pub mod memory;
pub mod partitions;
pub mod server;
pub mod system;

pub use control::{ControlReply, ControlRequest};
pub use daemon::{hcall_qemu_args, Daemon, HCALL_CHARDEV_ID, HCALL_PORT_NAME};
pub use server::HcallServer;
pub use system::{control_socket_path, hcall_socket_path, Shared, System};
