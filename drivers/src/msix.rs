//! MSI-X (PCI capability 0x11) and the virtio per-queue interrupt vectors.
//!
//! The capability tells which BAR holds the vector table and where; each
//! 16-byte table entry takes a message address (0xFEE0_0000 | apic_id << 12,
//! fixed delivery, physical destination), the message data (the vector) and
//! a control word whose bit 0 masks the entry. The virtio common
//! configuration structure (vendor capability with cfg_type 1) then maps
//! each queue to a table entry (`queue_msix_vector`).
//!
//! Configuration-space parsing is plain logic over [`Pci`]; the table and
//! the common configuration live in device memory and are written through
//! [`Mmio`], which the kernel implements over its uncached mappings.

use crate::pci::{ConfigurationAccess, DeviceFunction, Pci};
use core::fmt;

pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_VENDOR: u8 = 0x09;
/// "No vector" in the virtio common configuration.
pub const VIRTIO_NO_VECTOR: u16 = 0xffff;

/// Word-sized access to device memory at a bus address (already mapped).
/// The drivers compute the addresses from a device's capabilities (the
/// MSI-X table inside its BAR, the virtio common configuration).
///
/// # Safety
/// An implementor promises that every address it is handed that lies inside
/// a memory BAR assigned by the PCI registry is mapped uncached onto that
/// device's registers, so a read or write there touches only the device and
/// never RAM the kernel uses.
#[allow(unsafe_code)] // declaring the contract; implementing it is the HAL's job
pub unsafe trait Mmio {
    fn read32(&self, addr: u64) -> u32;
    fn write32(&self, addr: u64, value: u32);
    fn read16(&self, addr: u64) -> u16;
    fn write16(&self, addr: u64, value: u16);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    NoCapability,
    /// The table BAR is not an assigned memory BAR or the table does not fit in it.
    BadTable,
    EntryOutOfRange(u16),
    NoCommonConfig,
    /// The device did not accept a queue vector (read back NO_VECTOR).
    VectorRefused {
        queue: u16,
    },
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixError::NoCapability => write!(f, "no MSI-X capability"),
            MsixError::BadTable => write!(f, "MSI-X table outside its BAR"),
            MsixError::EntryOutOfRange(e) => write!(f, "MSI-X entry {e} out of range"),
            MsixError::NoCommonConfig => write!(f, "no virtio common configuration"),
            MsixError::VectorRefused { queue } => write!(f, "queue {queue} refused its MSI-X vector"),
        }
    }
}

/// Where a function's MSI-X table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    pub bdf: DeviceFunction,
    pub cap: u8,
    pub entries: u16,
    /// Bus address of the table (BAR address + offset).
    pub table: u64,
}

/// The message address and data for `vector` on the CPU with `apic_id`.
pub fn message(apic_id: u8, vector: u8) -> (u64, u32) {
    (0xFEE0_0000 | (apic_id as u64) << 12, vector as u32)
}

fn find_cap<C: ConfigurationAccess + Clone>(pci: &Pci<C>, bdf: DeviceFunction, id: u8, mut f: impl FnMut(u8) -> bool) -> Option<u8> {
    // Walk the list ourselves with a step bound so a looping list ends.
    if pci.read(bdf, 0x04) & (1 << 20) == 0 {
        return None;
    }
    let mut off = (pci.read(bdf, 0x34) & 0xfc) as u8;
    for _ in 0..48 {
        if off < 0x40 {
            return None;
        }
        let head = pci.read(bdf, off);
        if head as u8 == id && f(off) {
            return Some(off);
        }
        off = ((head >> 8) as u8) & 0xfc;
    }
    None
}

impl Msix {
    /// Locate the MSI-X table of `bdf` (its BARs must be assigned).
    pub fn find<C: ConfigurationAccess + Clone>(pci: &Pci<C>, bdf: DeviceFunction) -> Result<Self, MsixError> {
        let cap = find_cap(pci, bdf, CAP_ID_MSIX, |_| true).ok_or(MsixError::NoCapability)?;
        let control = (pci.read(bdf, cap) >> 16) as u16;
        let entries = (control & 0x7ff) + 1;
        let table_reg = pci.read(bdf, cap + 4);
        let bar = pci.function(bdf).and_then(|f| f.bar((table_reg & 7) as u8)).ok_or(MsixError::BadTable)?;
        let offset = (table_reg & !7) as u64;
        if offset + entries as u64 * 16 > bar.size {
            return Err(MsixError::BadTable);
        }
        Ok(Msix { bdf, cap, entries, table: bar.address + offset })
    }

