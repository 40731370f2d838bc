//! The rootvg volume group on the first virtio disk: the service
//! (`rootvg_svc`) over the host-tested activation and LV I/O (`rootvg_io`,
//! in the library); the checked-write record format it writes is
//! `proto::writer_log`.

pub mod rootvg_io;
pub mod rootvg_svc;
