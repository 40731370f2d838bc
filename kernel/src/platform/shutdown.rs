//! Orderly shutdown, started by the ACPI power button: stop the services
//! (cancel every task but this one and the SCI task; the rootvg writer's
//! final count of acknowledged writes is printed then), make completed disk
//! writes durable (flush every disk, 5 s limit each), then ACPI soft-off
//! (S5), after which QEMU exits 0.

use crate::devices;
use crate::executor::{timeout, Reactor};
use crate::runtime::console::{ev, event};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Start the shutdown (once; later presses are ignored).
pub fn start(reactor: &Arc<Reactor>, reason: &'static str) {
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    reactor.spawn("shutdown", run(reactor.clone(), reason));
}

async fn run(reactor: Arc<Reactor>, reason: &'static str) {
    log::info!("shutdown ({reason}): stopping services");
    let mut stopped = 0;
    for (id, name) in reactor.tasks() {
        if name != "shutdown" && name != "sci" {
            reactor.cancel(id);
            stopped += 1;
        }
    }
    // The rootvg writer's final count of acknowledged writes (docs/vios.md).
    crate::storage::rootvg_svc::writer_stopped();
    let mut flushed = 0;
    for disk in devices::blks() {
        let deadline = reactor.now_ns() + 5_000_000_000;
        match timeout(&reactor, deadline, disk.flush()).await {
            Ok(Ok(())) => flushed += 1,
            Ok(Err(e)) => log::warn!("shutdown: flush {}: {e}", disk.bdf),
            Err(_) => log::warn!("shutdown: flush {} timed out", disk.bdf),
        }
    }
    event(ev("shutdown").field("reason", reason).field("tasks_stopped", stopped).field("disks_flushed", flushed));
    crate::platform::acpi::power_off();
    // QEMU acts on the S5 request from its main loop, a moment later: wait
    // for it rather than racing it with the debug-exit port.
    reactor.sleep_ms(2000).await;
    log::warn!("shutdown: ACPI soft-off did not stop the machine");
    crate::hal::exit::exit(crate::hal::exit::ExitCode::Success)
}
