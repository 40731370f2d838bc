//! The PVH boot handoff (`hvm_start_info`): command line, memory map and
//! the ACPI RSDP address. Copied into owned memory right at boot, so nothing
//! later depends on where the loader put it.

use alloc::vec::Vec;

const START_INFO_MAGIC: u32 = 0x336e_c578;

/// One entry of the PVH memory map.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion {
    pub start: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Ram,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Other(u32),
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// What the loader handed over, validated.
pub struct BootInfo {
    pub cmdline: Vec<u8>,
    pub memory: Vec<MemoryRegion>,
    pub rsdp: u64,
}

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Why the handoff could not be used.
#[derive(Debug)]
pub enum BootInfoError {
    BadMagic(u32),
    NoMemoryMap,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::BadMagic(m) => {
                write!(f, "hvm_start_info magic {m:#x}, expected {START_INFO_MAGIC:#x} (not booted through PVH?)")
            }
            BootInfoError::NoMemoryMap => write!(f, "no memory map in hvm_start_info (PVH version 0 loader?)"),
        }
    }
}

/// Largest memory map we accept.
const MAX_MEMMAP_ENTRIES: u32 = 128;
/// Longest command line read from the loader.
const MAX_CMDLINE: usize = crate::cmdline::MAX_CMDLINE;

/// Read and copy the start info at physical address `addr`.
///
/// Must run while the boot page tables (identity map of the first 4 GiB)
/// are active and the heap is not yet set up: it reads the loader's memory
/// into fixed-size stack buffers first.
pub fn read_start_info(addr: u64) -> Result<RawBootInfo, BootInfoError> {
    // SAFETY: the PVH ABI passes a valid `hvm_start_info` pointer in ebx, in
    // low memory that the boot page tables identity map. We only read it.
    let info = unsafe { core::ptr::read_volatile(addr as *const StartInfo) };
    if info.magic != START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic(info.magic));
    }
    if info.version < 1 || info.memmap_paddr == 0 || info.memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    let mut raw =
        RawBootInfo { cmdline: [0; MAX_CMDLINE], cmdline_len: 0, memmap: [None; MAX_MEMMAP_ENTRIES as usize], rsdp: info.rsdp_paddr };
    for i in 0..info.memmap_entries.min(MAX_MEMMAP_ENTRIES) as usize {
        let entry_addr = info.memmap_paddr + (i * core::mem::size_of::<MemmapEntry>()) as u64;
        // SAFETY: inside the loader's memory map array (bounded by its
        // declared length and our maximum), identity mapped.
        let e = unsafe { core::ptr::read_volatile(entry_addr as *const MemmapEntry) };
        let kind = match e.kind {
            1 => MemoryKind::Ram,
            2 => MemoryKind::Reserved,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            other => MemoryKind::Other(other),
        };
        raw.memmap[i] = Some(MemoryRegion { start: e.addr, size: e.size, kind });
    }
    if info.cmdline_paddr != 0 {
        while raw.cmdline_len < MAX_CMDLINE {
            // SAFETY: the command line is a NUL-terminated string in low
            // memory; we stop at the NUL or at our maximum.
            let b = unsafe { core::ptr::read_volatile((info.cmdline_paddr + raw.cmdline_len as u64) as *const u8) };
            if b == 0 {
                break;
            }
            raw.cmdline[raw.cmdline_len] = b;
            raw.cmdline_len += 1;
        }
    }
    Ok(raw)
}

/// Start info copied before the heap exists.
pub struct RawBootInfo {
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    memmap: [Option<MemoryRegion>; MAX_MEMMAP_ENTRIES as usize],
    pub rsdp: u64,
}

impl RawBootInfo {
    pub fn memory(&self) -> impl Iterator<Item = MemoryRegion> + '_ {
        self.memmap.iter().flatten().copied()
    }

    /// Move into owned heap memory.
    pub fn to_boot_info(&self) -> BootInfo {
        BootInfo { cmdline: self.cmdline[..self.cmdline_len].to_vec(), memory: self.memory().collect(), rsdp: self.rsdp }
    }
}
