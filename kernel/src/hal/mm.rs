//! Physical memory, the kernel heap and page mappings (the page tables
//! themselves are in `arch/x86_64/paging.rs`).
//!
//! RAM is identity mapped, so a heap allocation's address is its physical
//! address: the heap also serves page-table frames and DMA buffers. The heap
//! owns every RAM range of the PVH memory map above the kernel image, but
//! hands it to the buddy allocator in 2 MiB chunks as allocations need it:
//! the allocator writes a free-list link into each block it is given, and
//! under QEMU the first write to a 2 MiB stretch of guest RAM makes the host
//! allocate and zero a huge page, so giving it all RAM at once cost most of
//! the boot (docs/benchmarks.md, "Boot").

use crate::hal::pvh::{MemoryKind, MemoryRegion};
use buddy_system_allocator::{Heap, LockedHeapWithRescue};
use core::alloc::Layout;
use core::sync::atomic::{AtomicU64, Ordering};

/// Block orders of the buddy allocator: blocks of 2^0 to 2^32 bytes.
const ORDER: usize = 33;

/// The largest block the allocator can hand out.
const MAX_BLOCK: u64 = 1 << (ORDER - 1);

#[global_allocator]
static HEAP: LockedHeapWithRescue<ORDER> = LockedHeapWithRescue::new(grow_heap);

/// Bytes of RAM the heap owns (given to the allocator or still pending).
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// RAM the heap owns but has not given to the allocator yet, lowest first.
static PENDING: spin::Mutex<PendingRam> = spin::Mutex::new(PendingRam::new());

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical range of the loaded kernel image (text through bss).
pub fn kernel_image() -> (u64, u64) {
    // Linker-script symbols: only their addresses are taken, never read.
    (core::ptr::addr_of!(__kernel_start) as u64, core::ptr::addr_of!(__kernel_end) as u64)
}

/// Lowest address handed to the heap: keeps legacy low memory (BIOS data,
/// the PVH start info, option ROMs) untouched.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// Highest address the boot page tables map; the heap starts below it.
const BOOT_MAPPED_END: u64 = 0x1_0000_0000;

/// The allocator grows by at least this much at a time, 2 MiB aligned: one
/// huge page of the host's backing memory.
const GROWTH: u64 = 0x20_0000;

/// How many RAM ranges the heap keeps pending; ranges beyond these go to
/// the allocator at once.
const MAX_PENDING: usize = 8;

/// RAM ranges `[start, end)` not yet given to the allocator.
struct PendingRam {
    ranges: [(u64, u64); MAX_PENDING],
    len: usize,
}

impl PendingRam {
    const fn new() -> Self {
        PendingRam { ranges: [(0, 0); MAX_PENDING], len: 0 }
    }

    /// Keep `[start, end)` for later; false if the list is full.
    fn push(&mut self, start: u64, end: u64) -> bool {
        if self.len == MAX_PENDING {
            return false;
        }
        self.ranges[self.len] = (start, end);
        self.len += 1;
        true
    }

    /// Take the next chunk of the first pending range: up to the end of the
    /// first `need`-aligned block of `need` bytes in it (`need` a power of
    /// two, at most 4 GiB), rounded up to a 2 MiB boundary, at most to the
    /// range's end. None when no RAM is pending.
    fn take(&mut self, need: u64) -> Option<(u64, u64)> {
        let (start, end) = *self.ranges[..self.len].first()?;
        let block_end = align_up(start, need) + need;
        let chunk_end = align_up(block_end.max(start + 1), GROWTH).min(end);
        if chunk_end == end {
            self.ranges.copy_within(1..self.len, 0);
            self.len -= 1;
        } else {
            self.ranges[0].0 = chunk_end;
        }
        Some((start, chunk_end))
    }
}

/// Give `[start, end)` to the allocator.
fn add_to(heap: &mut Heap<ORDER>, start: u64, end: u64) {
    // SAFETY: [start, end) is RAM per the memory map, above the kernel image
    // and legacy low memory, identity mapped, and taken out of the pending
    // list (or never put there) so it is handed to the allocator only once.
    unsafe { heap.add_to_heap(start as usize, end as usize) };
}

