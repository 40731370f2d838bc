//! `lparhv bench hotplug`: ACPI PCI hot-plug latency, measured on the host.
//!
//! - add: QMP `device_add` of a virtio-blk disk sent → the guest's
//!   `@ev hotplug_add` line (disk bound and sector 0 read) reaching the host;
//! - remove: QMP `device_del` sent → QMP `DEVICE_DELETED` for the device
//!   (the guest drained, released the driver and wrote the eject register).
//!   The end is QEMU's own timestamp on the event (its wall clock when it
//!   emitted it), the start the host wall clock just before the command was
//!   written, so the time the event waited to be read here is not counted.
//!   A timestamp before the send or after the read is refused.
//!
//! - eject: `device_del` sent → the guest's `@ev hotplug_remove` line (it
//!   wrote the eject register). The rest of the remove figure is QEMU's: it
//!   emits DEVICE_DELETED after its RCU thread frees the device, which
//!   batches callbacks for up to about 50 ms.
//!
//! One guest, `runs` cycles, min / median / max, the accelerator named.

use super::summary;
use crate::cli::{scratch, Ctx};
use anyhow::{bail, Context, Result};
use lparhv::machine::qemu::{Guest, GuestSpec, Machine};
use lparhv::machine::qmp::{Qmp, QmpEvent};
use lparhv::names;
use std::time::{Duration, Instant, SystemTime};

const T: Duration = Duration::from_secs(30);

pub fn run(ctx: &Ctx, runs: usize, machine: Machine) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let d = ctx.accel()?;
    let dir = scratch("bench-hotplug")?;
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)?.set_len(8 << 20)?;
    let sock = dir.path().join("qmp.sock");
    let mut spec = GuestSpec::new("bench-hotplug", &ctx.kernel, d.accel);
    spec.machine = machine;
    spec.cmdline = "quiet".into();
    spec.extra = vec!["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())];
    if machine == Machine::Q35 {
        spec.extra.extend(["-device".into(), "pcie-root-port,id=rp0,chassis=1,bus=pcie.0,addr=0x2".into()]);
    }
    spec.extra.extend(["-blockdev".into(), format!("driver=raw,node-name=d0,file.driver=file,file.filename={}", img.display())]);
    let mut guest = Guest::spawn(&spec, false)?;
    let mut qmp = Qmp::connect(&sock, T).context("QMP")?;
    guest.wait_event(names::HOTPLUG_READY, T)?;
    guest.wait_event(names::READY, T)?;
    let mut props = vec![("drive", "d0")];
    if machine == Machine::Q35 {
        props.push(("bus", "rp0"));
    }
    let (mut add_ms, mut del_ms, mut eject_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        if super::super::interrupted() {
            bail!("interrupted");
        }
        let t0 = Instant::now();
        qmp.device_add("virtio-blk-pci", "hp0", &props)?;
        let (_, at) = guest.wait_event(names::HOTPLUG_ADD, T)?;
        add_ms.push((at - t0).as_secs_f64() * 1e3);
        let sent = SystemTime::now();
        let t1 = Instant::now();
        qmp.device_del("hp0")?;
        let (_, ejected) = guest.wait_event(names::HOTPLUG_REMOVE, T)?;
        eject_ms.push((ejected - t1).as_secs_f64() * 1e3);
        let ev = qmp.wait_device_deleted("hp0", T)?;
        del_ms.push(ms_from_send_to_emission(sent, &ev, wall_clock_at(ev.received))?);
        guest.wait_event(names::HOTPLUG_STATS, T)?;
    }
    let (a, b, c) = summary(&mut add_ms);
    let (e, f, g) = summary(&mut del_ms);
    let (h, i, j) = summary(&mut eject_ms);
    let m = if machine == Machine::Q35 { "q35, virtio-blk into a pcie-root-port" } else { "pc, virtio-blk on the root bus" };
    println!("lparos hot-plug benchmark: accelerator {} ({}), {runs} cycles, {m}", d.accel, d.reason);
    println!("  device_add -> guest disk usable   min {a:7.1} ms  median {b:7.1} ms  max {c:7.1} ms");
    println!("  device_del -> DEVICE_DELETED      min {e:7.1} ms  median {f:7.1} ms  max {g:7.1} ms");
    println!("  device_del -> guest ejected       min {h:7.1} ms  median {i:7.1} ms  max {j:7.1} ms");
    Ok(())
}

/// The host wall clock at `at`, a moment in the recent past.
fn wall_clock_at(at: Instant) -> SystemTime {
    SystemTime::now() - at.elapsed()
}

/// Milliseconds from `sent` (host wall clock) to the moment QEMU stamped
/// `ev`. The stamp must lie between the send and `read` (when the event
/// was read here); anything else means the stamp cannot be trusted.
fn ms_from_send_to_emission(sent: SystemTime, ev: &QmpEvent, read: SystemTime) -> Result<f64> {
    let emitted = ev.emitted_at().with_context(|| format!("{} has no usable timestamp", ev.name))?;
    let Ok(delay) = emitted.duration_since(sent) else {
        bail!("{} is stamped {:?} before the command was sent", ev.name, sent.duration_since(emitted).unwrap_or_default());
    };
    if emitted > read {
        bail!("{} is stamped {:?} after it was read", ev.name, emitted.duration_since(read).unwrap_or_default());
    }
    Ok(delay.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn stamped(us: Option<u64>) -> QmpEvent {
        QmpEvent { name: "DEVICE_DELETED".into(), data: serde_json::Value::Null, timestamp_us: us, received: Instant::now() }
    }

    #[test]
    fn delay_runs_from_send_to_qemus_stamp() {
        let sent = UNIX_EPOCH + Duration::from_micros(1_000_000);
        let read = UNIX_EPOCH + Duration::from_micros(1_900_000);
        let ms = ms_from_send_to_emission(sent, &stamped(Some(1_042_500)), read).unwrap();
        assert!((ms - 42.5).abs() < 1e-9, "{ms}");
    }

    #[test]
    fn stamps_outside_send_to_read_are_refused() {
        let sent = UNIX_EPOCH + Duration::from_micros(1_000_000);
        let read = UNIX_EPOCH + Duration::from_micros(1_900_000);
        for us in [None, Some(999_999), Some(1_900_001)] {
            assert!(ms_from_send_to_emission(sent, &stamped(us), read).is_err(), "{us:?}");
        }
    }
}