    /// Program entry `entry` to deliver `vector` to `apic_id` and unmask it.
    pub fn set_entry(&self, mmio: &dyn Mmio, entry: u16, apic_id: u8, vector: u8) -> Result<(), MsixError> {
        if entry >= self.entries {
            return Err(MsixError::EntryOutOfRange(entry));
        }
        let (addr, data) = message(apic_id, vector);
        let e = self.table + entry as u64 * 16;
        mmio.write32(e + 12, 1); // masked while it changes
        mmio.write32(e, addr as u32);
        mmio.write32(e + 4, (addr >> 32) as u32);
        mmio.write32(e + 8, data);
        mmio.write32(e + 12, 0);
        Ok(())
    }

    /// Mask entry `entry`.
    pub fn mask_entry(&self, mmio: &dyn Mmio, entry: u16) {
        if entry < self.entries {
            mmio.write32(self.table + entry as u64 * 16 + 12, 1);
        }
    }

    /// Turn MSI-X on (function mask off) and legacy INTx off.
    pub fn enable<C: ConfigurationAccess + Clone>(&self, pci: &mut Pci<C>) {
        let reg = pci.read(self.bdf, self.cap);
        pci.write(self.bdf, self.cap, (reg | 1 << 31) & !(1 << 30));
        let cmd = pci.read(self.bdf, 0x04) & 0xffff;
        pci.write(self.bdf, 0x04, cmd | 1 << 10);
    }

    /// Turn MSI-X off.
    pub fn disable<C: ConfigurationAccess + Clone>(&self, pci: &mut Pci<C>) {
        let reg = pci.read(self.bdf, self.cap);
        pci.write(self.bdf, self.cap, reg & !(1 << 31));
    }
}

/// The virtio common configuration structure of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCommonCfg {
    /// Bus address of the structure.
    pub base: u64,
}

const CC_MSIX_CONFIG: u64 = 0x10;
const CC_NUM_QUEUES: u64 = 0x12;
const CC_QUEUE_SELECT: u64 = 0x16;
const CC_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const CC_MIN_LEN: u64 = 0x38;

impl VirtioCommonCfg {
    /// Locate it from the vendor capability with cfg_type 1.
    pub fn find<C: ConfigurationAccess + Clone>(pci: &Pci<C>, bdf: DeviceFunction) -> Result<Self, MsixError> {
        let cap = find_cap(pci, bdf, CAP_ID_VENDOR, |off| (pci.read(bdf, off) >> 24) as u8 == 1).ok_or(MsixError::NoCommonConfig)?;
        let bar_no = pci.read(bdf, cap + 4) as u8;
        let offset = pci.read(bdf, cap + 8) as u64;
        let length = pci.read(bdf, cap + 12) as u64;
        let bar = pci.function(bdf).and_then(|f| f.bar(bar_no)).ok_or(MsixError::NoCommonConfig)?;
        if length < CC_MIN_LEN || offset + CC_MIN_LEN > bar.size {
            return Err(MsixError::NoCommonConfig);
        }
        Ok(VirtioCommonCfg { base: bar.address + offset })
    }

    pub fn num_queues(&self, mmio: &dyn Mmio) -> u16 {
        mmio.read16(self.base + CC_NUM_QUEUES)
    }

    /// Route queue `queue` to MSI-X entry `entry` and check the device took it.
    pub fn set_queue_vector(&self, mmio: &dyn Mmio, queue: u16, entry: u16) -> Result<(), MsixError> {
        mmio.write16(self.base + CC_QUEUE_SELECT, queue);
        mmio.write16(self.base + CC_QUEUE_MSIX_VECTOR, entry);
        if mmio.read16(self.base + CC_QUEUE_MSIX_VECTOR) != entry {
            return Err(MsixError::VectorRefused { queue });
        }
        Ok(())
    }