/// The allocator's rescue when an allocation fails: give it pending RAM
/// until it holds a free block that fits `layout` or no RAM is pending.
fn grow_heap(heap: &mut Heap<ORDER>, layout: &Layout) {
    let Some(need) = (layout.size().max(layout.align()) as u64).checked_next_power_of_two() else { return };
    if need > MAX_BLOCK {
        return; // larger than the allocator's largest block
    }
    let mut pending = PENDING.lock();
    while let Some((start, end)) = pending.take(need) {
        add_to(heap, start, end);
        if align_up(start, need) + need <= end {
            return;
        }
    }
}

/// Take every RAM range above the kernel image and below 4 GiB for the
/// heap; the allocator gets the rest of the 2 MiB stretch the kernel ends
/// in now, and the remainder as allocations need it. Returns the number of
/// bytes the heap owns.
pub fn init_heap(memory: impl Iterator<Item = MemoryRegion>) -> u64 {
    let (_, kernel_end) = kernel_image();
    let floor = kernel_end.max(LOW_MEMORY_END);
    let mut total = 0;
    let mut pending = PENDING.lock();
    for region in memory.filter(|r| r.kind == MemoryKind::Ram) {
        let start = align_up(region.start.max(floor), 4096);
        let end = region.end().min(BOOT_MAPPED_END) & !4095;
        if end <= start {
            continue;
        }
        if !pending.push(start, end) {
            add_to(&mut HEAP.lock(), start, end);
        }
        total += end - start;
    }
    // The first chunk: to the next 2 MiB boundary (memory the kernel image
    // already touched), so early allocations stay there.
    if let Some((start, end)) = pending.take(1) {
        add_to(&mut HEAP.lock(), start, end);
    }
    HEAP_BYTES.store(total, Ordering::Relaxed);
    total
}

/// Heap statistics: (bytes the heap owns, bytes allocated).
pub fn heap_usage() -> (u64, u64) {
    (HEAP_BYTES.load(Ordering::Relaxed), HEAP.lock().stats_alloc_actual() as u64)
}

fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// Allocate `pages` zeroed, page-aligned 4 KiB pages. Returns the (physical
/// = virtual) address, or None when memory is exhausted.
pub fn alloc_pages(pages: usize) -> Option<u64> {
    let layout = Layout::from_size_align(pages.checked_mul(4096)?, 4096).ok()?;
    // SAFETY: the layout has non-zero size (pages >= 1 is checked by the
    // caller's use; zero yields a null check below).
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
    (!ptr.is_null()).then_some(ptr as u64)
}

/// Return pages obtained from `alloc_pages`.
///
/// # Safety
/// `addr` must come from `alloc_pages(pages)` and not be used afterwards.
pub unsafe fn free_pages(addr: u64, pages: usize) {
    let layout = Layout::from_size_align(pages * 4096, 4096).expect("valid at allocation");
    // SAFETY: per this function's contract.
    unsafe { alloc::alloc::dealloc(addr as *mut u8, layout) }
}

/// Build the kernel's page tables over the PVH memory map (once, after the
/// heap is up).
pub fn init_paging(memory: &[MemoryRegion]) -> Result<(), &'static str> {
    crate::hal::arch::x86_64::paging::init(memory)
}

/// Map `len` bytes of device memory at physical `phys` to virtual `virt`
/// (both 4 KiB aligned, no page of the range mapped yet) and return the
/// window onto it.
pub fn map_window(virt: u64, phys: u64, len: u64) -> Result<crate::hal::hw::MmioWindow, &'static str> {
    crate::hal::arch::x86_64::paging::map_at(virt, phys, len)
}

/// Remove a mapping made by [`map_window`].
pub fn unmap_window(virt: u64, len: u64) {
    crate::hal::arch::x86_64::paging::unmap_at(virt, len)
}
