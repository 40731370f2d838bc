//! The device registry: PCI enumeration (re-runnable: `probe` reports what
//! appeared), MSI-X vectors, and the bound virtio devices with safe async
//! APIs. Completions are interrupt-driven: a waiter creates the interrupt
//! future for the device's vector *before* looking at the used ring, then
//! sleeps on it, so no completion is missed and nothing spins.

pub mod ivshmem;

use crate::executor::{timeout, Reactor};
use crate::hal::hw::{Ecam, KernelHal, PCI_DEVICE_MEMORY};
use crate::runtime::boot_stages::Stage;
use crate::vectors::VectorAllocator;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use drivers::msix::{Msix, VirtioCommonCfg, VIRTIO_NO_VECTOR};
use drivers::pci::{Bdf, DeviceFunction, DeviceKind, Pci, Window};
use drivers::virtio::{self, Blk, BlkOp, Console, Net};
use drivers::virtio_drivers::transport::pci::PciTransport;
use spin::{Mutex, Once};

/// PCI memory window handed to the BAR allocator. On q35 QEMU puts the
/// 256 MiB ECAM at 0xB000_0000; from 0xC000_0000 up to the IOAPIC at
/// 0xFEC0_0000 the address space is free for PCI (QEMU's own firmware uses
/// the same hole). RAM never reaches it: the kernel supports < 2 GiB guests.
pub use crate::hal::hw::PCI_WINDOW;

pub type Transport = PciTransport;

/// A virtio disk. It can be released while others hold it (hot-unplug):
/// from then on every request fails with `virtio::Error::Removed`.
pub struct BlockDevice {
    pub bdf: String,
    pub df: DeviceFunction,
    vector: u8,
    capacity: u64,
    msix: Msix,
    reactor: Arc<Reactor>,
    inner: Mutex<Option<Blk<KernelHal, Transport>>>,
    /// Set when removal starts: no new request is accepted.
    removing: AtomicBool,
    /// Requests inside `request` (submitted or about to be).
    active: AtomicUsize,
}

/// Counts a request as in flight for as long as it lives (also when the
/// waiting task is cancelled).
struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A virtio NIC (the network stack in `net.rs` drives it).
pub struct NetDevice {
    pub bdf: String,
    pub vector: u8,
    pub mac: [u8; 6],
    pub inner: Mutex<Net<KernelHal, Transport>>,
}

/// A virtio console (port 0).
pub struct ConsoleDevice {
    pub bdf: String,
    vector: u8,
    reactor: Arc<Reactor>,
    inner: Mutex<Console<KernelHal, Transport>>,
}

/// Time limit for one disk request.
const BLK_TIMEOUT_NS: u64 = 30_000_000_000;

impl BlockDevice {
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether removal has started (new requests are refused).
    pub fn is_removing(&self) -> bool {
        self.removing.load(Ordering::Acquire)
    }

    async fn request(&self, op: BlkOp, sector: u64, data: Vec<u8>) -> Result<Vec<u8>, virtio::Error> {
        if self.is_removing() {
            return Err(virtio::Error::Removed);
        }
        let _active = Active::new(&self.active);
        let r = self.request_inner(op, sector, data).await;
        if let Err(e) = &r {
            if !matches!(e, virtio::Error::Removed | virtio::Error::BadRequest | virtio::Error::ReadOnly) {
                // The device or its backend failed: Figure 17's error removal.
                crate::platform::hotplug::device_failed(self.df, e);
            }
        }
        r
    }

