//! The legacy 8259 PICs: remapped away from the exception vectors and fully
//! masked. lparos takes interrupts from the local APIC and the IOAPIC.

use super::port::IoPort;

// SAFETY: 0x20/0x21 and 0xa0/0xa1 are the command and data ports of the
// master and slave 8259 on every PC platform (q35 and pc included); only
// this module drives them.
const MASTER_CMD: IoPort<u8> = unsafe { IoPort::new(0x20) };
// SAFETY: see `MASTER_CMD`.
const MASTER_DATA: IoPort<u8> = unsafe { IoPort::new(0x21) };
// SAFETY: see `MASTER_CMD`.
const SLAVE_CMD: IoPort<u8> = unsafe { IoPort::new(0xa0) };
// SAFETY: see `MASTER_CMD`.
const SLAVE_DATA: IoPort<u8> = unsafe { IoPort::new(0xa1) };

/// Remap both PICs to vectors 0x20-0x2f and mask every line.
pub fn disable() {
    MASTER_CMD.write(0x11); // ICW1: init, expect ICW4
    SLAVE_CMD.write(0x11);
    MASTER_DATA.write(0x20); // ICW2: vector offsets
    SLAVE_DATA.write(0x28);
    MASTER_DATA.write(0x04); // ICW3: slave on IRQ2
    SLAVE_DATA.write(0x02);
    MASTER_DATA.write(0x01); // ICW4: 8086 mode
    SLAVE_DATA.write(0x01);
    MASTER_DATA.write(0xff); // mask all
    SLAVE_DATA.write(0xff);
}
