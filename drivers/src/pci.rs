//! PCI enumeration, bus numbering and BAR assignment over a configuration
//! access mechanism (ECAM on q35), plus a registry of the functions found
//! that can be re-scanned at any time: functions that appeared are set up
//! and reported as added, functions that vanished are reported as removed
//! and their BAR space returns to the window it came from.
//!
//! BAR policy: the kernel owns one 32-bit MMIO window (the kernel passes
//! `0xC000_0000..0xFEC0_0000` on q35: above the 256 MiB ECAM that QEMU puts
//! at 0xB000_0000, below the IOAPIC at 0xFEC0_0000, which is where QEMU's
//! own firmware places PCI memory too). Every memory BAR is (re)assigned
//! from it, whatever firmware left there: qboot leaves memory decoding off
//! and bridge windows closed, and firmware assignments would not leave room
//! for devices hot-plugged later. 64-bit BARs are placed in the same window
//! (upper half zero): every device we drive has small BARs, and staying
//! below 4 GiB keeps one allocator and one bridge window per bridge. Each
//! bridge gets a fixed window (`BRIDGE_WINDOW`) carved from its parent's, so
//! a device hot-plugged behind a root port later has space waiting. I/O BARs
//! are not used (modern virtio is memory-mapped) and I/O decoding stays off.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
pub use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, ConfigurationAccess, DeviceFunction, HeaderType, MemoryBarType, PciRoot,
};

/// Memory window given to each PCI bridge (1 MiB aligned, as bridge windows must be).
pub const BRIDGE_WINDOW: u64 = 8 << 20;

const REG_ID: u8 = 0x00;
const REG_COMMAND: u8 = 0x04;
const REG_CLASS: u8 = 0x08;
const REG_HEADER: u8 = 0x0c;
const REG_BUS_NUMBERS: u8 = 0x18;
const REG_IO_BASE_LIMIT: u8 = 0x1c;
const REG_MEM_BASE_LIMIT: u8 = 0x20;
const REG_PREF_BASE_LIMIT: u8 = 0x24;
const REG_PREF_BASE_UPPER: u8 = 0x28;
const REG_PREF_LIMIT_UPPER: u8 = 0x2c;

/// A range allocator for bus addresses: first fit with alignment, freed
/// ranges merge with their neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    start: u64,
    end: u64,
    /// Free ranges `(start, end)`, sorted, non-overlapping, non-adjacent.
    free: Vec<(u64, u64)>,
}