    async fn request_inner(&self, op: BlkOp, sector: u64, data: Vec<u8>) -> Result<Vec<u8>, virtio::Error> {
        let deadline = self.reactor.now_ns() + BLK_TIMEOUT_NS;
        let mut data = Some(data);
        let id = loop {
            let wait = self.reactor.irq(self.vector);
            {
                let mut guard = self.inner.lock();
                let Some(d) = guard.as_mut() else { return Err(virtio::Error::Removed) };
                d.collect();
                if d.has_room() {
                    break d.submit(op, sector, data.take().unwrap_or_default())?;
                }
            }
            // Queue full: wait for a completion to free descriptors.
            if timeout(&self.reactor, deadline, wait).await.is_err() {
                return Err(virtio::Error::Protocol("timed out waiting for queue space"));
            }
        };
        loop {
            let wait = self.reactor.irq(self.vector);
            {
                let mut guard = self.inner.lock();
                let Some(d) = guard.as_mut() else { return Err(virtio::Error::Removed) };
                d.collect();
                if let Some(r) = d.take(id) {
                    return r;
                }
            }
            if timeout(&self.reactor, deadline, wait).await.is_err() {
                return Err(virtio::Error::Protocol("request timed out"));
            }
        }
    }

    /// Read `buf.len()` bytes (whole sectors) from `sector` on.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), virtio::Error> {
        let chunk = virtio::MAX_REQUEST_SECTORS * virtio::SECTOR;
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let s = sector + (i * virtio::MAX_REQUEST_SECTORS) as u64;
            let data = self.request(BlkOp::Read, s, alloc::vec![0u8; part.len()]).await?;
            if data.len() != part.len() {
                return Err(virtio::Error::Protocol("short read"));
            }
            part.copy_from_slice(&data);
        }
        Ok(())
    }

    /// Write `buf` (whole sectors) from `sector` on. Durable only after `flush`.
    pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), virtio::Error> {
        let chunk = virtio::MAX_REQUEST_SECTORS * virtio::SECTOR;
        for (i, part) in buf.chunks(chunk).enumerate() {
            let s = sector + (i * virtio::MAX_REQUEST_SECTORS) as u64;
            self.request(BlkOp::Write, s, part.to_vec()).await?;
        }
        Ok(())
    }

    /// Make completed writes durable.
    pub async fn flush(&self) -> Result<(), virtio::Error> {
        self.request(BlkOp::Flush, 0, Vec::new()).await.map(|_| ())
    }
}

impl ConsoleDevice {
    /// The device's interrupt vector (receive and transmit completions).
    pub fn vector(&self) -> u8 {
        self.vector
    }

    /// Move every byte received so far into `out`, without waiting.
    pub fn read_available(&self, out: &mut Vec<u8>) -> Result<usize, virtio::Error> {
        let mut c = self.inner.lock();
        c.poll()?;
        let before = out.len();
        while let Some(b) = c.read_byte() {
            out.push(b);
        }
        Ok(out.len() - before)
    }

    /// Queue `data` and wait until the device has taken all of it.
    pub async fn write_all(&self, data: &[u8], deadline: u64) -> Result<(), virtio::Error> {
        for part in data.chunks(1024) {
            loop {
                let wait = self.reactor.irq(self.vector);
                match self.inner.lock().send(part) {
                    Ok(()) => break,
                    Err(virtio::Error::QueueFull) => {}
                    Err(e) => return Err(e),
                }
                timeout(&self.reactor, deadline, wait).await.map_err(|_| virtio::Error::Protocol("write timed out"))?;
            }
        }
        loop {
            let wait = self.reactor.irq(self.vector);
            {
                let mut c = self.inner.lock();
                c.poll()?;
                if c.tx_idle() {
                    return Ok(());
                }
            }
            timeout(&self.reactor, deadline, wait).await.map_err(|_| virtio::Error::Protocol("write timed out"))?;
        }
    }

    /// Read one line (without its newline). `None` on timeout.
    pub async fn read_line(&self, deadline: u64) -> Result<Option<String>, virtio::Error> {
        let mut line = Vec::new();
        loop {
            let wait = self.reactor.irq(self.vector);
            {
                let mut c = self.inner.lock();
                c.poll()?;
                while let Some(b) = c.read_byte() {
                    match b {
                        b'\n' => return Ok(Some(String::from_utf8_lossy(&line).trim_end_matches('\r').to_string())),
                        _ if line.len() < 4096 => line.push(b),
                        _ => {}
                    }
                }
            }
            if timeout(&self.reactor, deadline, wait).await.is_err() {
                return Ok(None);
            }
        }
    }
}

