//! `lparhv demo vios` and `lparhv bench vios`: the storage protocols with
//! real guests (lparhv::lab). docs/vios.md explains what they show.
//!
//! Every figure printed comes from a guest event or a host report; a field
//! that is missing or not a number fails the command and names the field.

use super::{scratch, Ctx};
use anyhow::{bail, Context, Result};
use lparhv::lab::{GuestPlan, Lab, LabSpec};
use lparhv::machine::qemu::{Guest, GuestExit};
use lparhv::storage::pause::PauseLimits;
use lparhv::Event;
use lparhv::{keys, names};
use std::time::{Duration, Instant};

fn events(g: &Guest, name: &str) -> Vec<Event> {
    g.console().iter().filter_map(|l| lparhv::parse_event(&l.text).filter(|e| e.name == name)).collect()
}

/// The longest time one write of `g`'s writer was held (ready → acknowledged,
/// guest clock, ms) around a disturbance that began at `since`: waits for
/// the guest's `marker` event (the end of the disturbance as the guest saw
/// it) and then for the next `io_ack`, and takes the largest `max_held_us`
/// of every `io_ack` line that arrived from `since` up to that one. The
/// write that was held is acknowledged after the disturbance began, and its
/// `io_ack` window closes at the latest with the first `io_ack` after the
/// marker. Returns the marker event too.
fn longest_held_ms(g: &mut Guest, since: Instant, marker: &str) -> Result<(Event, f64)> {
    let (mark, _) = g.wait_event(marker, Duration::from_secs(30))?;
    let (_, last) = g.wait_event(names::IO_ACK, Duration::from_secs(30))?;
    let mut longest_us = None;
    for line in g.console().iter().filter(|l| l.at >= since && l.at <= last) {
        if let Some(e) = lparhv::parse_event(&line.text).filter(|e| e.name == names::IO_ACK) {
            let us = e.u64(keys::MAX_HELD_US)?;
            longest_us = Some(longest_us.unwrap_or(0).max(us));
        }
    }
    let us = longest_us.context("no io_ack line arrived around the disturbance")?;
    Ok((mark, us as f64 / 1000.0))
}

