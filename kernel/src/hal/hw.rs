//! The hardware side of the drivers crate: the virtio `Hal` over the
//! identity-mapped heap, uncached device-memory access for MSI-X tables and
//! virtio registers, and ECAM configuration access.

use crate::hal::arch::x86_64::paging::{self, Access};
use crate::hal::arch::x86_64::port::IoPort;
use crate::hal::firmware::IdentityHandler;
use acpi::mcfg::Mcfg;
use acpi::AcpiTables;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use drivers::msix::Mmio;
use drivers::pci::{ConfigurationAccess, DeviceFunction};
use drivers::virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// DMA through the heap: RAM is identity mapped, so an allocation's address
/// is also what the device uses.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned heap
// pages whose physical address equals their virtual address;
// `mmio_phys_to_virt` maps the range uncached before returning it; `share`
// returns the (identity) physical address of memory the caller owns.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match crate::hal::mm::alloc_pages(pages.max(1)).and_then(|a| NonNull::new(a as *mut u8).map(|p| (a, p))) {
            Some((addr, ptr)) => (addr, ptr),
            // virtio-drivers treats physical address 0 as allocation failure.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: per the trait contract, `paddr` came from `dma_alloc(pages)`.
        unsafe { crate::hal::mm::free_pages(paddr, pages.max(1)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let addr = paging::map(paddr, size as u64, Access::Mmio).unwrap_or_else(|e| panic!("mapping BAR {paddr:#x}: {e}"));
        NonNull::new(addr as *mut u8).expect("BARs are never at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The 32-bit PCI memory window the PCI registry assigns BARs from: the
/// hole between 3 GiB and the IOAPIC, where q35 and pc put no RAM.
pub const PCI_WINDOW: (u64, u64) = (0xC000_0000, 0xFEC0_0000 - 0xC000_0000);

/// Uncached access to device memory inside the PCI memory window (the
/// MSI-X tables and virtio registers of assigned BARs). Accesses outside
/// the window, or not naturally aligned, touch nothing: reads return all
/// ones (what an absent device answers) and writes are dropped.
pub struct DeviceMemory {
    start: u64,
    end: u64,
}

/// Device memory over [`PCI_WINDOW`].
// SAFETY: `PCI_WINDOW` holds only device BARs on the machines lparos runs
// on (no RAM, no kernel mapping), so mapping any of it uncached is sound.
pub const PCI_DEVICE_MEMORY: DeviceMemory = unsafe { DeviceMemory::new(PCI_WINDOW.0, PCI_WINDOW.1) };

impl DeviceMemory {
    /// # Safety
    /// `[start, start + len)` must be physical device memory that no RAM and
    /// no other kernel mapping overlaps: every address in it may be mapped
    /// uncached and read or written.
    pub const unsafe fn new(start: u64, len: u64) -> Self {
        DeviceMemory { start, end: start.saturating_add(len) }
    }

    /// `addr` mapped uncached, or None outside the region or unaligned.
    fn ptr(&self, addr: u64, size: u64) -> Option<u64> {
        let inside = addr >= self.start && addr.checked_add(size).is_some_and(|end| end <= self.end);
        if !inside || !addr.is_multiple_of(size) {
            log::warn!("device memory access at {addr:#x} ({size} bytes) outside {:#x}..{:#x} dropped", self.start, self.end);
            return None;
        }
        paging::map(addr & !0xfff, 4096 + (addr & 0xfff) + size, Access::Mmio).ok()?;
        Some(addr)
    }
}

// SAFETY: `ptr` admits only naturally aligned addresses inside the region
// `new`'s caller vouched for, and maps them uncached before each access.
unsafe impl Mmio for DeviceMemory {
    fn read32(&self, addr: u64) -> u32 {
        // SAFETY: `ptr` checked and mapped the address (see the impl).
        self.ptr(addr, 4).map_or(u32::MAX, |p| unsafe { core::ptr::read_volatile(p as *const u32) })
    }
    fn write32(&self, addr: u64, value: u32) {
        if let Some(p) = self.ptr(addr, 4) {
            // SAFETY: as for `read32`.
            unsafe { core::ptr::write_volatile(p as *mut u32, value) }
        }
    }
    fn read16(&self, addr: u64) -> u16 {
        // SAFETY: as for `read32`.
        self.ptr(addr, 2).map_or(u16::MAX, |p| unsafe { core::ptr::read_volatile(p as *const u16) })
    }
    fn write16(&self, addr: u64, value: u16) {
        if let Some(p) = self.ptr(addr, 2) {
            // SAFETY: as for `read32`.
            unsafe { core::ptr::write_volatile(p as *mut u16, value) }
        }
    }
}

/// PCI configuration access: PCIe ECAM (q35, from the MCFG table) or the
/// legacy 0xCF8/0xCFC port mechanism (pc has no MCFG). virtio-drivers'
/// `MmioCam` keeps its pointer private and `PciRoot` hides its access, but
/// bridge set-up and MSI-X need raw configuration reads and writes, so this
/// copyable implementation of the same trait serves both. Each bus's 1 MiB
/// of ECAM is mapped on first use.
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: u64,
    first_bus: u8,
    last_bus: u8,
    /// Port I/O (configuration mechanism #1) instead of ECAM.
    ports: bool,
}

// SAFETY: 0xcf8/0xcfc are PCI configuration mechanism #1's address and data
// ports on every PC platform; `Ecam` is their only user, under the PCI
// registry's lock.
const CONFIG_ADDRESS: IoPort<u32> = unsafe { IoPort::new(0xcf8) };
// SAFETY: see `CONFIG_ADDRESS`.
const CONFIG_DATA: IoPort<u32> = unsafe { IoPort::new(0xcfc) };

static MAPPED_BUSES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

impl Ecam {
    /// ECAM at `base` for buses `first_bus..=last_bus` (from the MCFG table).
    ///
    /// # Safety
    /// `base` must be the physical start of the ECAM region for exactly those
    /// buses (1 MiB per bus), device memory that no RAM overlaps: each bus's
    /// part is mapped uncached and read and written on demand.
    unsafe fn new(base: u64, first_bus: u8, last_bus: u8) -> Self {
        Ecam { base, first_bus, last_bus, ports: false }
    }

    /// ECAM of PCI segment 0 as the MCFG table of `tables` describes it;
    /// None when the machine has no MCFG (pc) or no entry for segment 0.
    pub fn from_mcfg(tables: &AcpiTables<IdentityHandler>) -> Option<Self> {
        let mcfg = tables.find_table::<Mcfg>().ok()?;
        let e = mcfg.entries().iter().find(|e| e.pci_segment_group == 0)?;
        if e.bus_number_end < e.bus_number_start {
            return None;
        }
        // SAFETY: the MCFG table is the firmware's description of this
        // machine's ECAM: base and bus range of segment 0, device memory
        // outside RAM (QEMU q35: 0xb0000000, below the PCI window).
        Some(unsafe { Ecam::new(e.base_address, e.bus_number_start, e.bus_number_end) })
    }

    /// Configuration mechanism #1 through I/O ports 0xCF8/0xCFC, buses 0..=255.
    pub fn port_io() -> Self {
        Ecam { base: 0, first_bus: 0, last_bus: 255, ports: true }
    }

    /// Last bus number this access reaches.
    pub fn last_bus(&self) -> u8 {
        self.last_bus
    }

    fn port_address(df: DeviceFunction, offset: u8) -> Option<u32> {
        (df.device < 32 && df.function < 8)
            .then_some(0x8000_0000 | (df.bus as u32) << 16 | (df.device as u32) << 11 | (df.function as u32) << 8 | (offset & 0xfc) as u32)
    }

    fn address(&self, df: DeviceFunction, offset: u8) -> Option<u64> {
        if df.bus < self.first_bus || df.bus > self.last_bus || df.device >= 32 || df.function >= 8 {
            return None;
        }
        let bus = df.bus as usize;
        let bus_base = self.base + (((df.bus - self.first_bus) as u64) << 20);
        if MAPPED_BUSES[bus / 64].load(Ordering::Relaxed) & (1 << (bus % 64)) == 0 {
            paging::map(bus_base, 1 << 20, Access::Mmio).ok()?;
            MAPPED_BUSES[bus / 64].fetch_or(1 << (bus % 64), Ordering::Relaxed);
        }
        Some(bus_base + ((df.device as u64) << 15) + ((df.function as u64) << 12) + (offset & 0xfc) as u64)
    }
}

impl ConfigurationAccess for Ecam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        if self.ports {
            // Single CPU, and every configuration access goes through the
            // PCI registry's lock: the address/data pair is not interleaved.
            return match Self::port_address(df, offset) {
                Some(a) => {
                    CONFIG_ADDRESS.write(a);
                    CONFIG_DATA.read()
                }
                None => 0xffff_ffff,
            };
        }
        match self.address(df, offset) {
            // SAFETY: inside the ECAM range from the MCFG table, mapped uncached, 4-byte aligned.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => 0xffff_ffff,
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        if self.ports {
            if let Some(a) = Self::port_address(df, offset) {
                CONFIG_ADDRESS.write(a);
                CONFIG_DATA.write(data);
            }
            return;
        }
        if let Some(a) = self.address(df, offset) {
            // SAFETY: as for `read_word`.
            unsafe { core::ptr::write_volatile(a as *mut u32, data) }
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// A mapped window onto device memory (an ivshmem BAR2 at a grant's
/// logical address), accessed a byte at a time with volatile loads and
/// stores, bounds-checked. After `paging::unmap_at` an access faults
/// (#PF stops the guest); it never reaches other memory.
pub struct MmioWindow {
    base: u64,
    len: u64,
}

impl MmioWindow {
    /// # Safety
    /// `[base, base + len)` must be mapped onto device memory the caller
    /// owns, and never onto RAM the kernel uses.
    pub unsafe fn new(base: u64, len: u64) -> Self {
        MmioWindow { base, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte at `offset`, or None past the end.
    pub fn read_u8(&self, offset: u64) -> Option<u8> {
        if offset >= self.len {
            return None;
        }
        // SAFETY: inside the window `new`'s caller vouched for.
        Some(unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) })
    }

    /// Store `value` at `offset`; false past the end.
    pub fn write_u8(&self, offset: u64, value: u8) -> bool {
        if offset >= self.len {
            return false;
        }
        // SAFETY: inside the window `new`'s caller vouched for.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) };
        true
    }
}
