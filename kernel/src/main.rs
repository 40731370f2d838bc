//! lparos kernel: boot sequence and the glue between the arch layer, the
//! drivers and the services. Bare metal only (PVH entry in `arch/x86_64/boot.rs`).
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod arch;
mod console;
mod exit;
mod memfuncs;
mod mm;
mod pvh;
mod time;

use arch::x86_64::{cpu, gdt, idt, ioapic, lapic, paging, pic};
use exit::{exit, ExitCode};
use lparos_kernel::cmdline::Cmdline;
use lparos_kernel::executor::{Executor, IrqTable, Platform, Reactor};

/// Interrupt counters shared by the interrupt handlers and the executor.
pub static IRQS: IrqTable = IrqTable::new();

static CLOCK: time::TscClock = time::TscClock;

/// Referenced by the precompiled `core`'s unwind tables; never called
/// (panic = "abort").
#[no_mangle]
extern "C" fn rust_eh_personality() {}

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
        name, frame.vector, frame.error_code, cr2, cpu::cr3(), frame
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

#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    console::init();
    let raw = match pvh::read_start_info(start_info) {
        Ok(raw) => raw,
        Err(e) => {
            console::write_line(format_args!("lparos: unusable PVH start info: {e:?}"));
            exit(ExitCode::Failure)
        }
    };
    gdt::init();
    idt::init();
    let heap = mm::init_heap(raw.memory());
    let boot = raw.into_owned();
    if let Err(e) = paging::init(&boot.memory) {
        panic!("page tables: {e}");
    }
    let cmdline = Cmdline::parse(&boot.cmdline).unwrap_or_else(|e| {
        log::warn!("ignoring command line: {e}");
        Cmdline::default()
    });
    console::set_quiet(cmdline.has("quiet"));
    log::info!("lparos {} booting, heap {} KiB, cmdline {:?}", env!("CARGO_PKG_VERSION"), heap / 1024, core::str::from_utf8(&boot.cmdline).unwrap_or("?"));

    let platform = acpi::init(boot.rsdp).unwrap_or_else(|e| panic!("ACPI tables: {e:?}"));
    pic::disable();
    let lapic_base = paging::map(platform.lapic_base, 4096, paging::Access::Mmio).expect("map local APIC");
    lapic::init(lapic_base);
    for &(base, gsi_base) in &platform.ioapics {
        let base = paging::map(base, 4096, paging::Access::Mmio).expect("map IOAPIC");
        ioapic::init(base, gsi_base);
    }
    let tsc_hz = time::calibrate();
    log::info!("TSC {} MHz, local APIC {}, ECAM {:?}", tsc_hz / 1_000_000, lapic::id(), platform.ecam);
    cpu::sti();

    let reactor = Reactor::new(&CLOCK, &IRQS);
    let mut executor = Executor::new(reactor.clone());

    let ready_us = time::now_us();
    console::event(console::ev("ready").field("boot_us", ready_us).field("heap_kib", heap / 1024));

    match cmdline.get("fault") {
        Some("ud") => {
            // SAFETY: deliberately raises #UD to exercise the exception path.
            unsafe { core::arch::asm!("ud2") }
        }
        Some("pf") => {
            // SAFETY: deliberately reads an unmapped address to raise #PF.
            unsafe { core::ptr::read_volatile(0x7fff_dead_0000 as *const u64) };
        }
        Some(other) => log::warn!("unknown fault={other}"),
        None => {}
    }

    if cmdline.has("exit_when_ready") {
        exit(ExitCode::Success);
    }
    executor.run_until(&HaltPlatform, &|| false);
    log::info!("no task left; idling");
    loop {
        HaltPlatform.idle(None, &|| false);
    }
}