struct Registry {
    pci: Mutex<Pci<Ecam>>,
    vectors: Mutex<VectorAllocator>,
    blks: Mutex<Vec<Arc<BlockDevice>>>,
    nets: Mutex<Vec<Arc<NetDevice>>>,
    consoles: Mutex<Vec<Arc<ConsoleDevice>>>,
    reactor: Arc<Reactor>,
}

static REGISTRY: Once<Registry> = Once::new();

/// Set up the registry over a configuration access (ECAM from the MCFG
/// table, or port I/O where there is none).
pub fn init(cfg: Ecam, reactor: Arc<Reactor>) {
    let last = cfg.last_bus();
    let pci = Pci::new(cfg, last, Window::new(PCI_WINDOW.0, PCI_WINDOW.1));
    REGISTRY.call_once(|| Registry {
        pci: Mutex::new(pci),
        vectors: Mutex::new(VectorAllocator::new()),
        blks: Mutex::new(Vec::new()),
        nets: Mutex::new(Vec::new()),
        consoles: Mutex::new(Vec::new()),
        reactor,
    });
}

/// Allocate a vector (for devices or software wake-ups).
pub fn alloc_vector() -> Option<u8> {
    REGISTRY.get()?.vectors.lock().alloc()
}

/// Raw configuration read (0xffff_ffff when PCI is not set up).
pub fn config_read(bdf: DeviceFunction, offset: u8) -> u32 {
    REGISTRY.get().map_or(0xffff_ffff, |r| r.pci.lock().read(bdf, offset))
}

/// Secondary bus of a bridge the PCI registry set up.
pub fn secondary_bus(bridge: DeviceFunction) -> Option<u8> {
    REGISTRY.get()?.pci.lock().secondary_bus(bridge)
}

/// A function the last scan saw, with its kind (bound or not).
#[derive(Clone, Copy, Debug)]
pub struct Added {
    pub bdf: DeviceFunction,
    pub kind: DeviceKind,
    pub bound: bool,
}

/// Scan PCI and bind drivers to new functions. Safe to call again: only
/// changes are acted on. Prints one `device` event per new function and
/// returns them. Functions that vanished are forgotten (their BAR space is
/// freed); their drivers must have been released before (`release`).
pub fn probe() -> Vec<Added> {
    let mut added = Vec::new();
    let Some(reg) = REGISTRY.get() else { return added };
    let mut pci = reg.pci.lock();
    let report = pci.scan();
    crate::runtime::mark_stage(Stage::Pci);
    for f in &report.removed {
        if reg.blks.lock().iter().any(|b| b.df == f.bdf) {
            log::error!("pci {}: vanished while its driver is bound", Bdf(f.bdf));
        }
        crate::runtime::console::event(crate::runtime::console::ev("device_removed").field("bdf", Bdf(f.bdf)));
    }
    for bdf in report.added {
        let Some(f) = pci.function(bdf).cloned() else { continue };
        crate::runtime::console::event(
            crate::runtime::console::ev("device")
                .field("kind", f.kind.name())
                .field("bdf", Bdf(bdf))
                .field("vendor", format_args!("{:04x}", f.vendor))
                .field("device", format_args!("{:04x}", f.device)),
        );
        log::info!(
            "pci {} {:04x}:{:04x} class {:02x}.{:02x} kind {} bars {:x?}",
            Bdf(bdf),
            f.vendor,
            f.device,
            f.class,
            f.subclass,
            f.kind.name(),
            f.bars
        );
        let result = match (f.error, f.kind) {
            (Some(e), _) => Err(e.to_string()),
            (None, DeviceKind::Other) => Ok(false),
            (None, kind) => bind(reg, &mut pci, bdf, kind).map(|()| true),
        };
        match result {
            Ok(bound) => added.push(Added { bdf, kind: f.kind, bound }),
            Err(error) => {
                log::warn!("pci {}: {}", Bdf(bdf), error);
                crate::runtime::console::event(
                    crate::runtime::console::ev("driver_error").field("device", Bdf(bdf)).field("error", &error),
                );
                added.push(Added { bdf, kind: f.kind, bound: false });
            }
        }
    }
    crate::runtime::mark_stage(Stage::Drivers);
    added
}

