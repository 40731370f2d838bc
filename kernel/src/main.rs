//! lparos kernel: boot sequence and the glue between the arch layer, the
//! drivers and the services. Bare metal only (PVH entry in
//! `hal/arch/x86_64/boot.rs`); the services start in `services.rs`.
#![no_std]
#![no_main]
// The production image leaves out the test behaviours (feature
// `test-services`), and with them the only callers of some service APIs
// (hypercall client calls, ivshmem mapping, the storage pause gate). They
// stay compiled; the linker drops what nothing calls.
#![cfg_attr(not(feature = "test-services"), allow(dead_code))]
#![deny(unsafe_code)]

extern crate alloc;

mod cluster;
mod devices;
// The hardware abstraction layer is the one place with `unsafe`.
#[allow(unsafe_code)]
mod hal;
mod hcall;
mod kv;
mod net;
mod platform;
mod runtime;
mod services;
mod storage;
#[cfg(feature = "test-services")]
mod testing;
mod vios;

use hal::hw;
use hal::{exit, mm, pvh, time};
use platform::{acpi, hotplug, sci, shutdown};
use runtime::console;

use alloc::sync::Arc;
use exit::{exit, ExitCode};
use hal::arch::x86_64::{cpu, gdt, idt, ioapic, lapic, paging, pic};
use lparos_kernel::cmdline::Cmdline;
use lparos_kernel::executor::{Executor, IrqTable, Platform, Reactor};
use lparos_kernel::runtime::boot_stages::Stage;

/// Interrupt counters shared by the interrupt handlers and the executor.
pub static IRQS: IrqTable = IrqTable::new();

static CLOCK: time::TscClock = time::TscClock;

/// Referenced by the precompiled `core`'s unwind tables; never called
/// (panic = "abort").
#[allow(unsafe_code)] // FFI edge: a symbol the boot code or the precompiled core links to
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Referenced by landing pads in the precompiled `alloc` (built with
/// unwinding); never reached, because every panic aborts.
#[allow(unsafe_code)] // FFI edge: a symbol the boot code or the precompiled core links to
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    exit(ExitCode::Panic)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cpu::cli();
    console::force_unlock();
    console::write_line(format_args!("PANIC: {info}"));
    console::event(console::ev("panic"));
    exit(ExitCode::Panic)
}

/// Called from the IDT dispatcher for CPU exceptions: dump and stop.
pub fn fatal_exception(name: &str, frame: &idt::TrapFrame) -> ! {
    console::force_unlock();
    let cr2 = cpu::cr2();
    console::write_line(format_args!(
        "EXCEPTION {} (vector {}) error_code={:#x} cr2={:#018x} cr3={:#018x}\n{}",
        name,
        frame.vector,
        frame.error_code,
        cr2,
        cpu::cr3(),
        frame
    ));
    console::event(
        console::ev("exception")
            .field("vector", frame.vector)
            .field("name", name)
            .field("rip", format_args!("{:#x}", frame.rip))
            .field("addr", format_args!("{:#x}", cr2)),
    );
    exit(ExitCode::Exception)
}

/// Idles the CPU for the executor: `sti; hlt` with the APIC timer armed.
struct HaltPlatform;

impl Platform for HaltPlatform {
    fn idle(&self, deadline_ns: Option<u64>, has_work: &dyn Fn() -> bool) {
        cpu::cli();
        if has_work() {
            cpu::sti();
            return;
        }
        if let Some(deadline) = deadline_ns {
            let now = time::now_ns();
            if deadline <= now {
                cpu::sti();
                return;
            }
            lapic::arm_oneshot_ns(deadline - now);
        }
        cpu::enable_and_halt();
    }
}

#[allow(unsafe_code)] // FFI edge: a symbol the boot code or the precompiled core links to
#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    console::init();
    let raw = match pvh::read_start_info(start_info) {
        Ok(raw) => raw,
        Err(e) => {
            console::write_line(format_args!("lparos: unusable PVH start info: {e}"));
            exit(ExitCode::Failure)
        }
    };
    gdt::init();
    idt::init();
    let heap = mm::init_heap(raw.memory());
    let boot = raw.to_boot_info();
    if let Err(e) = paging::init(&boot.memory) {
        panic!("page tables: {e}");
    }
    runtime::mark_stage(Stage::Heap);
    let cmdline = Cmdline::parse(&boot.cmdline).unwrap_or_else(|e| {
        log::warn!("ignoring command line: {e}");
        Cmdline::default()
    });
    console::set_quiet(cmdline.has("quiet"));
    log::info!(
        "lparos {} booting, heap {} KiB, cmdline {:?}",
        env!("CARGO_PKG_VERSION"),
        heap / 1024,
        core::str::from_utf8(&boot.cmdline).unwrap_or("?")
    );

    let platform = acpi::init(boot.rsdp).unwrap_or_else(|e| panic!("ACPI tables: {e:?}"));
    pic::disable();
    let lapic_base = paging::map(platform.lapic_base, 4096, paging::Access::Mmio).expect("map local APIC");
    lapic::init(lapic_base);
    for &(base, gsi_base) in &platform.ioapics {
        let base = paging::map(base, 4096, paging::Access::Mmio).expect("map IOAPIC");
        ioapic::init(base, gsi_base);
    }
    runtime::mark_stage(Stage::AcpiTables);
    let tsc_hz = time::calibrate();
    runtime::mark_stage(Stage::Calibration);
    log::info!("TSC {} MHz, local APIC {}, ECAM {:?}", tsc_hz / 1_000_000, lapic::id(), platform.ecam);
    cpu::sti();

    let reactor = Reactor::new(&CLOCK, &IRQS);
    let mut executor = Executor::new(reactor.clone());

    let cfg = match platform.ecam {
        Some((base, first, last)) => hw::Ecam::new(base, first, last),
        None => hw::Ecam::port_io(), // pc: no MCFG table
    };
    devices::init(cfg, reactor.clone());
    devices::probe();
    acpi_events(platform, &reactor);
    runtime::mark_stage(Stage::AcpiEvents);
    runtime::report_stages();

    let ready_us = time::now_us();
    console::event(console::ev("ready").field("boot_us", ready_us).field("heap_kib", heap / 1024));

    if cmdline.has("exit_when_ready") {
        exit(ExitCode::Success);
    }
    services::start(&cmdline, &reactor);
    executor.run_until(&HaltPlatform, &|| false);
    log::info!("no task left; idling");
    loop {
        HaltPlatform.idle(None, &|| false);
    }
}

/// ACPI events (SCI, GPE, power button) and PCI hot-plug; failures are
/// reported and leave the rest of the system running.
fn acpi_events(platform: &'static acpi::Platform, reactor: &Arc<Reactor>) {
    if let Err(e) = sci::init(platform, reactor) {
        log::warn!("ACPI events unavailable: {e}");
        console::event(console::ev("acpi_error").field("error", e));
        return;
    }
    let r = reactor.clone();
    sci::on_power_button(move || shutdown::start(&r, "power_button"));
    if let Err(e) = hotplug::init(reactor) {
        log::warn!("PCI hot-plug unavailable: {e}");
        console::event(console::ev("acpi_error").field("error", e));
    }
}
