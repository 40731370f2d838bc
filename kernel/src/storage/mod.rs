//! The rootvg volume group on the first virtio disk: the service
//! (`rootvg_svc`) over the host-tested activation and LV I/O (`rootvg_io`)
//! and the checked-write record format (`writer_log`), both in the library.

pub mod rootvg_io;
pub mod rootvg_svc;
pub mod writer_log;
