//! `lparhv boot`: one guest with a virtio disk and NIC, console on stdout,
//! until it exits, the time-out passes, or Ctrl-C.

use super::{interrupted, scratch, Ctx};
use anyhow::{bail, Result};
use clap::Args;
use lparhv::machine::qemu::{Disk, Guest, GuestExit, GuestSpec, Machine, Nic};
use lparhv::machine::vswitch::VSwitch;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BootArgs {
    /// Stop the guest after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Disk image to attach (default: a fresh 16 MiB scratch image).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 64)]
    memory: u32,
    /// Machine type: q35 or pc.
    #[arg(long, default_value = "q35", value_parser = ["q35", "pc"])]
    machine: String,
    /// Guest IPv4 address.
    #[arg(long, default_value = "10.0.0.2/24")]
    ip: String,
    /// Extra kernel command line words.
    #[arg(long, default_value = "")]
    append: String,
}

pub fn run(ctx: &Ctx, args: BootArgs) -> Result<()> {
    let decision = ctx.accel()?;
    let scratch = scratch("boot")?;
    let disk = match args.disk {
        Some(d) => {
            if !d.is_file() {
                bail!("disk image {} does not exist", d.display());
            }
            d
        }
        None => {
            let d = scratch.path().join("disk.img");
            std::fs::File::create(&d)?.set_len(16 << 20)?;
            d
        }
    };
    let port = scratch.path().join("nic0.sock");
    let switch = VSwitch::start(&scratch.path().join("switch.sock"), vec![port.clone()])?;
    let mut spec = GuestSpec::new("lparos", &ctx.kernel, decision.accel);
    spec.memory_mib = args.memory;
    spec.machine = if args.machine == "pc" { Machine::Pc } else { Machine::Q35 };
    spec.cmdline = format!("ip={} {}", args.ip, args.append).trim().to_string();
    spec.disks.push(Disk { path: disk, format: "raw" });
    spec.nics.push(Nic { mac: "52:54:00:12:34:01".into(), local: port, remote: switch.path().into() });
    let mut guest = Guest::spawn(&spec, true)?;
    let deadline = (args.timeout > 0).then(|| Instant::now() + Duration::from_secs(args.timeout));
    loop {
        if interrupted() {
            guest.kill();
            eprintln!("lparhv: stopped by Ctrl-C; guest killed");
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            guest.kill();
            eprintln!("lparhv: time-out of {} s reached; guest killed", args.timeout);
            return Ok(());
        }
        if !guest.is_running() {
            let exit = guest.wait_exit(Duration::from_secs(1))?;
            eprintln!("lparhv: guest ended: {exit:?}");
            let err = guest.stderr();
            if !err.is_empty() {
                eprintln!("qemu: {err}");
            }
            return match exit {
                GuestExit::Code(0) | GuestExit::PoweredOff => Ok(()),
                other => bail!("guest ended with {other:?}"),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
