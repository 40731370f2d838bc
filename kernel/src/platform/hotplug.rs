//! ACPI PCI hot-plug (seed 004, Figures 5, 6, 14, 15 and 17) on QEMU's
//! hot-plug register block, signalled by GPE 1.
//!
//! - The block (`hal::firmware::pci_hotplug_block`) sits at a base fixed by
//!   the chipset on bus 0 (ICH9 LPC: q35,
//!   0x0cc0; PIIX4 PM: pc, 0xae00); its bus-select numbers (BSEL) come from
//!   the DSDT (`drivers::pcihp::find_bsels`), each resolved to a bus number
//!   through the bridges' secondary bus registers on every pass.
//! - GPE 1 → the SCI task calls our handler, which only wakes the hot-plug
//!   task. The task selects each hot-plug bus, reads "inserted" (+0x00,
//!   cleared by the read) and "eject requested" (+0x04).
//! - Inserted: rescan PCI (the registry assigns BARs and binds drivers),
//!   then per new disk read sector 0; once that worked the disk is usable:
//!   `@ev hotplug_add`, and the add listeners (test services) get it.
//! - Eject request, or an I/O error on a hot-plugged disk (Figure 17): stop
//!   new I/O, finish in-flight I/O, release the driver (device reset,
//!   queues, MSI-X vector), write the eject register (`1 << slot`), rescan
//!   so the BARs are freed, `@ev hotplug_remove` and `@ev hotplug_stats`.

use crate::devices::{self, BlockDevice};
use crate::executor::{timeout, Reactor};
use crate::hal::io::IoBlock;
use crate::platform::sci;
use crate::runtime::console::{ev, event};
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use drivers::pci::{Bdf, DeviceFunction, DeviceKind};
use drivers::pcihp::{self, reg, BselEntry};
use proto::event::{keys, names};
use spin::{Mutex, Once};

type AddListener = Box<dyn Fn(Arc<BlockDevice>) + Send + Sync>;

struct Hotplug {
    regs: IoBlock,
    bsels: Vec<BselEntry>,
    reactor: Arc<Reactor>,
    /// Software vector that wakes the hot-plug task.
    kick: u8,
    /// (bus, slot) whose removal is under way.
    removing: Mutex<BTreeSet<(u8, u8)>>,
    /// Hot-plugged functions whose I/O failed, waiting for error removal.
    failed: Mutex<Vec<DeviceFunction>>,
    listeners: Mutex<Vec<AddListener>>,
}

static HP: Once<Hotplug> = Once::new();

/// `hotplug_noeject=1`: eject requests are seen and reported once per slot
/// (`@ev hotplug_eject_ignored`) but never acted on, to test lparhv's
/// policy for guests that do not eject.
static IGNORE_EJECTS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn ignore_ejects() {
    IGNORE_EJECTS.store(true, core::sync::atomic::Ordering::Relaxed);
}

fn read(regs: &IoBlock, bsel: u32, offset: u16) -> u32 {
    regs.write::<u32>(reg::SELECT, bsel);
    regs.read::<u32>(offset)
}

/// The hot-plug buses now: (bsel, bus number).
fn buses(hp: &Hotplug) -> Vec<(u32, u8)> {
    let mut out = Vec::new();
    'next: for e in &hp.bsels {
        let mut bus = 0u8;
        for &adr in &e.path {
            let (dev, func) = ((adr >> 16) as u8, (adr & 0xffff) as u8);
            if dev >= 32 || func >= 8 {
                continue 'next;
            }
            let bridge = DeviceFunction { bus, device: dev, function: func };
            // The registry's number if it set the bridge up, else what the
            // firmware programmed.
            let secondary = devices::secondary_bus(bridge).unwrap_or((devices::config_read(bridge, 0x18) >> 8) as u8);
            if secondary == 0 || secondary == 0xff {
                continue 'next;
            }
            bus = secondary;
        }
        out.push((e.bsel, bus));
    }
    out
}

