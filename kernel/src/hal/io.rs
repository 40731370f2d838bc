//! Port I/O handles (`IoPort`, `IoBlock`): the types the platform code
//! reads and writes device registers through. Making one is `unsafe`; the
//! HAL makes them (fixed legacy ports where it drives them, firmware ports
//! in `hal::firmware`), the rest of the kernel only uses them.

pub use crate::hal::arch::x86_64::port::{IoBlock, IoPort, PortValue};
