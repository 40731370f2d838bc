//! `lparhv vios serve|restart|crash`: run a storage server ("VIOS") in the
//! foreground and disturb it from another shell.
//!
//! Interim control path, until lparhv's daemon and control socket exist:
//! `serve` writes `<dir>/<name>.pid`; `restart <name>` sends it SIGUSR1 (a
//! planned restart: SIGTERM to qemu-storage-daemon, start again on the same
//! socket) and `crash <name>` SIGUSR2 (SIGKILL, back after `--down`
//! seconds). `serve` prints what it did and the timings. TODO(control
//! socket): route restart/crash through lparhv's control socket instead.

use super::interrupted;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use lparhv::vios::{Lun, Vios};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ViosArgs {
    /// Directory for the NBD socket and the pid file.
    #[arg(long, global = true, default_value_os_t = default_dir())]
    dir: PathBuf,
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Export LUNs over NBD at <dir>/<name>.nbd.sock until Ctrl-C.
    Serve {
        name: String,
        /// A LUN as <export-name>=<raw image>; repeat for more.
        #[arg(long = "lun", required = true)]
        luns: Vec<String>,
        /// After `crash`, seconds before the server comes back.
        #[arg(long, default_value_t = 5)]
        down: u64,
    },
    /// Planned restart of a running `serve` (graceful stop, start again).
    Restart { name: String },
    /// Unplanned failure of a running `serve` (the daemon is killed).
    Crash { name: String },
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("lparhv-vios")
}

static RESTART: AtomicBool = AtomicBool::new(false);
static CRASH: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    RESTART.store(true, Ordering::SeqCst);
}
extern "C" fn on_usr2(_: libc::c_int) {
    CRASH.store(true, Ordering::SeqCst);
}

fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

pub fn run(args: ViosArgs) -> Result<()> {
    match args.which {
        Which::Serve { name, luns, down } => serve(&args.dir, &name, &luns, down),
        Which::Restart { name } => signal(&args.dir, &name, libc::SIGUSR1, "planned restart"),
        Which::Crash { name } => signal(&args.dir, &name, libc::SIGUSR2, "crash"),
    }
}

fn serve(dir: &Path, name: &str, luns: &[String], down: u64) -> Result<()> {
    let luns = luns
        .iter()
        .map(|l| {
            let (n, img) = l.split_once('=').ok_or_else(|| anyhow!("--lun {l:?}: expected <export-name>=<image>"))?;
            Ok(Lun::new(n, Path::new(img)))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // SAFETY: installs async-signal-safe handlers that only store to atomics.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t);
    }
    let mut v = Vios::start(name, &luns, dir)?;
    let pid_path = pid_file(dir, name);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))?;
    println!("vios {name}: serving {} LUN(s) on {} (daemon pid {:?}); Ctrl-C stops", luns.len(), v.socket().display(), v.pid());
    let result = (|| -> Result<()> {
        while !interrupted() {
            if RESTART.swap(false, Ordering::SeqCst) {
                let r = v.restart()?;
                println!("vios {name}: planned restart: {:?}, outage {:?} (stop {:?}, start {:?})", r.stopped, r.outage, r.stop, r.start);
            }
            if CRASH.swap(false, Ordering::SeqCst) {
                let t = Instant::now();
                v.crash()?;
                println!("vios {name}: crashed (daemon killed); back in {down} s");
                std::thread::sleep(Duration::from_secs(down));
                let start = v.start_again()?;
                println!("vios {name}: serving again after {:?} (start {start:?})", t.elapsed());
            }
            if !v.is_running() {
                bail!("vios {name}: qemu-storage-daemon exited on its own\n{}", v.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&pid_path);
    result
}

fn signal(dir: &Path, name: &str, sig: libc::c_int, what: &str) -> Result<()> {
    let path = pid_file(dir, name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("no running `lparhv vios serve {name}` ({} missing)", path.display()))?;
    let pid: libc::pid_t = text.trim().parse().with_context(|| format!("{}: bad pid", path.display()))?;
    if pid <= 1 {
        bail!("{}: bad pid {pid}", path.display());
    }
    // SAFETY: kill(2) with a pid read from our own pid file; a stale file
    // gives ESRCH, reported below.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("vios {name} (pid {pid}): {}", std::io::Error::last_os_error());
    }
    println!("vios {name}: {what} requested (lparhv pid {pid})");
    Ok(())
}