struct Timeline(Instant);
impl Timeline {
    fn say(&self, what: impl std::fmt::Display) {
        println!("[{:>7.3} s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// `demo vios`: `guests` registered writers and one unregistered one on one
/// VIOS; planned restart, then crash; counts per guest.
pub fn demo(ctx: &Ctx, guests: usize, down_s: u64) -> Result<()> {
    if !(1..=6).contains(&guests) {
        bail!("--guests must be between 1 and 6");
    }
    let d = ctx.accel()?;
    let scratch = scratch("dv")?;
    let mut plans: Vec<GuestPlan> = (1..=guests).map(|i| GuestPlan::writer(&format!("lpar{i}"), 0xd000 + i as u64, true)).collect();
    plans.push(GuestPlan::writer("unreg", 0xdfff, false));
    println!("== demo vios: {guests} registered partitions + 1 unregistered, rootvg on VIOS vios1, accelerator {}", d.accel);
    println!("   registered: REGISTER_EVENTS at boot, LUN with werror=stop, reconnect-delay 5 s");
    println!("   unregistered: no registration, werror=report, reconnect-delay 1 s (the old behaviour)");
    let spec = LabSpec {
        dir: scratch.path().to_path_buf(),
        kernel: ctx.kernel.clone(),
        accel: d.accel,
        vios: "vios1".into(),
        guests: plans.clone(),
        down: Duration::from_secs(down_s),
        echo: false,
    };
    let tl = Timeline(Instant::now());
    let mut lab = Lab::start(&spec)?;
    tl.say(format!("VIOS vios1 serving {} LUNs; partitions started", plans.len()));
    for p in &plans {
        let g = &mut lab.guest(&p.name).context("guest")?.guest;
        let (r, _) = g.wait_event(names::VIOS_REGISTERED, Duration::from_secs(90))?;
        g.wait_event(names::IO_ACK, Duration::from_secs(90))?;
        tl.say(format!("{}: rootvg active, writing; registered={}", p.name, r.get(keys::OK).unwrap_or("?")));
    }
    std::thread::sleep(Duration::from_secs(2));
    tl.say("lparhv vios restart vios1 (planned): PAUSE to every initiator");
    let r = lab.planned_restart(&PauseLimits::default())?;
    tl.say(format!(
        "  PAUSE COMPLETE from {:?} in {:?}; not quiesced: {:?}; DISCONNECT; restart outage {:?}; CONNECT; RESUME (PAUSE→RESUME {:?})",
        r.paused.quiesced.iter().map(|q| &q.0).collect::<Vec<_>>(),
        r.paused.quiesce,
        r.paused.not_quiesced,
        r.restart.outage,
        r.total
    ));
    std::thread::sleep(Duration::from_secs(2));
    tl.say(format!("lparhv vios crash vios1: storage daemon killed; it takes {down_s} s to come back"));
    lab.crash()?;
    let f = lab.wait_freezes(1, Duration::from_secs(60))?.remove(0);
    tl.say(format!(
        "  watcher: FROZEN + QMP stop for {:?} ({:?} after the death was noticed); VIOS serving again after {:?}; cont + THAWED (frozen {:?})",
        f.frozen.iter().map(|x| &x.partition).collect::<Vec<_>>(),
        f.freeze_all,
        f.outage,
        f.frozen.iter().map(|x| x.duration).collect::<Vec<_>>()
    ));
    std::thread::sleep(Duration::from_secs(3));
    tl.say("stopping the writers (ACPI power button: orderly shutdown, io_done); checking the images");
    let mut rows = Vec::new();
    for g in &mut lab.guests {
        let qmp = lab.qmps.lock().unwrap_or_else(|p| p.into_inner()).remove(&g.id);
        let stop = stop_writer(&mut g.guest, qmp);
        let crashed = !events(&g.guest, names::PANIC).is_empty() || !events(&g.guest, names::EXCEPTION).is_empty();
        let errors = events(&g.guest, names::IO_ERROR).len() as u64;
        let thawed = events(&g.guest, names::THAWED).first().map(|e| -> Result<String> {
            Ok(format!(
                "frozen_ms={} guest_gap_ms={} clock={}",
                e.u64(keys::FROZEN_MS)?,
                e.u64(keys::GUEST_GAP_MS)?,
                e.get(keys::CLOCK).unwrap_or("?")
            ))
        });
        let resumed = events(&g.guest, names::VIOS_RESUME).first().map(|e| e.u64(keys::HELD_MS));
        g.guest.kill();
        let acked = stop
            .and_then(|done| Ok(done.u64(keys::ACKED)?))
            .with_context(|| format!("{}: the writer's acknowledgement high-water mark", g.plan.name))?;
        rows.push((g.plan.clone(), g.image.clone(), crashed, errors, acked, thawed.transpose()?, resumed.transpose()?));
    }
    lab.stop();
    println!();
    println!(
        "  {:<8} {:>10} {:>10} {:>7} {:>12} {:>8}  {:<14} thaw",
        "guest", "registered", "io_errors", "acked", "lost/checked", "crashed", "pause_held_ms"
    );
    let mut ok = true;
    for (p, img, crashed, errors, acked, thawed, resumed) in rows {
        let c = lparhv::storage::vios::verify_writer_log(&img, "data", p.seed, acked)?;
        println!(
            "  {:<8} {:>10} {:>10} {:>7} {:>12} {:>8}  {:<14} {}",
            p.name,
            if p.registered { "yes" } else { "no" },
            errors,
            acked,
            format!("{}/{}", c.lost, c.checked),
            crashed as u8,
            resumed.map(|v| v.to_string()).unwrap_or("-".into()),
            thawed.unwrap_or("-".into())
        );
        let all_checked = c.checked == acked.min(c.window);
        if !all_checked {
            println!("  {}: checked {} of {acked} acknowledged writes (log window {})", p.name, c.checked, c.window);
        }
        if p.registered {
            ok &= errors == 0 && c.lost == 0 && !crashed && all_checked;
        } else {
            ok &= c.lost == 0 && !crashed && all_checked;
        }
    }
    println!("  (acked = the writer's last acknowledged write, from its io_done line at shutdown; every one");
    println!("   the wrapping log still holds, the newest 8192 = LV data / 4 KiB, was read back from the image)");
    if !ok {
        bail!("demo vios: a registered guest saw an error, lost an acknowledged write or crashed");
    }
    println!("== demo vios: registered partitions 0 I/O errors, 0 acknowledged writes lost, 0 crashed");
    Ok(())
}

/// End `g`'s writer in order and return its final `io_done` (the high-water
/// mark of acknowledged writes): a writer that already ended printed it;
/// otherwise press the ACPI power button (QMP `system_powerdown`), whose
/// orderly shutdown cancels the writer, which then prints it.
fn stop_writer(g: &mut Guest, qmp: Option<lparhv::machine::qmp::Qmp>) -> Result<Event> {
    if let Some(done) = events(g, names::IO_DONE).pop() {
        return Ok(done);
    }
    if g.is_running() {
        let mut qmp = qmp.context("no QMP connection to press the power button")?;
        qmp.execute("system_powerdown", None)?;
    }
    let (done, _) = g.wait_event(names::IO_DONE, Duration::from_secs(30))?;
    Ok(done)
}

/// One planned restart as the host and the guest saw it (ms).
struct PlannedRun {
    outage: f64,
    pause_to_resume: f64,
    gate_held: u64,
    longest_held: f64,
}

/// One crash as the host and the guest saw it (ms).
struct CrashRun {
    outage: f64,
    frozen: f64,
    clock_gap: u64,
    clock: String,
    longest_held: f64,
    /// `io_error` lines of the guest over the whole run (both disturbances).
    io_errors: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `bench vios`: for a planned restart and a crash, the host-side figures
/// (VIOS outage, how long the host held the guest) next to what the guest
/// itself measured (longest write held, clock gap), and rootvg throughput
/// from the guest's benchmark mode.
pub fn bench(ctx: &Ctx, runs: usize) -> Result<()> {
    let d = ctx.accel()?;
    println!("== bench vios, accelerator {} ({})", d.accel, d.reason);
    let mut planned = Vec::new();
    let mut crash = Vec::new();
    for run in 0..runs.max(1) {
        let scratch = scratch(&format!("bv{run}"))?;
        let plan = GuestPlan::writer("b1", 0xbe00 + run as u64, true);
        let spec = LabSpec {
            dir: scratch.path().to_path_buf(),
            kernel: ctx.kernel.clone(),
            accel: d.accel,
            vios: "vios1".into(),
            guests: vec![plan],
            down: Duration::from_millis(500),
            echo: false,
        };
        let mut lab = Lab::start(&spec)?;
        {
            let g = &mut lab.guest("b1").context("guest")?.guest;
            g.wait_event(names::VIOS_REGISTERED, Duration::from_secs(60))?;
            g.wait_event(names::IO_ACK, Duration::from_secs(60))?;
        }
        let since = Instant::now();
        let r = lab.planned_restart(&PauseLimits::default())?;
        let g = &mut lab.guest("b1").context("guest")?.guest;
        let (resume, longest_held) = longest_held_ms(g, since, names::VIOS_RESUME)?;
        planned.push(PlannedRun {
            outage: ms(r.restart.outage),
            pause_to_resume: ms(r.total),
            gate_held: resume.u64(keys::HELD_MS)?,
            longest_held,
        });
        std::thread::sleep(Duration::from_millis(500));
        let since = Instant::now();
        lab.crash()?;
        let f = lab.wait_freezes(1, Duration::from_secs(30))?.remove(0);
        let frozen = f.frozen.first().context("the watcher froze no partition")?;
        if let Some(e) = &frozen.error {
            bail!("freezing {}: {e}", frozen.partition);
        }
        let frozen = ms(frozen.duration);
        let g = &mut lab.guest("b1").context("guest")?.guest;
        let (thawed, longest_held) = longest_held_ms(g, since, names::THAWED)?;
        let clock = thawed.str(keys::CLOCK)?.to_string();
        let io_errors = events(g, names::IO_ERROR).len();
        crash.push(CrashRun { outage: ms(f.outage), frozen, clock_gap: thawed.u64(keys::GUEST_GAP_MS)?, clock, longest_held, io_errors });
        lab.stop();
    }
    println!("-- planned restart (PAUSE/RESUME), {} run(s)", planned.len());
    println!("   host:  VIOS outage = SIGTERM → serving again; PAUSE→RESUME = PAUSE sent → RESUME queued;");
    println!("          beyond = PAUSE→RESUME − outage (host-side, not what the guest saw)");
    println!("   guest: gate held = PAUSE seen → RESUME seen (guest reactor clock);");
    println!("          longest write held = one write, ready → acknowledged (guest clock)");
    for p in &planned {
        println!(
            "   host: outage {:7.2} ms, PAUSE→RESUME {:7.2} ms, beyond {:7.2} ms | guest: gate held {} ms, longest write held {:7.2} ms",
            p.outage,
            p.pause_to_resume,
            p.pause_to_resume - p.outage,
            p.gate_held,
            p.longest_held
        );
    }
    println!("-- crash (freeze), VIOS back after 500 ms, {} run(s)", crash.len());
    println!("   host:  VIOS outage = death noticed → serving again; frozen = QMP stop → cont;");
    println!("          beyond = frozen − outage (host-side)");
    println!("   guest: clock gap = the guest's own ticker gap across the freeze (clock=stopped: TCG stops the");
    println!("          guest clock with the VM); longest write held = one write, ready → acknowledged (guest clock)");
    for c in &crash {
        println!(
            "   host: outage {:7.2} ms, frozen {:7.2} ms, beyond {:7.2} ms | guest: clock gap {} ms (clock={}), longest write held {:7.2} ms, I/O errors in the run {}",
            c.outage,
            c.frozen,
            c.frozen - c.outage,
            c.clock_gap,
            c.clock,
            c.longest_held,
            c.io_errors
        );
    }
    // Throughput.
    let scratch = scratch("bvt")?;
    let kinds = throughput(ctx, d.accel, scratch.path())?;
    println!("-- rootvg throughput over NBD from the VIOS (queue depth 1, LV data; MiB = 2^20 bytes)");
    for (kind, iops, kib_s) in kinds {
        println!("   {kind:<14} {iops:>8} IOPS {:>9.2} MiB/s", kib_s as f64 / 1024.0);
    }
    Ok(())
}

fn throughput(ctx: &Ctx, accel: lparhv::machine::qemu::Accel, dir: &std::path::Path) -> Result<Vec<(String, u64, u64)>> {
    use lparhv::machine::qemu::GuestSpec;
    use lparhv::storage::vios::{Lun, Vios};
    let img = dir.join("t.img");
    rootvg::host::create_image_from_toml(&lparhv::lab::rootvg_spec(), &img).map_err(|e| anyhow::anyhow!("{e}"))?;
    let v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir)?;
    let mut s = GuestSpec::new("bench", &ctx.kernel, accel);
    s.cmdline = "quiet vios_test=bench".into();
    s.extra = v.nbd_disk("lun0", 5).qemu_args("rootlun");
    let mut g = Guest::spawn(&s, false)?;
    let mut out = Vec::new();
    loop {
        let (e, _) = g.wait_event(names::VIOS_BENCH, Duration::from_secs(300))?;
        if let Some(err) = e.get(keys::ERROR) {
            bail!("guest benchmark: {err}");
        }
        match e.get(keys::KIND) {
            Some("done") => break,
            Some(k) => out.push((k.to_string(), e.u64(keys::IOPS)?, e.u64(keys::KIB_S)?)),
            None => bail!("guest event `vios_bench` has no field `kind`"),
        }
    }
    for kind in ["randwrite_4k", "randread_4k", "seqwrite_64k", "seqread_64k"] {
        if !out.iter().any(|(k, _, _)| k == kind) {
            bail!("guest benchmark: no `vios_bench kind={kind}` line");
        }
    }
    let exit = g.wait_exit(Duration::from_secs(10))?;
    if exit != GuestExit::Code(0) {
        bail!("benchmark guest exited with {exit:?}");
    }
    Ok(out)
}
