//! QEMU integration tests of the power operations and the live views
//! (docs/lparhv.md, "Power" and "Live console and events"), through a real
//! lparhv daemon with three test-image partitions and the `lparhv` command
//! itself as a child process: `shutdown` of a guest that handles the ACPI
//! power button is graceful (and `console`, attached before, shows it
//! live; `events --follow`, subscribed before, receives it); a guest whose
//! vCPUs are stopped (QMP `stop`: it cannot answer the button) is forced
//! after the time-out; `reboot` shuts down and starts again; `down`
//! reports every partition. Every read of a child is bounded in time and
//! every child is killed.

use lparhv::config::SystemConfig;
use lparhv::control::{self, ControlRequest};
use lparhv::daemon::Daemon;
use lparhv::machine::qemu::{self, AccelChoice};
use lparhv::machine::qmp::Qmp;
use lparhv::owner::OsCookieSource;
use lparhv::power::{PowerOutcome, PowerReport, RebootReport};
use lparhv::slots::{Command as SlotCommand, SlotView};
use lparhv::state::paths::qmp_socket_path;
use lparhv::state::{Runtime, StatusView};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::image::{kernel, scratch};

const BOOT: Duration = Duration::from_secs(90);
const LPARHV: &str = env!("CARGO_BIN_EXE_lparhv");

/// A daemon over three partitions; stopped and removed on drop.
struct Sys {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    /// Removed after the daemon stopped (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
    config: SystemConfig,
}

impl Sys {
    fn start() -> Sys {
        let dir = scratch("pw");
        std::fs::File::create(dir.path().join("slot0.img")).unwrap().set_len(8 << 20).unwrap();
        let k = kernel().display().to_string();
        let mut text = format!("[system]\nname = \"pw-{}\"\nstate_dir = \"{}\"\n", std::process::id(), dir.path().join("st").display());
        for p in ["lpar1", "lpar2", "lpar3"] {
            text += &format!("[[partition]]\nname = \"{p}\"\nmemory_mib = 64\nimage = \"{k}\"\ncmdline = \"quiet\"\n");
        }
        text += &format!("[[slot]]\nid = 0\ndisk = \"{}\"\nowner = \"lpar1\"\n", dir.path().join("slot0.img").display());
        let path = dir.path().join("system.toml");
        std::fs::write(&path, &text).unwrap();
        let config = SystemConfig::load(&path).unwrap();
        let accel = qemu::choose_accel(AccelChoice::Auto, &kernel()).unwrap().accel;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut daemon = rt.block_on(Daemon::start(&config, Box::new(OsCookieSource))).unwrap();
        daemon.start_partitions(accel, false).unwrap();
        Sys { rt, daemon: Some(daemon), _dir: dir, config }
    }

    fn control(&self) -> PathBuf {
        self.config.state_dir.join("control.sock")
    }

    /// Waits for `p`'s current QEMU to print `@ev ready`.
    fn wait_ready(&self, p: &str) {
        let deadline = Instant::now() + BOOT;
        let log = loop {
            if let Some(log) = self.daemon.as_ref().unwrap().slots().console(p) {
                break log;
            }
            assert!(Instant::now() < deadline, "{p} has no console");
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Err(e) = log.events().next_named("ready", deadline.saturating_duration_since(Instant::now())) {
            panic!("{p} not ready: {e}\n{}", log.tail(20));
        }
    }

    fn runtime(&self, p: &str) -> Runtime {
        let s: StatusView = serde_json::from_value(control::call(&self.control(), &ControlRequest::Status).unwrap()).unwrap();
        s.partitions.into_iter().find(|x| x.name == p).unwrap().runtime
    }

    fn slot0(&self) -> SlotView {
        let v: Vec<SlotView> = serde_json::from_value(control::call(&self.control(), &ControlRequest::Slots).unwrap()).unwrap();
        v.into_iter().find(|s| s.slot == 0).unwrap()
    }

    /// QMP `stop`: the guest's vCPUs no longer run, so it cannot answer
    /// the power button.
    fn freeze(&self, p: &str) {
        let mut q = Qmp::connect(&qmp_socket_path(&self.config.state_dir, p), Duration::from_secs(5)).unwrap();
        q.execute("stop", None).unwrap();
    }

    /// Runs `lparhv <args> --control <socket>` to its end (bounded).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut child = Command::new(LPARHV)
            .args(args)
            .arg("--control")
            .arg(self.control())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lparhv {args:?} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("lparhv {args:?}: {}\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for Sys {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.stop());
        }
    }
}

