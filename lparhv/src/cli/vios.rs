//! `lparhv vios restart|crash|list|serve`.
//!
//! `restart <name>` and `crash <name>` go to the running `lparhv up`
//! daemon over its control socket (its `[[vios]]` servers, with the
//! PAUSE/RESUME round or the NPIV freeze around them) and print its report.
//!
//! `serve` runs a bare storage server in the foreground, without a daemon
//! (no partitions, no handshake): it writes `<dir>/<name>.pid`, and
//! `restart`/`crash` given no system (no `--config`, `--control`,
//! `LPARHV_CONFIG` or `LPARHV_CONTROL`) signal it instead: SIGUSR1 a
//! planned restart, SIGUSR2 a SIGKILL with the server back after `--down`
//! seconds.

use super::{interrupted, Ctx};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use lparhv::control::{self, ControlRequest, ViosAction};
use lparhv::machine::process::Process;
use lparhv::storage::served::ServerView;
use lparhv::storage::vios::{Lun, Vios};
use rustix::process::Signal;
use serde_json::Value;
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
    /// Planned restart: PAUSE to its initiators, PAUSE COMPLETE, graceful
    /// restart, CONNECT, RESUME (or, without a system, a `serve`'s restart).
    Restart(Disturb),
    /// Unplanned failure: the storage daemon is killed; registered
    /// partitions are frozen until it serves again (or, without a system,
    /// a `serve`'s crash).
    Crash(Disturb),
    /// The running system's storage servers and their partitions.
    List,
}

#[derive(Args)]
struct Disturb {
    name: String,
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

impl ViosArgs {
    /// Every action but `serve` works on a running system (and reports in JSON with --json).
    pub fn names_a_system(&self) -> bool {
        !matches!(self.which, Which::Serve { .. })
    }
}

pub fn run(ctx: &Ctx, args: ViosArgs) -> Result<()> {
    match args.which {
        Which::Serve { name, luns, down } => serve(&args.dir, &name, &luns, down),
        Which::Restart(d) => disturb(ctx, &args.dir, d, ViosAction::Restart),
        Which::Crash(d) => disturb(ctx, &args.dir, d, ViosAction::Crash),
        Which::List => {
            let v = control::call(&ctx.target.socket()?, &ControlRequest::Vios { action: ViosAction::List, name: None })?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list: Vec<ServerView> = serde_json::from_value(v)?;
            if list.is_empty() {
                println!("no storage servers configured");
            }
            for s in list {
                println!(
                    "{:<12} {:<8} pid {:<8} starts {:<3} luns {:?} initiators {:?} registered {:?}",
                    s.name,
                    if s.running { "serving" } else { "down" },
                    s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.starts,
                    s.luns,
                    s.initiators,
                    s.registered
                );
            }
            Ok(())
        }
    }
}

/// restart/crash: to the daemon when a system is named, else to a `serve`.
fn disturb(ctx: &Ctx, dir: &Path, d: Disturb, action: ViosAction) -> Result<()> {
    let socket = match ctx.target.socket() {
        Ok(s) => s,
        Err(no_system) => {
            if pid_file(dir, &d.name).is_file() {
                let (sig, what) = if action == ViosAction::Restart { (Signal::USR1, "planned restart") } else { (Signal::USR2, "crash") };
                return signal(dir, &d.name, sig, what);
            }
            bail!("{no_system:#} (nor is there a `lparhv vios serve {}` in {})", d.name, dir.display());
        }
    };
    let r = control::call(&socket, &ControlRequest::Vios { action, name: Some(d.name.clone()) })?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

fn print_report(r: &Value) {
    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let list = |k: &str| r.get(k).map(|v| v.to_string()).unwrap_or_default();
    let name = r.get("vios").and_then(Value::as_str).unwrap_or("?");
    if r.get("kind").and_then(Value::as_str) == Some("planned") {
        println!("vios {name}: planned restart, pause id {}", r.get("pause_id").unwrap_or(&Value::Null));
        println!("  PAUSE to       {}", list("initiators"));
        for q in r.get("quiesced").and_then(Value::as_array).into_iter().flatten() {
            println!(
                "  quiesced       {} after {:.1} ms",
                q.get("partition").and_then(Value::as_str).unwrap_or("?"),
                q.get("ms").and_then(Value::as_f64).unwrap_or(0.0)
            );
        }
        println!("  not quiesced   {}", list("not_quiesced"));
        println!("  no session     {}", list("no_session"));
        println!(
            "  quiesce {:.1} ms, restart outage {:.1} ms (stop {:.1}, start {:.1}), PAUSE→RESUME {:.1} ms",
            f("quiesce_ms"),
            f("outage_ms"),
            f("stop_ms"),
            f("start_ms"),
            f("pause_to_resume_ms")
        );
    } else {
        println!(
            "vios {name}: crash ({}): QMP connected after {:.1} ms, every stop issued {:.1} ms later, serving again after {:.1} ms",
            r.get("cause").and_then(Value::as_str).unwrap_or("?"),
            f("qmp_connect_ms"),
            f("freeze_all_ms"),
            f("outage_ms")
        );
        for p in r.get("frozen").and_then(Value::as_array).into_iter().flatten() {
            let e = p.get("error").and_then(Value::as_str).map(|e| format!(", error: {e}")).unwrap_or_default();
            println!(
                "  frozen         {} for {:.1} ms ({} cont){e}",
                p.get("partition").and_then(Value::as_str).unwrap_or("?"),
                p.get("frozen_ms").and_then(Value::as_f64).unwrap_or(0.0),
                p.get("conts").and_then(Value::as_u64).unwrap_or(0)
            );
        }
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            println!("  the server did not come back: {e}; its partitions stay frozen");
        }
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

fn signal(dir: &Path, name: &str, sig: Signal, what: &str) -> Result<()> {
    let path = pid_file(dir, name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("no running `lparhv vios serve {name}` ({} missing)", path.display()))?;
    let pid: u32 = text.trim().parse().with_context(|| format!("{}: bad pid", path.display()))?;
    if pid <= 1 {
        bail!("{}: bad pid {pid}", path.display());
    }
    // A stale pid file names no process (or, once pinned, the signal fails):
    // both are reported.
    Process::open(pid).and_then(|p| p.signal(sig)).with_context(|| format!("vios {name} (pid {pid} from {})", path.display()))?;
    println!("vios {name}: {what} requested (lparhv pid {pid})");
    Ok(())
}
