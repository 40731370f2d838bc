//! Port I/O: the only place that executes `in`/`out` instructions.
//!
//! A port is reached through a handle: [`IoPort`] for one register of a
//! fixed width, [`IoBlock`] for a device's range of registers. Making a
//! handle is `unsafe` (the maker promises the port belongs to the device it
//! drives); reading and writing through it is safe. The fixed legacy ports
//! are made once, where the HAL drives them (PIT, PIC, COM1, the debug-exit
//! port, the PCI configuration ports); the ports the firmware describes
//! (PM1, GPE0, SMI_CMD, QEMU's hot-plug block) are made in `hal::firmware`
//! from the parsed tables.

use core::arch::asm;
use core::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
}

/// A width of port access: `u8`, `u16` or `u32`.
pub trait PortValue: sealed::Sealed + Copy + core::fmt::Debug {
    /// What an absent device answers.
    const ALL_ONES: Self;

    /// Read the port.
    ///
    /// # Safety
    /// `port` belongs to a device the caller drives, and reading it at
    /// this width is something that device allows.
    unsafe fn port_in(port: u16) -> Self;

    /// Write the port.
    ///
    /// # Safety
    /// As for [`PortValue::port_in`], for writing.
    unsafe fn port_out(port: u16, value: Self);
}

impl PortValue for u8 {
    const ALL_ONES: Self = u8::MAX;
    unsafe fn port_in(port: u16) -> Self {
        let value: u8;
        // SAFETY: the caller vouches for the port; `in` has no effect on
        // memory Rust sees.
        unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
        value
    }
    unsafe fn port_out(port: u16, value: Self) {
        // SAFETY: as for `port_in`.
        unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
    }
}

impl PortValue for u16 {
    const ALL_ONES: Self = u16::MAX;
    unsafe fn port_in(port: u16) -> Self {
        let value: u16;
        // SAFETY: as for the `u8` access.
        unsafe { asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
        value
    }
    unsafe fn port_out(port: u16, value: Self) {
        // SAFETY: as for the `u8` access.
        unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
    }
}

impl PortValue for u32 {
    const ALL_ONES: Self = u32::MAX;
    unsafe fn port_in(port: u16) -> Self {
        let value: u32;
        // SAFETY: as for the `u8` access.
        unsafe { asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
        value
    }
    unsafe fn port_out(port: u16, value: Self) {
        // SAFETY: as for the `u8` access.
        unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
    }
}

/// One I/O port register of width `T`.
#[derive(Clone, Copy)]
pub struct IoPort<T: PortValue> {
    port: u16,
    width: PhantomData<T>,
}

impl<T: PortValue> IoPort<T> {
    /// The register at `port`.
    ///
    /// # Safety
    /// `port` must belong to the device the caller drives (a legacy device
    /// the platform defines, or a register the firmware tables describe),
    /// and any read or write of width `T` to it must be harmless to the
    /// rest of the machine: after this call, safe code can access it freely.
    pub const unsafe fn new(port: u16) -> Self {
        IoPort { port, width: PhantomData }
    }

    /// The port number (for log lines).
    pub fn number(&self) -> u16 {
        self.port
    }

    pub fn read(&self) -> T {
        // SAFETY: `new`'s caller vouched for this port at this width.
        unsafe { T::port_in(self.port) }
    }

    pub fn write(&self, value: T) {
        // SAFETY: as for `read`.
        unsafe { T::port_out(self.port, value) }
    }
}

impl IoPort<u8> {
    /// Write a byte string to the port with a single `rep outsb`. Under KVM
    /// the whole string costs one exit instead of one per byte.
    pub fn write_all(&self, bytes: &[u8]) {
        // SAFETY: the port is vouched for (`new`); `rep outsb` reads
        // `bytes.len()` bytes starting at `bytes`, a valid slice; the
        // direction flag is clear (SysV ABI).
        unsafe {
            asm!("rep outsb", in("dx") self.port, inout("rsi") bytes.as_ptr() => _,
                 inout("rcx") bytes.len() => _, options(nostack, preserves_flags, readonly))
        }
    }
}

impl<T: PortValue> core::fmt::Debug for IoPort<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.port)
    }
}

/// A device's block of `len` consecutive I/O ports from `base`. Accesses
/// reaching past the block touch nothing: reads return all ones (what an
/// absent device answers), writes are dropped, both with a warning.
#[derive(Clone, Copy)]
pub struct IoBlock {
    base: u16,
    len: u16,
}

impl IoBlock {
    /// The ports `base..base + len`.
    ///
    /// # Safety
    /// Every port in the range must belong to the device the caller drives
    /// (as for [`IoPort::new`]), and the range must not wrap past 0xffff.
    pub const unsafe fn new(base: u16, len: u16) -> Self {
        IoBlock { base, len }
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    pub fn len(&self) -> u16 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The register of width `T` at `offset`, if all of it lies inside.
    pub fn port<T: PortValue>(&self, offset: u16) -> Option<IoPort<T>> {
        let size = core::mem::size_of::<T>() as u32;
        if offset as u32 + size > self.len as u32 {
            log::warn!("port access at {:#x}+{offset:#x} ({size} bytes) outside the block dropped", self.base);
            return None;
        }
        // SAFETY: inside the block `new`'s caller vouched for.
        Some(unsafe { IoPort::new(self.base + offset) })
    }

    /// Read the register of width `T` at `offset` (all ones outside).
    pub fn read<T: PortValue>(&self, offset: u16) -> T {
        self.port::<T>(offset).map_or(T::ALL_ONES, |p| p.read())
    }

    /// Write the register of width `T` at `offset` (dropped outside).
    pub fn write<T: PortValue>(&self, offset: u16, value: T) {
        if let Some(p) = self.port::<T>(offset) {
            p.write(value)
        }
    }
}

impl core::fmt::Debug for IoBlock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}+{:#x}", self.base, self.len)
    }
}