/// Longest wait for in-flight requests when a disk is released.
const DRAIN_TIMEOUT_NS: u64 = 5_000_000_000;

/// Release the driver of `bdf` (before the device is ejected): refuse new
/// requests, let in-flight ones finish (at most 5 s), reset the device and
/// free its queues (dropping the driver), mask and disable MSI-X and give
/// the vector back. Ok(false) if no driver was bound; Err if the bound
/// driver cannot be released (only disks can, so far).
pub async fn release(bdf: DeviceFunction) -> Result<bool, String> {
    let Some(reg) = REGISTRY.get() else { return Ok(false) };
    let blk = {
        let mut blks = reg.blks.lock();
        blks.iter().position(|b| b.df == bdf).map(|i| blks.remove(i))
    };
    let Some(blk) = blk else {
        let name = format!("{}", Bdf(bdf));
        if reg.nets.lock().iter().any(|n| n.bdf == name) || reg.consoles.lock().iter().any(|c| c.bdf == name) {
            return Err("only virtio-blk drivers can be released".into());
        }
        return Ok(false);
    };
    blk.removing.store(true, Ordering::Release);
    let deadline = reg.reactor.now_ns() + DRAIN_TIMEOUT_NS;
    while blk.active.load(Ordering::Acquire) != 0 {
        if reg.reactor.now_ns() >= deadline {
            log::warn!(
                "virtio-blk {}: {} requests still in flight after 5 s; resetting anyway",
                blk.bdf,
                blk.active.load(Ordering::Acquire)
            );
            break;
        }
        reg.reactor.sleep_ms(1).await;
    }
    // Dropping the driver resets the device (the transport waits for the
    // reset to be acknowledged, so the device must still be present) and
    // then frees the virtqueue memory; requests still queued are answered
    // with `Removed`.
    let driver = blk.inner.lock().take();
    drop(driver);
    blk.msix.mask_entry(&PCI_DEVICE_MEMORY, 0);
    blk.msix.disable(&mut *reg.pci.lock());
    reg.vectors.lock().free(blk.vector);
    log::info!("virtio-blk {}: released", blk.bdf);
    Ok(true)
}

/// Functions with this vendor and device id, with their BAR `bar`
/// (address, size) when it was assigned.
pub fn find(vendor: u16, device: u16, bar: u8) -> Vec<(DeviceFunction, Option<(u64, u64)>)> {
    let Some(reg) = REGISTRY.get() else { return Vec::new() };
    let pci = reg.pci.lock();
    pci.functions().filter(|f| f.vendor == vendor && f.device == device).map(|f| (f.bdf, f.bar(bar).map(|b| (b.address, b.size)))).collect()
}

/// Figures a hot-plug leak check compares.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub heap_used: u64,
    pub vectors_free: usize,
    pub bar_free: u64,
}

pub fn stats() -> Stats {
    let (vectors_free, bar_free) = REGISTRY.get().map_or((0, 0), |r| (r.vectors.lock().free_count(), r.pci.lock().free_bytes()));
    Stats { heap_used: crate::hal::mm::heap_usage().1, vectors_free, bar_free }
}

