//! Initiator side of the storage-server protocol (seed 002) and the freeze
//! assessment (seed 003): the state machine (`initiator`, library, host
//! tested) and the task that runs it on the hypercall service (`events`).

pub mod events;
pub mod initiator;
