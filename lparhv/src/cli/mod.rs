//! Command-line front end of lparhv. `run.sh` calls these commands.

mod bench;
mod boot;
mod demo;
mod failover;
mod rootvg;
mod slots;
mod storage;
mod system;
mod vios;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lparhv::machine::qemu::{self, AccelChoice, AccelDecision};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "lparhv", version, about = "Host-side hypervisor shim for lparos partitions")]
struct Cli {
    /// Accelerator: auto (KVM if it can run lparos, else TCG), kvm or tcg.
    #[arg(long, global = true, default_value = "auto")]
    accel: AccelChoice,
    /// Kernel image (default: LPAROS_KERNEL or target/release/lparos).
    #[arg(long, global = true)]
    kernel: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one guest with a virtio disk and NIC and show its console.
    Boot(boot::BootArgs),
    /// Run a demo scenario.
    Demo(demo::DemoArgs),
    /// Run a benchmark and print its figures.
    Bench(bench::BenchArgs),
    /// Say which accelerator would be used, and why.
    Accel,
    #[command(flatten)]
    System(system::SystemCommand),
    #[command(flatten)]
    Slots(slots::SlotCommand),
    /// Create, inspect and check rootvg images.
    Rootvg(rootvg::RootvgArgs),
    /// Run a storage server (VIOS) and restart or crash it.
    Vios(vios::ViosArgs),
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the user pressed Ctrl-C.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))?;
    // Demos and benchmarks drive test behaviours (writer, bench, hcall_test):
    // they boot the test image; `bench boot` measures the production image.
    let kernel = cli.kernel.clone().unwrap_or_else(|| match &cli.command {
        Command::Demo(_) => qemu::test_kernel(),
        Command::Bench(b) if b.needs_test_image() => qemu::test_kernel(),
        _ => qemu::default_kernel(),
    });
    let ctx = Ctx { accel_choice: cli.accel, kernel };
    match cli.command {
        Command::Boot(args) => boot::run(&ctx, args),
        Command::Demo(args) => demo::run(&ctx, args),
        Command::Bench(args) => bench::run(&ctx, args),
        Command::System(cmd) => system::run(&ctx, cmd),
        Command::Slots(cmd) => slots::run(cmd),
        Command::Rootvg(args) => rootvg::run(args),
        Command::Vios(args) => vios::run(args),
        Command::Accel => {
            let d = ctx.accel()?;
            println!("{} ({})", d.accel, d.reason);
            Ok(())
        }
    }
}

/// What every command needs.
pub struct Ctx {
    pub accel_choice: AccelChoice,
    pub kernel: PathBuf,
}

impl Ctx {
    /// Choose the accelerator and say so.
    pub fn accel(&self) -> Result<AccelDecision> {
        if !self.kernel.is_file() {
            anyhow::bail!("kernel image {} not found: build it with `./run.sh build`", self.kernel.display());
        }
        let d = qemu::choose_accel(self.accel_choice, &self.kernel)?;
        eprintln!("lparhv: accelerator {} ({})", d.accel, d.reason);
        Ok(d)
    }
}

/// A fresh scratch directory for one run's sockets and disk images,
/// removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("lparhv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