/// Set up hot-plug. Call after the first PCI probe and `sci::init`.
pub fn init(reactor: &Arc<Reactor>) -> Result<(), String> {
    let platform = crate::platform::acpi::platform().ok_or("no ACPI tables")?;
    let regs = crate::hal::firmware::pci_hotplug_block(&platform.pci_config())
        .ok_or("no ICH9 LPC or PIIX4 PM on bus 0: unknown hot-plug controller")?;
    let base = regs.base();
    let dsdt = crate::platform::acpi::dsdt_bytes().ok_or("no DSDT")?;
    let bsels = pcihp::find_bsels(dsdt);
    if bsels.is_empty() {
        return Err("the DSDT names no hot-plug bus (BSEL)".into());
    }
    let kick = devices::alloc_vector().ok_or("no free vector")?;
    let hp = HP.call_once(|| Hotplug {
        regs,
        bsels,
        reactor: reactor.clone(),
        kick,
        removing: Mutex::new(BTreeSet::new()),
        failed: Mutex::new(Vec::new()),
        listeners: Mutex::new(Vec::new()),
    });
    let map: Vec<String> = buses(hp).iter().map(|(b, bus)| format!("{b}:{bus:02x}")).collect();
    log::info!("hotplug: registers at {base:#x}, BSEL paths {:x?}", hp.bsels);
    sci::register_gpe(pcihp::GPE_PCI_HOTPLUG, move || crate::IRQS.raise(kick))?;
    reactor.spawn("hotplug", task());
    let s = devices::stats();
    event(
        ev(names::HOTPLUG_READY)
            .field("base", format_args!("{base:#x}"))
            .field("buses", map.join(","))
            .field("heap_used", s.heap_used)
            .field("vectors_free", s.vectors_free)
            .field("bar_free", s.bar_free),
    );
    Ok(())
}

/// Call `f` for every hot-added disk once it is usable.
pub fn on_add(f: impl Fn(Arc<BlockDevice>) + Send + Sync + 'static) {
    if let Some(hp) = HP.get() {
        hp.listeners.lock().push(Box::new(f));
    }
}

/// A request on `df` failed: if it sits on a hot-plug bus, take it out.
pub fn device_failed(df: DeviceFunction, error: &drivers::virtio::Error) {
    let Some(hp) = HP.get() else { return };
    if !buses(hp).iter().any(|&(_, bus)| bus == df.bus) {
        return;
    }
    log::warn!("hotplug: {} failed ({error}); removing it", Bdf(df));
    let mut failed = hp.failed.lock();
    if !failed.contains(&df) {
        failed.push(df);
    }
    crate::IRQS.raise(hp.kick);
}

async fn task() {
    let Some(hp) = HP.get() else { return };
    loop {
        let wait = hp.reactor.irq(hp.kick);
        pass(hp);
        wait.await;
    }
}

/// One look at every hot-plug bus, acting on what changed.
fn pass(hp: &Hotplug) {
    let buses = buses(hp);
    let mut inserted = false;
    let mut ejects = Vec::new();
    for &(bsel, bus) in &buses {
        let up = read(&hp.regs, bsel, reg::UP);
        let down = read(&hp.regs, bsel, reg::DOWN);
        if up != 0 {
            log::info!("hotplug: bsel {bsel} (bus {bus:02x}): inserted {up:#x}");
            inserted = true;
        }
        for slot in pcihp::slots(down) {
            if IGNORE_EJECTS.load(core::sync::atomic::Ordering::Relaxed) {
                if hp.removing.lock().insert((bus, slot)) {
                    event(ev("hotplug_eject_ignored").field("bus", format_args!("{bus:02x}")).field("slot", slot));
                }
                continue;
            }
            ejects.push((bsel, bus, slot, "eject"));
        }
    }
    if inserted {
        for a in devices::probe() {
            if buses.iter().any(|&(_, bus)| bus == a.bdf.bus) {
                hp.reactor.spawn("hotplug_add", bring_up(a));
            }
        }
    }
    for df in core::mem::take(&mut *hp.failed.lock()) {
        if let Some(&(bsel, _)) = buses.iter().find(|&&(_, bus)| bus == df.bus) {
            ejects.push((bsel, df.bus, df.device, "error"));
        }
    }
    for (bsel, bus, slot, reason) in ejects {
        if hp.removing.lock().insert((bus, slot)) {
            hp.reactor.spawn("hotplug_remove", remove(bsel, bus, slot, reason));
        }
    }
}