/// A long-running `lparhv` child whose stdout lines arrive on a channel;
/// killed on drop.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn start(sys: &Sys, args: &[&str]) -> Streaming {
        let mut child = Command::new(LPARHV)
            .args(args)
            .arg("--control")
            .arg(sys.control())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_tx = tx.clone();
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
        std::thread::spawn(move || {
            BufReader::new(stderr).lines().map_while(Result::ok).try_for_each(|l| err_tx.send(format!("stderr: {l}")))
        });
        Streaming { child, lines, seen: Vec::new() }
    }

    /// Reads lines until one contains `text`, for at most `within`.
    fn wait_for(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {text:?} within {within:?}; got: {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn qemu_shutdown_reboot_and_down_with_live_console_and_events() {
    let sys = Sys::start();
    for p in ["lpar1", "lpar2", "lpar3"] {
        sys.wait_ready(p);
    }
    assert_eq!(sys.slot0().attached.as_deref(), Some("lpar1"), "the slot is cold-plugged into its owner");

    // Attach a console and an event follower before anything happens.
    let mut console = Streaming::start(&sys, &["console", "lpar1"]);
    console.wait_for("stderr: lparhv: console of lpar1", Duration::from_secs(30));
    let mut events = Streaming::start(&sys, &["events", "--follow", "--json", "--limit", "1"]);
    events.wait_for("\"seq\"", Duration::from_secs(30)); // the backlog: subscribed
    let subscribed_seq = events.seen.len();

    // 1. Graceful: the guest handles the power button.
    let (ok, out) = sys.cli(&["shutdown", "lpar1", "--json", "--timeout", "60"]);
    assert!(ok, "{out}");
    let r: PowerReport = serde_json::from_str(&out).unwrap();
    assert_eq!(r.outcome, PowerOutcome::Graceful, "{r:?}");
    assert_eq!(r.exit.as_deref(), Some("PoweredOff"));
    let guest = r.guest.as_ref().expect("the guest's shutdown line");
    assert_eq!(guest.get("reason").map(String::as_str), Some("power_button"), "{guest:?}");
    eprintln!("measured: graceful shutdown of lpar1 in {} ms", r.elapsed_ms);
    console.wait_for("@ev power_button", Duration::from_secs(30));
    console.wait_for("@ev shutdown", Duration::from_secs(30));
    let line = events.wait_for("\"kind\":\"power\"", Duration::from_secs(30));
    assert!(line.contains("lpar1") && line.contains("graceful"), "{line}");
    assert!(events.seen.len() > subscribed_seq, "an event after the subscription");
    drop(console);
    drop(events);
    assert!(matches!(sys.runtime("lpar1"), Runtime::Exited { .. }), "{:?}", sys.runtime("lpar1"));
    let s = sys.slot0();
    assert_eq!((s.owner.as_deref(), s.enabled, s.attached.as_deref()), (Some("lpar1"), true, None), "slot stays lpar1's, detached");
    let (ok, out) = sys.cli(&["shutdown", "lpar1"]);
    assert!(!ok && out.contains("not running"), "a second shutdown is refused: {out}");

    // 2. Forced: a guest that cannot answer the power button.
    sys.freeze("lpar2");
    let started = Instant::now();
    let (ok, out) = sys.cli(&["shutdown", "lpar2", "--timeout", "2"]);
    assert!(ok, "{out}");
    assert!(out.contains("lpar2: forced after 2 s"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(matches!(sys.runtime("lpar2"), Runtime::Exited { .. }));

    // 3. Reboot: graceful shutdown, then a new QEMU that boots.
    let old = sys.runtime("lpar3");
    let (ok, out) = sys.cli(&["reboot", "lpar3", "--json"]);
    assert!(ok, "{out}");
    let r: RebootReport = serde_json::from_str(&out).unwrap();
    assert_eq!(r.shutdown.outcome, PowerOutcome::Graceful, "{r:?}");
    assert_eq!(r.start.code, 0, "{r:?}");
    sys.wait_ready("lpar3");
    assert!(matches!(sys.runtime("lpar3"), Runtime::Running { .. }) && sys.runtime("lpar3") != old, "a new QEMU");

    // 4. down: lpar1 (started again) powers off, lpar3 (frozen) is forced,
    // lpar2 is not running; in parallel.
    let o = control::call(&sys.control(), &ControlRequest::Partition(SlotCommand::Act { partition: "lpar1".into() })).unwrap();
    assert_eq!(o["code"], 0, "{o}");
    sys.wait_ready("lpar1");
    assert_eq!(sys.slot0().attached.as_deref(), Some("lpar1"), "cold-plugged again at act");
    sys.freeze("lpar3");
    let started = Instant::now();
    let (ok, out) = sys.cli(&["down", "--timeout", "3"]);
    let took = started.elapsed();
    assert!(ok, "{out}");
    assert!(out.contains("lpar1: graceful in "), "{out}");
    assert!(out.contains("lpar2: not running"), "{out}");
    assert!(out.contains("lpar3: forced after 3 s"), "{out}");
    eprintln!("measured: down of 2 running partitions (1 graceful, 1 forced after 3 s) in {} ms", took.as_millis());
    for p in ["lpar1", "lpar2", "lpar3"] {
        assert!(!matches!(sys.runtime(p), Runtime::Running { .. }), "{p} still runs after down");
    }
}