/// Every bound disk.
pub fn blks() -> Vec<Arc<BlockDevice>> {
    REGISTRY.get().map(|r| r.blks.lock().clone()).unwrap_or_default()
}

/// The bound disk at `bdf`.
pub fn blk(bdf: DeviceFunction) -> Option<Arc<BlockDevice>> {
    REGISTRY.get()?.blks.lock().iter().find(|b| b.df == bdf).cloned()
}

fn bind(reg: &Registry, pci: &mut Pci<Ecam>, bdf: DeviceFunction, kind: DeviceKind) -> Result<(), String> {
    let vector = reg.vectors.lock().alloc().ok_or("no free interrupt vector")?;
    let r = bind_with(reg, pci, bdf, kind, vector);
    if r.is_err() {
        reg.vectors.lock().free(vector);
    }
    r
}

fn bind_with(reg: &Registry, pci: &mut Pci<Ecam>, bdf: DeviceFunction, kind: DeviceKind, vector: u8) -> Result<(), String> {
    let name = format!("{}", Bdf(bdf));
    let msix = Msix::find(pci, bdf).map_err(|e| e.to_string())?;
    let common = VirtioCommonCfg::find(pci, bdf).map_err(|e| e.to_string())?;
    msix.set_entry(&PCI_DEVICE_MEMORY, 0, crate::hal::irq::cpu_id(), vector).map_err(|e| e.to_string())?;
    msix.enable(pci);
    let transport = PciTransport::new::<KernelHal, Ecam>(pci.root_mut(), bdf).map_err(|e| format!("virtio transport: {e}"))?;
    // Device initialisation resets the queue vectors, so route them after it.
    let route = |queues: u16| -> Result<(), String> {
        common.set_config_vector(&PCI_DEVICE_MEMORY, VIRTIO_NO_VECTOR);
        for q in 0..queues {
            common.set_queue_vector(&PCI_DEVICE_MEMORY, q, 0).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    match kind {
        DeviceKind::Blk => {
            let blk = Blk::new(transport).map_err(|e| e.to_string())?;
            route(1)?;
            log::info!(
                "virtio-blk {name}: {} sectors{}, MSI-X vector {vector:#x}",
                blk.capacity(),
                if blk.read_only() { " (read-only)" } else { "" }
            );
            reg.blks.lock().push(Arc::new(BlockDevice {
                bdf: name,
                df: bdf,
                vector,
                capacity: blk.capacity(),
                msix,
                reactor: reg.reactor.clone(),
                inner: Mutex::new(Some(blk)),
                removing: AtomicBool::new(false),
                active: AtomicUsize::new(0),
            }));
        }
        DeviceKind::Net => {
            let net = Net::new(transport).map_err(|e| e.to_string())?;
            route(2)?;
            let mac = net.mac();
            log::info!("virtio-net {name}: MAC {mac:02x?}, MSI-X vector {vector:#x}");
            reg.nets.lock().push(Arc::new(NetDevice { bdf: name, vector, mac, inner: Mutex::new(net) }));
        }
        DeviceKind::Console => {
            let con = Console::new(transport).map_err(|e| e.to_string())?;
            route(2)?;
            log::info!("virtio-console {name}: MSI-X vector {vector:#x}");
            reg.consoles.lock().push(Arc::new(ConsoleDevice { bdf: name, vector, reactor: reg.reactor.clone(), inner: Mutex::new(con) }));
        }
        DeviceKind::Other => {}
    }
    Ok(())
}

/// The first disk, if any.
pub fn first_blk() -> Option<Arc<BlockDevice>> {
    REGISTRY.get()?.blks.lock().first().cloned()
}

/// The first NIC, if any.
pub fn first_net() -> Option<Arc<NetDevice>> {
    REGISTRY.get()?.nets.lock().first().cloned()
}

/// The first console, if any.
pub fn first_console() -> Option<Arc<ConsoleDevice>> {
    REGISTRY.get()?.consoles.lock().first().cloned()
}