/// Longest wait for the first read of a new disk.
const BRING_UP_TIMEOUT_NS: u64 = 10_000_000_000;

async fn bring_up(a: devices::Added) {
    let Some(hp) = HP.get() else { return };
    let bdf = Bdf(a.bdf);
    let kind = a.kind.name();
    if a.kind != DeviceKind::Blk || !a.bound {
        event(ev(names::HOTPLUG_ADD).field("bdf", bdf).field(keys::KIND, kind).field("bound", a.bound as u8));
        return;
    }
    let Some(disk) = devices::blk(a.bdf) else { return };
    let mut sector0 = alloc::vec![0u8; 512];
    let deadline = hp.reactor.now_ns() + BRING_UP_TIMEOUT_NS;
    match timeout(&hp.reactor, deadline, disk.read(0, &mut sector0)).await {
        Ok(Ok(())) => {
            event(ev(names::HOTPLUG_ADD).field("bdf", bdf).field(keys::KIND, kind).field("sectors", disk.capacity()));
            for l in hp.listeners.lock().iter() {
                l(disk.clone());
            }
        }
        // An I/O error already queued the error removal.
        Ok(Err(e)) => log::warn!("hotplug: {bdf}: first read failed: {e}"),
        Err(_) => {
            log::warn!("hotplug: {bdf}: first read timed out");
            device_failed(a.bdf, &drivers::virtio::Error::Protocol("first read timed out"));
        }
    }
}

async fn remove(bsel: u32, bus: u8, slot: u8, reason: &'static str) {
    let Some(hp) = HP.get() else { return };
    let bdf = Bdf(DeviceFunction { bus, device: slot, function: 0 });
    let functions: Vec<DeviceFunction> = (0..8)
        .map(|function| DeviceFunction { bus, device: slot, function })
        .filter(|f| devices::config_read(*f, 0) as u16 != 0xffff)
        .collect();
    for f in &functions {
        // A directly mapped grant: drop the CPU mapping first.
        crate::devices::ivshmem::release(*f);
        if let Err(e) = devices::release(*f).await {
            // The driver is still live: ejecting now would pull the device
            // out from under it. Leave the request pending.
            event(ev(names::HOTPLUG_REMOVE).field("bdf", Bdf(*f)).field("reason", reason).field(keys::OK, 0).field(keys::ERROR, e));
            hp.removing.lock().remove(&(bus, slot));
            return;
        }
    }
    hp.regs.write::<u32>(reg::SELECT, bsel);
    hp.regs.write::<u32>(reg::EJECT, 1 << slot);
    // The device is gone now (QEMU unplugs it during the write): forget it
    // and free its BAR space.
    devices::probe();
    let still_there = devices::config_read(DeviceFunction { bus, device: slot, function: 0 }, 0) as u16 != 0xffff;
    let mut e = ev(names::HOTPLUG_REMOVE).field("bdf", bdf).field("reason", reason);
    if still_there {
        e = e.field(keys::OK, 0).field(keys::ERROR, "device still present after eject");
    } else {
        e = e.field(keys::OK, 1);
    }
    event(e);
    let s = devices::stats();
    event(ev(names::HOTPLUG_STATS).field("heap_used", s.heap_used).field("vectors_free", s.vectors_free).field("bar_free", s.bar_free));
    hp.removing.lock().remove(&(bus, slot));
}
