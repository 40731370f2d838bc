//! lparhv: the host-side hypervisor shim. It plays the roles that the POWER
//! hypervisor and the VIOS play in the seed documents: partition manager,
//! owner of shared resources, storage-server supervisor, virtual switch.

pub mod owner;
