//! The device registry: PCI enumeration (re-runnable: `probe` reports what
//! appeared), MSI-X vectors, and the bound virtio devices with safe async
//! APIs. Completions are interrupt-driven: a waiter creates the interrupt
//! future for the device's vector *before* looking at the used ring, then
//! sleeps on it, so no completion is missed and nothing spins.

use crate::arch::x86_64::lapic;
use crate::hw::{DeviceMemory, Ecam, KernelHal};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use drivers::msix::{Msix, VirtioCommonCfg, VIRTIO_NO_VECTOR};
use drivers::pci::{Bdf, DeviceFunction, DeviceKind, Pci, Window};
use drivers::virtio::{self, Blk, BlkOp, Console, Net};
use drivers::virtio_drivers::transport::pci::PciTransport;
use lparos_kernel::executor::{timeout, Reactor};
use lparos_kernel::vectors::VectorAllocator;
use spin::{Mutex, Once};

/// PCI memory window handed to the BAR allocator. On q35 QEMU puts the
/// 256 MiB ECAM at 0xB000_0000; from 0xC000_0000 up to the IOAPIC at
/// 0xFEC0_0000 the address space is free for PCI (QEMU's own firmware uses
/// the same hole). RAM never reaches it: the kernel supports < 2 GiB guests.
pub const PCI_WINDOW: (u64, u64) = (0xC000_0000, 0xFEC0_0000 - 0xC000_0000);

pub type Transport = PciTransport;

/// A virtio disk.
pub struct BlockDevice {
    pub bdf: String,
    vector: u8,
    reactor: Arc<Reactor>,
    inner: Mutex<Blk<KernelHal, Transport>>,
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
        self.inner.lock().capacity()
    }

    async fn request(&self, op: BlkOp, sector: u64, data: Vec<u8>) -> Result<Vec<u8>, virtio::Error> {
        let deadline = self.reactor.now_ns() + BLK_TIMEOUT_NS;
        let mut data = Some(data);
        let id = loop {
            let wait = self.reactor.irq(self.vector);
            {
                let mut d = self.inner.lock();
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
                let mut d = self.inner.lock();
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

/// Set up the registry over the ECAM range `(base, first_bus, last_bus)`.
pub fn init(ecam: (u64, u8, u8), reactor: Arc<Reactor>) {
    let (base, first, last) = ecam;
    let pci = Pci::new(Ecam::new(base, first, last), last, Window::new(PCI_WINDOW.0, PCI_WINDOW.1));
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

/// Scan PCI and bind drivers to new functions. Safe to call again: only
/// changes are acted on. Prints one `device` event per new function.
pub fn probe() {
    let Some(reg) = REGISTRY.get() else { return };
    let mut pci = reg.pci.lock();
    let report = pci.scan();
    for f in &report.removed {
        // Hot-unplug arrives with the ACPI hot-plug work; until then a
        // vanished device is only reported (its driver is not torn down:
        // virtio-drivers' transport waits for a reset the device can no
        // longer acknowledge).
        log::warn!("pci {}: function vanished", Bdf(f.bdf));
        crate::console::event(crate::console::ev("device_removed").field("bdf", Bdf(f.bdf)));
    }
    for bdf in report.added {
        let Some(f) = pci.function(bdf).cloned() else { continue };
        crate::console::event(
            crate::console::ev("device")
                .field("kind", f.kind.name())
                .field("bdf", Bdf(bdf))
                .field("vendor", format_args!("{:04x}", f.vendor))
                .field("device", format_args!("{:04x}", f.device)),
        );
        log::info!("pci {} {:04x}:{:04x} class {:02x}.{:02x} kind {} bars {:x?}", Bdf(bdf), f.vendor, f.device, f.class, f.subclass, f.kind.name(), f.bars);
        let result = match (f.error, f.kind) {
            (Some(e), _) => Err(e.to_string()),
            (None, DeviceKind::Other) => Ok(()),
            (None, kind) => bind(reg, &mut pci, bdf, kind),
        };
        if let Err(error) = result {
            log::warn!("pci {}: {}", Bdf(bdf), error);
            crate::console::event(crate::console::ev("driver_error").field("device", Bdf(bdf)).field("error", &error));
        }
    }
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
    msix.set_entry(&DeviceMemory, 0, lapic::id(), vector).map_err(|e| e.to_string())?;
    msix.enable(pci);
    let transport = PciTransport::new::<KernelHal, Ecam>(pci.root_mut(), bdf).map_err(|e| format!("virtio transport: {e}"))?;
    // Device initialisation resets the queue vectors, so route them after it.
    let route = |queues: u16| -> Result<(), String> {
        common.set_config_vector(&DeviceMemory, VIRTIO_NO_VECTOR);
        for q in 0..queues {
            common.set_queue_vector(&DeviceMemory, q, 0).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    match kind {
        DeviceKind::Blk => {
            let blk = Blk::new(transport).map_err(|e| e.to_string())?;
            route(1)?;
            log::info!("virtio-blk {name}: {} sectors{}, MSI-X vector {vector:#x}", blk.capacity(), if blk.read_only() { " (read-only)" } else { "" });
            reg.blks.lock().push(Arc::new(BlockDevice { bdf: name, vector, reactor: reg.reactor.clone(), inner: Mutex::new(blk) }));
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