    /// Route configuration-change interrupts to `entry` (or VIRTIO_NO_VECTOR).
    pub fn set_config_vector(&self, mmio: &dyn Mmio, entry: u16) {
        mmio.write16(self.base + CC_MSIX_CONFIG, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::FakeCam;
    use crate::pci::Window;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct FakeMem(RefCell<BTreeMap<u64, u32>>);
    // SAFETY: a map in host memory stands in for device memory; no address
    // reaches real memory.
    #[allow(unsafe_code)]
    unsafe impl Mmio for FakeMem {
        fn read32(&self, a: u64) -> u32 {
            *self.0.borrow().get(&a).unwrap_or(&0)
        }
        fn write32(&self, a: u64, v: u32) {
            self.0.borrow_mut().insert(a, v);
        }
        fn read16(&self, a: u64) -> u16 {
            self.read32(a) as u16
        }
        fn write16(&self, a: u64, v: u16) {
            self.write32(a, v as u32)
        }
    }

    fn device_with_caps(table_offset: u32, entries: u16) -> (FakeCam, Pci<FakeCam>, DeviceFunction) {
        let cam = FakeCam::default();
        cam.add(0, 2, 0x1af4, 0x1000, 0, &[(1, 0x1000, false), (4, 0x4000, true)]);
        {
            let mut m = cam.0.lock().unwrap();
            let f = m.get_mut(&(0, 2, 0)).unwrap();
            f.regs[1] |= 1 << 20; // capability list
            f.regs[0x34 / 4] = 0x40;
            // Vendor cap at 0x40 (cfg_type 1, BAR4, offset 0, len 0x38) -> 0x50.
            f.regs[0x40 / 4] = 1 << 24 | 16 << 16 | 0x50 << 8 | 0x09;
            f.regs[0x44 / 4] = 4;
            f.regs[0x48 / 4] = 0;
            f.regs[0x4c / 4] = 0x38;
            // MSI-X cap at 0x50, table in BAR1.
            f.regs[0x50 / 4] = ((entries - 1) as u32) << 16 | 0x11;
            f.regs[0x54 / 4] = table_offset | 1;
        }
        let mut pci = Pci::new(cam.clone(), 0, Window::new(0xC000_0000, 0x100_0000));
        pci.scan();
        (cam, pci, DeviceFunction { bus: 0, device: 2, function: 0 })
    }

    #[test]
    fn programs_table_and_enables() {
        let (cam, mut pci, bdf) = device_with_caps(0, 3);
        let m = Msix::find(&pci, bdf).unwrap();
        assert_eq!(m.entries, 3);
        assert_eq!(m.table, pci.function(bdf).unwrap().bar(1).unwrap().address);
        let mem = FakeMem::default();
        m.set_entry(&mem, 1, 2, 0x31).unwrap();
        assert_eq!(mem.read32(m.table + 16), 0xFEE0_2000);
        assert_eq!(mem.read32(m.table + 24), 0x31);
        assert_eq!(mem.read32(m.table + 28), 0, "unmasked");
        assert_eq!(m.set_entry(&mem, 3, 0, 0x31), Err(MsixError::EntryOutOfRange(3)));
        m.enable(&mut pci);
        assert_eq!(cam.reg(0, 2, 0x50) >> 30, 0b10, "enabled, function mask clear");
        let cc = VirtioCommonCfg::find(&pci, bdf).unwrap();
        assert_eq!(cc.base, pci.function(bdf).unwrap().bar(4).unwrap().address);
        cc.set_queue_vector(&mem, 1, 0).unwrap();
        assert_eq!(mem.read16(cc.base + 0x16), 1);
    }

    #[test]
    fn table_outside_bar_is_rejected() {
        let (_, pci, bdf) = device_with_caps(0xff8, 4);
        assert_eq!(Msix::find(&pci, bdf), Err(MsixError::BadTable));
    }

    #[test]
    fn message_format() {
        assert_eq!(message(0, 0x30), (0xFEE0_0000, 0x30));
        assert_eq!(message(5, 0xef), (0xFEE0_5000, 0xef));
    }
}