impl Window {
    pub fn new(start: u64, len: u64) -> Self {
        let end = start.saturating_add(len);
        Window { start, end, free: if len > 0 { alloc::vec![(start, end)] } else { Vec::new() } }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Allocate `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        for i in 0..self.free.len() {
            let (fs, fe) = self.free[i];
            let Some(a) = fs.checked_add(align - 1).map(|v| v & !(align - 1)) else { continue };
            let Some(e) = a.checked_add(size) else { continue };
            if e > fe {
                continue;
            }
            self.free.remove(i);
            let mut at = i;
            if fs < a {
                self.free.insert(at, (fs, a));
                at += 1;
            }
            if e < fe {
                self.free.insert(at, (e, fe));
            }
            return Some(a);
        }
        None
    }

    /// Return `[addr, addr + size)`. Ranges outside the window or already
    /// free are refused (returns false) rather than corrupting the list.
    pub fn free(&mut self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else { return false };
        if size == 0 || addr < self.start || end > self.end {
            return false;
        }
        let i = self.free.partition_point(|&(s, _)| s < addr);
        if i > 0 && self.free[i - 1].1 > addr || i < self.free.len() && self.free[i].0 < end {
            return false; // overlaps a free range: double free
        }
        self.free.insert(i, (addr, end));
        // Merge with the next and the previous range.
        if i + 1 < self.free.len() && self.free[i + 1].0 == end {
            self.free[i].1 = self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].1 == addr {
            self.free[i - 1].1 = self.free[i].1;
            self.free.remove(i);
        }
        true
    }

    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

/// What a function is, as far as the kernel's drivers care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Blk,
    Net,
    Console,
    Other,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Blk => "blk",
            DeviceKind::Net => "net",
            DeviceKind::Console => "console",
            DeviceKind::Other => "other",
        }
    }

    /// Classify by virtio vendor/device id (transitional 0x1000.. and modern 0x1040 + type).
    pub fn classify(vendor: u16, device: u16) -> Self {
        if vendor != 0x1af4 {
            return DeviceKind::Other;
        }
        match device {
            0x1000 | 0x1041 => DeviceKind::Net,
            0x1001 | 0x1042 => DeviceKind::Blk,
            0x1003 | 0x1043 => DeviceKind::Console,
            _ => DeviceKind::Other,
        }
    }
}

/// One assigned memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub address: u64,
    pub size: u64,
    pub is_64: bool,
}

/// A PCI function the registry knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub bdf: DeviceFunction,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub is_bridge: bool,
    pub kind: DeviceKind,
    pub bars: Vec<Bar>,
    /// Index of the window its BARs came from (0 = the root window).
    window: usize,
    /// Why setting it up failed, if it did (it stays registered, disabled).
    pub error: Option<PciError>,
}

impl Function {
    /// The assigned BAR with this index.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// Formats a bus/device/function as `bb:dd.f`.
pub struct Bdf(pub DeviceFunction);

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.0.bus, self.0.device, self.0.function)
    }
}

/// Set-up failures (the function stays known but unused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// The device reported a BAR the sizing rules reject.
    BadBar(u8),
    /// No space left in the window for a BAR.
    NoSpace { bar: u8, size: u64 },
    /// A bridge could not get a window or bus number.
    BridgeSetup,
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BadBar(i) => write!(f, "invalid BAR{i}"),
            PciError::NoSpace { bar, size } => write!(f, "no MMIO space for BAR{bar} ({size:#x} bytes)"),
            PciError::BridgeSetup => write!(f, "bridge window or bus number unavailable"),
        }
    }
}

/// What a scan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub added: Vec<DeviceFunction>,
    pub removed: Vec<Function>,
}

struct Bridge {
    secondary: u8,
    window: usize,
}

/// The PCI registry: enumerates, assigns, remembers.
pub struct Pci<C: ConfigurationAccess + Clone> {
    cfg: C,
    root: PciRoot<C>,
    /// Window 0 is the root window; bridges add theirs.
    windows: Vec<Option<Window>>,
    bridges: BTreeMap<DeviceFunction, Bridge>,
    functions: BTreeMap<DeviceFunction, Function>,
    next_bus: u16,
    last_bus: u8,
}

impl<C: ConfigurationAccess + Clone> Pci<C> {
    /// `cfg` reaches buses `0..=last_bus`; BARs come from `window`.
    pub fn new(cfg: C, last_bus: u8, window: Window) -> Self {
        Pci {
            root: PciRoot::new(cfg.clone()),
            cfg,
            windows: alloc::vec![Some(window)],
            bridges: BTreeMap::new(),
            functions: BTreeMap::new(),
            next_bus: 1,
            last_bus,
        }
    }

    /// virtio-drivers' view of the same configuration space (for `PciTransport::new`).
    pub fn root_mut(&mut self) -> &mut PciRoot<C> {
        &mut self.root
    }

    /// Raw 32-bit configuration read.
    pub fn read(&self, bdf: DeviceFunction, offset: u8) -> u32 {
        self.cfg.read_word(bdf, offset & !3)
    }

    /// Raw 32-bit configuration write.
    pub fn write(&mut self, bdf: DeviceFunction, offset: u8, value: u32) {
        self.cfg.write_word(bdf, offset & !3, value)
    }

    pub fn function(&self, bdf: DeviceFunction) -> Option<&Function> {
        self.functions.get(&bdf)
    }

    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    /// Free bytes in the root window (for diagnostics and tests).
    pub fn root_free(&self) -> u64 {
        self.windows[0].as_ref().map_or(0, Window::free_bytes)
    }

    /// Free bytes over every window (root and bridges): the figure a
    /// hot-plug leak check compares.
    pub fn free_bytes(&self) -> u64 {
        self.windows.iter().flatten().map(Window::free_bytes).sum()
    }

    /// Secondary bus number of a bridge the registry set up.
    pub fn secondary_bus(&self, bridge: DeviceFunction) -> Option<u8> {
        self.bridges.get(&bridge).map(|b| b.secondary)
    }

    /// Walk bus 0 and every bus behind a bridge. New functions get bus
    /// numbers (bridges), BARs and memory + bus-master enabled; functions
    /// that no longer answer are forgotten and their BARs freed.
    pub fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut present = Vec::new();
        self.scan_bus(0, 0, 0, &mut present, &mut report);
        let gone: Vec<DeviceFunction> = self.functions.keys().copied().filter(|bdf| !present.contains(bdf)).collect();
        for bdf in gone {
            if let Some(f) = self.forget(bdf) {
                report.removed.push(f);
            }
        }
        report
    }

    fn forget(&mut self, bdf: DeviceFunction) -> Option<Function> {
        let f = self.functions.remove(&bdf)?;
        if let Some(Some(w)) = self.windows.get_mut(f.window) {
            for b in &f.bars {
                w.free(b.address, b.size);
            }
        }
        if let Some(bridge) = self.bridges.remove(&bdf) {
            // Its window goes back to the parent; children were forgotten
            // by the same scan (they no longer answer either).
            if let Some(w) = self.windows[bridge.window].take() {
                if let Some(Some(parent)) = self.windows.get_mut(f.window) {
                    parent.free(w.start(), w.end() - w.start());
                }
            }
        }
        Some(f)
    }

    fn scan_bus(&mut self, bus: u8, window: usize, depth: u8, present: &mut Vec<DeviceFunction>, report: &mut ScanReport) {
        if depth > 8 || bus > self.last_bus {
            return;
        }
        for device in 0..32u8 {
            let f0 = DeviceFunction { bus, device, function: 0 };
            if self.vendor_device(f0).is_none() {
                continue;
            }
            let multi = (self.read(f0, REG_HEADER) >> 16) & 0x80 != 0;
            for function in 0..if multi { 8 } else { 1 } {
                let bdf = DeviceFunction { bus, device, function };
                let Some((vendor, device_id)) = self.vendor_device(bdf) else { continue };
                if let Some(known) = self.functions.get(&bdf) {
                    if known.vendor != vendor || known.device != device_id {
                        // A different device in the same slot since the last scan.
                        if let Some(f) = self.forget(bdf) {
                            report.removed.push(f);
                        }
                    }
                }
                present.push(bdf);
                if !self.functions.contains_key(&bdf) {
                    let f = self.setup(bdf, vendor, device_id, window);
                    self.functions.insert(bdf, f);
                    report.added.push(bdf);
                }
                if let Some(b) = self.bridges.get(&bdf) {
                    let (secondary, child_window) = (b.secondary, b.window);
                    self.scan_bus(secondary, child_window, depth + 1, present, report);
                }
            }
        }
    }

    fn vendor_device(&self, bdf: DeviceFunction) -> Option<(u16, u16)> {
        let id = self.read(bdf, REG_ID);
        let vendor = id as u16;
        (vendor != 0xffff && vendor != 0).then_some((vendor, (id >> 16) as u16))
    }

    fn setup(&mut self, bdf: DeviceFunction, vendor: u16, device: u16, window: usize) -> Function {
        let class = self.read(bdf, REG_CLASS);
        let header = HeaderType::from(((self.read(bdf, REG_HEADER) >> 16) & 0x7f) as u8);
        let is_bridge = header == HeaderType::PciPciBridge;
        let mut f = Function {
            bdf,
            vendor,
            device,
            class: (class >> 24) as u8,
            subclass: (class >> 16) as u8,
            is_bridge,
            kind: DeviceKind::classify(vendor, device),
            bars: Vec::new(),
            window,
            error: None,
        };
        // Decoding off while BARs move.
        let cmd = self.read(bdf, REG_COMMAND) & 0xffff;
        self.write(bdf, REG_COMMAND, cmd & !(Command::IO_SPACE | Command::MEMORY_SPACE).bits() as u32);
        let bar_count = match header {
            HeaderType::Standard => 6,
            HeaderType::PciPciBridge => 2,
            _ => 0,
        };
        if let Err(e) = self.assign_bars(&mut f, bar_count) {
            f.error = Some(e);
        }
        if f.error.is_none() && is_bridge {
            if let Err(e) = self.setup_bridge(bdf, window) {
                f.error = Some(e);
            }
        }
        if f.error.is_none() {
            let enable = Command::MEMORY_SPACE | Command::BUS_MASTER;
            self.write(bdf, REG_COMMAND, (cmd as u16 & !Command::IO_SPACE.bits() | enable.bits()) as u32);
        } else {
            // Give back what was assigned; leave the function disabled.
            if let Some(Some(w)) = self.windows.get_mut(window) {
                for b in f.bars.drain(..) {
                    w.free(b.address, b.size);
                }
            }
        }
        f
    }

    fn assign_bars(&mut self, f: &mut Function, bar_count: u8) -> Result<(), PciError> {
        let mut index = 0;
        while index < bar_count {
            let info = self.root.bar_info(f.bdf, index).map_err(|_| PciError::BadBar(index))?;
            let Some(info) = info else {
                index += 1;
                continue;
            };
            let step = if info.takes_two_entries() { 2 } else { 1 };
            if let BarInfo::Memory { address_type, size, address, .. } = info {
                if address != 0 {
                    log::debug!("pci {}: firmware left BAR{index} at {address:#x}; reassigning", Bdf(f.bdf));
                }
                let is_64 = address_type == MemoryBarType::Width64;
                if !size.is_power_of_two() || (is_64 && index + 1 >= bar_count) || address_type == MemoryBarType::Below1MiB {
                    return Err(PciError::BadBar(index));
                }
                // At least a page each, so BARs never share a page mapping.
                let size = size.max(4096);
                let w = self.windows.get_mut(f.window).and_then(Option::as_mut).ok_or(PciError::NoSpace { bar: index, size })?;
                let addr = w.alloc(size, size).ok_or(PciError::NoSpace { bar: index, size })?;
                if is_64 {
                    self.root.set_bar_64(f.bdf, index, addr);
                } else {
                    self.root.set_bar_32(f.bdf, index, addr as u32);
                }
                f.bars.push(Bar { index, address: addr, size, is_64 });
            }
            index += step;
        }
        Ok(())
    }

    fn setup_bridge(&mut self, bdf: DeviceFunction, parent: usize) -> Result<(), PciError> {
        let numbers = self.read(bdf, REG_BUS_NUMBERS);
        let mut secondary = (numbers >> 8) as u8;
        if secondary == 0 || secondary <= bdf.bus {
            // Firmware left it unnumbered: take the next free bus. Nested
            // bridges under a hot-plugged bridge are not numbered here.
            if self.next_bus > self.last_bus as u16 {
                return Err(PciError::BridgeSetup);
            }
            secondary = self.next_bus as u8;
            let sub = secondary as u32;
            self.write(bdf, REG_BUS_NUMBERS, (numbers & 0xff00_0000) | (sub << 16) | ((secondary as u32) << 8) | bdf.bus as u32);
        }
        let subordinate = (self.read(bdf, REG_BUS_NUMBERS) >> 16) as u8;
        self.next_bus = self.next_bus.max(subordinate as u16 + 1).max(secondary as u16 + 1);
        let w = self.windows.get_mut(parent).and_then(Option::as_mut).ok_or(PciError::BridgeSetup)?;
        let base = w.alloc(BRIDGE_WINDOW, 1 << 20).ok_or(PciError::BridgeSetup)?;
        let limit = base + BRIDGE_WINDOW - 1;
        // Memory window: bits 31:20 of base and limit.
        self.write(bdf, REG_MEM_BASE_LIMIT, (((limit >> 16) as u32) & 0xfff0) << 16 | (((base >> 16) as u32) & 0xfff0));
        // Prefetchable window closed (base above limit), I/O window closed.
        self.write(bdf, REG_PREF_BASE_LIMIT, 0x0000_fff0);
        self.write(bdf, REG_PREF_BASE_UPPER, 0);
        self.write(bdf, REG_PREF_LIMIT_UPPER, 0);
        let io = self.read(bdf, REG_IO_BASE_LIMIT);
        self.write(bdf, REG_IO_BASE_LIMIT, (io & 0xffff_0000) | 0x00f0);
        self.windows.push(Some(Window::new(base, BRIDGE_WINDOW)));
        self.bridges.insert(bdf, Bridge { secondary, window: self.windows.len() - 1 });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A configuration space in memory with sizing-aware BARs.
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct FakeFn {
        pub regs: Vec<u32>,
        /// Size mask per BAR register (0 = unimplemented).
        pub bar_masks: [u32; 6],
    }

    /// The functions present, by (bus, device, function).
    type Functions = BTreeMap<(u8, u8, u8), FakeFn>;

    #[derive(Clone, Default)]
    pub struct FakeCam(pub Arc<Mutex<Functions>>);

    impl FakeCam {
        pub fn add(&self, bus: u8, dev: u8, vendor: u16, device: u16, header: u8, bars: &[(u8, u64, bool)]) {
            let mut regs = vec![0u32; 1024];
            regs[0] = (device as u32) << 16 | vendor as u32;
            regs[2] = 0x0200_0000;
            regs[3] = (header as u32) << 16;
            let mut masks = [0u32; 6];
            for &(i, size, is64) in bars {
                let i = i as usize;
                let mask = !(size - 1);
                masks[i] = (mask as u32) | if is64 { 0b100 } else { 0 };
                regs[4 + i] = if is64 { 0b100 } else { 0 };
                if is64 && i + 1 < 6 {
                    masks[i + 1] = (mask >> 32) as u32;
                }
            }
            self.0.lock().unwrap().insert((bus, dev, 0), FakeFn { regs, bar_masks: masks });
        }
        pub fn remove(&self, bus: u8, dev: u8) {
            self.0.lock().unwrap().remove(&(bus, dev, 0));
        }
        pub fn reg(&self, bus: u8, dev: u8, offset: usize) -> u32 {
            self.0.lock().unwrap()[&(bus, dev, 0)].regs[offset / 4]
        }
    }

    impl ConfigurationAccess for FakeCam {
        fn read_word(&self, df: DeviceFunction, off: u8) -> u32 {
            self.0.lock().unwrap().get(&(df.bus, df.device, df.function)).map_or(0xffff_ffff, |f| f.regs[off as usize / 4])
        }
        fn write_word(&mut self, df: DeviceFunction, off: u8, data: u32) {
            let mut map = self.0.lock().unwrap();
            let Some(f) = map.get_mut(&(df.bus, df.device, df.function)) else { return };
            let r = off as usize / 4;
            let header = (f.regs[3] >> 16) & 0x7f;
            let nbars = if header == 0 { 6 } else { 2 };
            if (4..4 + nbars).contains(&r) {
                let i = r - 4;
                let flags = f.bar_masks[i] & 0xf;
                let is_upper = i > 0 && f.bar_masks[i - 1] & 0b110 == 0b100;
                f.regs[r] = if is_upper { data & f.bar_masks[i] } else { (data & f.bar_masks[i] & !0xf) | flags };
            } else if r == 1 {
                f.regs[1] = (f.regs[1] & 0xffff_0000) | (data & 0xffff);
            } else {
                f.regs[r] = data;
            }
        }
        #[allow(unsafe_code)] // the trait method is `unsafe fn`; cloning the fake is harmless
        unsafe fn unsafe_clone(&self) -> Self {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeCam;
    use super::*;

    #[test]
    fn window_alloc_align_free_merge() {
        let mut w = Window::new(0x1000, 0x10000);
        let a = w.alloc(0x4000, 0x4000).unwrap();
        assert_eq!(a, 0x4000);
        let b = w.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(b, 0x1000, "first fit uses the gap before the aligned block");
        assert_eq!(w.alloc(0x20000, 0x1000), None);
        assert_eq!(w.alloc(0, 0x1000), None);
        assert_eq!(w.alloc(0x1000, 3), None);
        assert!(w.free(a, 0x4000));
        assert!(!w.free(a, 0x4000), "double free refused");
        assert!(!w.free(0, 0x1000), "outside refused");
        assert!(w.free(b, 0x1000));
        assert_eq!(w.free_bytes(), 0x10000);
        assert_eq!(w.free, vec![(0x1000, 0x11000)], "ranges merged");
    }

    const WIN: u64 = 0xC000_0000;

    #[test]
    fn scan_assigns_bars_bridges_and_rescans() {
        let cam = FakeCam::default();
        cam.add(0, 0, 0x8086, 0x29c0, 0, &[]);
        cam.add(0, 1, 0x1af4, 0x1001, 0, &[(1, 0x1000, false), (4, 0x4000, true)]);
        cam.add(0, 3, 0x1b36, 0x000c, 1, &[(0, 0x1000, false)]);
        let mut pci = Pci::new(cam.clone(), 255, Window::new(WIN, 0x3ec0_0000));
        let r = pci.scan();
        assert_eq!(r.added.len(), 3);
        let blk = pci.function(DeviceFunction { bus: 0, device: 1, function: 0 }).unwrap().clone();
        assert_eq!(blk.kind, DeviceKind::Blk);
        assert_eq!(blk.error, None);
        let b4 = blk.bar(4).unwrap();
        assert!(b4.is_64 && b4.address % 0x4000 == 0 && b4.address >= WIN);
        assert_eq!(cam.reg(0, 1, 0x20) as u64 | (cam.reg(0, 1, 0x24) as u64) << 32, b4.address | 0b100);
        assert_eq!(cam.reg(0, 1, 0x14) as u64, blk.bar(1).unwrap().address);
        assert_eq!(cam.reg(0, 1, 4) & 0b110, 0b110, "memory + bus master on");
        // The bridge got bus 1 and an 8 MiB window.
        assert_eq!((cam.reg(0, 3, 0x18) >> 8) & 0xff, 1);
        let mem = cam.reg(0, 3, 0x20);
        let (base, limit) = (((mem & 0xfff0) as u64) << 16, (((mem >> 16) & 0xfff0) as u64) << 16 | 0xfffff);
        assert_eq!(limit - base + 1, BRIDGE_WINDOW);
        // Hot-add behind the bridge: only it is new; its BAR is in the bridge window.
        cam.add(1, 0, 0x1af4, 0x1043, 0, &[(4, 0x4000, true)]);
        let r = pci.scan();
        let hot = DeviceFunction { bus: 1, device: 0, function: 0 };
        assert_eq!(r.added, vec![hot]);
        assert!(r.removed.is_empty());
        let a = pci.function(hot).unwrap().bar(4).unwrap().address;
        assert!(a >= base && a <= limit);
        assert_eq!(pci.function(hot).unwrap().kind, DeviceKind::Console);
        // Hot-remove: reported and its space comes back.
        let before = pci.root_free();
        cam.remove(1, 0);
        let r = pci.scan();
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].bdf, hot);
        assert_eq!(pci.root_free(), before);
        // Remove the disk on bus 0: its BARs return to the root window.
        cam.remove(0, 1);
        pci.scan();
        assert_eq!(pci.root_free(), before + 0x1000 + 0x4000);
    }

    #[test]
    fn bad_bars_are_errors_not_panics() {
        let cam = FakeCam::default();
        // A 64-bit BAR in the last slot is invalid.
        cam.add(0, 2, 0x1af4, 0x1000, 0, &[(5, 0x1000, true)]);
        // A BAR larger than the whole window.
        cam.add(0, 4, 0x1af4, 0x1000, 0, &[(0, 1 << 31, false)]);
        let mut pci = Pci::new(cam.clone(), 255, Window::new(WIN, 0x1000_0000));
        pci.scan();
        for dev in [2, 4] {
            let f = pci.function(DeviceFunction { bus: 0, device: dev, function: 0 }).unwrap();
            assert!(f.error.is_some(), "device {dev}");
            assert_eq!(cam.reg(0, dev, 4) & 0b110, 0, "left disabled");
        }
        assert_eq!(pci.root_free(), 0x1000_0000);
    }
}
