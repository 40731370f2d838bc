//! Starting one lparos partition as a QEMU process and watching it.
//!
//! Owns: the QEMU command line (q35 or pc, qboot firmware, PVH kernel,
//! virtio disks and NICs, isa-debug-exit), the choice of accelerator, the
//! console reader (into a [`Console`]; waits go through its
//! [`EventStream`]), and the process lifetime: a [`Guest`] kills its QEMU when dropped, and
//! QEMU is also killed if lparhv itself dies (parent-death signal).

use super::console::{Console, ConsoleLine, EventStream, WaitError};
use anyhow::{anyhow, bail, Context, Result};
use proto::event::{names, Event};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Fast firmware that boots PVH kernels and still provides ACPI tables.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Hardware accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for: a specific accelerator or the best that works.
/// The one accelerator setting of both `--accel` and a config's `accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Force(Accel),
}

impl AccelChoice {
    /// "auto", "kvm" or "tcg"; anything else (even "") is not a choice.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(AccelChoice::Auto),
            "kvm" => Some(AccelChoice::Force(Accel::Kvm)),
            "tcg" => Some(AccelChoice::Force(Accel::Tcg)),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Force(a) => a.as_str(),
        }
    }
}

/// On the command line an empty value also means auto.
impl std::str::FromStr for AccelChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" => Ok(AccelChoice::Auto),
            other => AccelChoice::from_name(other).ok_or_else(|| anyhow!("unknown accelerator {other:?}: use auto, kvm or tcg")),
        }
    }
}

/// Written as its name ("auto", "kvm", "tcg").
impl Serialize for AccelChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The accelerator in use and why it was chosen.
#[derive(Clone, Debug)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Machine type, also the `machine` key of a config ("q35", "pc").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Q35,
    Pc,
}

/// A disk attached as virtio-blk.
#[derive(Clone, Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub format: &'static str,
}

/// A NIC attached as virtio-net to a unix-datagram LAN port.
#[derive(Clone, Debug)]
pub struct Nic {
    pub mac: String,
    /// Socket QEMU binds for this NIC.
    pub local: PathBuf,
    /// Socket of the switch (or peer) it sends to.
    pub remote: PathBuf,
}

/// Everything needed to start one partition.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub accel: Accel,
    pub machine: Machine,
    pub memory_mib: u32,
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// Attach isa-debug-exit so the guest can report an exit code (off:
    /// the guest can only power off through ACPI).
    pub debug_exit: bool,
    /// Extra raw QEMU arguments.
    pub extra: Vec<String>,
}

impl GuestSpec {
    pub fn new(name: &str, kernel: &Path, accel: Accel) -> Self {
        GuestSpec {
            name: name.into(),
            kernel: kernel.into(),
            accel,
            machine: Machine::Q35,
            memory_mib: 64,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            debug_exit: true,
            extra: Vec::new(),
        }
    }

    /// The QEMU arguments for this partition.
    pub fn args(&self) -> Vec<String> {
        let machine = match self.machine {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        };
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-M".into(),
            format!("{machine},accel={}", self.accel),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-bios".into(),
            QBOOT.into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
        ];
        if self.debug_exit {
            a.push("-device".into());
            a.push("isa-debug-exit,iobase=0xf4,iosize=0x04".into());
        }
        for (i, d) in self.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!("file={},if=none,format={},id=disk{i},cache=none,aio=threads", d.path.display(), d.format));
            a.push("-device".into());
            a.push(format!("virtio-blk-pci,drive=disk{i}"));
        }
        for (i, n) in self.nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!(
                "dgram,id=net{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                n.local.display(),
                n.remote.display()
            ));
            a.push("-device".into());
            a.push(format!("virtio-net-pci,netdev=net{i},mac={}", n.mac));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// How a guest ended (in `lparhv status --json`: `"powered_off"`,
/// `{"code": 0}`, `{"qemu_error": 1}`, `{"signal": 9}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestExit {
    /// The guest wrote this code to isa-debug-exit (0 = success).
    Code(u32),
    /// QEMU exited 0: ACPI power-off or a clean quit.
    PoweredOff,
    /// QEMU failed itself (bad option, KVM error...) with this status.
    QemuError(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl GuestExit {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(0), _) => GuestExit::PoweredOff,
            (Some(c), _) if c % 2 == 1 => GuestExit::Code((c as u32 - 1) / 2),
            (Some(c), _) => GuestExit::QemuError(c),
            (None, Some(sig)) => GuestExit::Signal(sig),
            (None, None) => GuestExit::QemuError(-1),
        }
    }
}

/// A running partition. Dropping it kills QEMU.
pub struct Guest {
    pub name: String,
    pub started: Instant,
    child: Child,
    console: Console,
    /// Where [`Guest::wait_event`] reads on.
    events: EventStream,
    stderr: Arc<Mutex<Vec<String>>>,
    exit: Option<GuestExit>,
}

impl Guest {
    /// Start QEMU. `echo` copies each console line to this process's stdout
    /// prefixed with the guest's name.
    pub fn spawn(spec: &GuestSpec, echo: bool) -> Result<Guest> {
        if !spec.kernel.is_file() {
            bail!("kernel image {} not found: build it with `./run.sh build`", spec.kernel.display());
        }
        let mut cmd = Command::new(QEMU);
        cmd.args(spec.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl, which is async-signal-safe. It asks the kernel to
        // SIGKILL QEMU if lparhv dies, so no guest outlives its supervisor.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {QEMU} (is qemu-system-x86 installed? `./run.sh setup`)"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let console = Console::new();
        let writer = console.clone();
        let name = spec.name.clone();
        std::thread::Builder::new().name(format!("{name}-console")).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(text) = line else { break };
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "[{name}] {text}");
                }
                writer.push(text);
            }
            writer.close();
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr2 = stderr.clone();
        std::thread::Builder::new().name(format!("{}-stderr", spec.name)).spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(text) = line else { break };
                stderr2.lock().expect("stderr lock").push(text);
            }
        })?;
        let events = console.events();
        Ok(Guest { name: spec.name.clone(), started, child, console, events, stderr, exit: None })
    }

    /// OS process id of QEMU.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the next event line named `name`, skipping others. Returns
    /// the event and when its line arrived.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<(Event, Instant)> {
        self.wait_event_where(timeout, |e| e.name == name).with_context(|| format!("waiting for event {name:?}"))
    }

    /// Wait for the next event line for which `want` is true.
    pub fn wait_event_where(&mut self, timeout: Duration, mut want: impl FnMut(&Event) -> bool) -> Result<(Event, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(fatal) = self.qemu_fatal_error() {
                bail!("{}: QEMU stopped the guest: {fatal}\n{}", self.name, self.diagnostics());
            }
            // Wake up regularly to notice QEMU's own fatal errors: on a KVM
            // internal error QEMU pauses the guest instead of exiting.
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            if left.is_zero() {
                bail!("{}: timed out after {:?}\n{}", self.name, timeout, self.diagnostics());
            }
            match self.events.next_where(left, &mut want) {
                Ok(found) => return Ok(found),
                Err(WaitError::TimedOut) => {}
                Err(WaitError::GuestFailed(line)) => bail!("{}: guest failed: {}\n{}", self.name, line, self.console_tail(30)),
                Err(WaitError::Closed) => {
                    let exit = self.wait_exit(Duration::from_secs(5)).ok();
                    bail!("{}: console closed (exit {:?})\n{}", self.name, exit, self.diagnostics())
                }
            }
        }
    }

    /// Wait for QEMU to exit, killing it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<GuestExit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let exit = GuestExit::from_status(status);
                self.exit = Some(exit);
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{}: did not exit within {:?}; killed\n{}", self.name, timeout, self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill QEMU (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(GuestExit::from_status(status));
            }
        }
    }

    /// The console (every line so far, appended as they come), for
    /// whoever must watch a guest that someone else owns.
    pub fn console_log(&self) -> Console {
        self.console.clone()
    }

    /// Every console line so far.
    pub fn console(&self) -> Vec<ConsoleLine> {
        self.console.lines()
    }

    /// The last `n` console lines, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        self.console.tail(n)
    }

    /// A line of QEMU's error output saying the guest cannot go on.
    pub fn qemu_fatal_error(&self) -> Option<String> {
        self.stderr
            .lock()
            .expect("stderr lock")
            .iter()
            .find(|l| l.contains("KVM internal error") || l.contains("emulation failure"))
            .cloned()
    }

    /// QEMU's own error output.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    fn diagnostics(&self) -> String {
        let mut s = format!("console:\n{}", self.console_tail(30));
        let err = self.stderr();
        if !err.is_empty() {
            s.push_str(&format!("qemu stderr:\n{err}\n"));
        }
        s
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether /dev/kvm can be opened read-write.
pub fn kvm_device_usable() -> Result<(), String> {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(|_| ()).map_err(|e| format!("/dev/kvm: {e}"))
}

/// Pick the accelerator. `Auto` tries KVM with a real boot of `kernel` (a
/// KVM that opens but cannot run lparos, such as a software kvm-pvm whose
/// instruction emulator lacks SSE, is rejected) and falls back to TCG. The
/// environment variable `LPAROS_ACCEL` (auto, kvm, tcg) overrides `choice`.
pub fn choose_accel(choice: AccelChoice, kernel: &Path) -> Result<AccelDecision> {
    match effective_choice(choice)? {
        AccelChoice::Force(Accel::Tcg) => Ok(AccelDecision { accel: Accel::Tcg, reason: "forced".into() }),
        AccelChoice::Force(Accel::Kvm) => {
            kvm_device_usable().map_err(|e| anyhow!("KVM was requested but {e}"))?;
            Ok(AccelDecision { accel: Accel::Kvm, reason: "forced".into() })
        }
        AccelChoice::Auto => Ok(probe_kvm(kernel)),
    }
}

/// `choice`, unless LPAROS_ACCEL overrides it: what [`choose_accel`]
/// acts on (`Auto` means a KVM probe boot).
pub fn effective_choice(choice: AccelChoice) -> Result<AccelChoice> {
    match std::env::var("LPAROS_ACCEL") {
        Ok(v) if !v.is_empty() => v.parse().context("LPAROS_ACCEL"),
        _ => Ok(choice),
    }
}

/// Boot `kernel` once under KVM to see whether it reaches ready. The answer
/// is remembered for the life of this process.
pub fn probe_kvm(kernel: &Path) -> AccelDecision {
    static PROBE: OnceLock<AccelDecision> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if let Err(e) = kvm_device_usable() {
                return AccelDecision { accel: Accel::Tcg, reason: format!("KVM unavailable ({e})") };
            }
            let mut spec = GuestSpec::new("kvm-probe", kernel, Accel::Kvm);
            spec.cmdline = "quiet exit_when_ready".into();
            let result = Guest::spawn(&spec, false).and_then(|mut g| {
                g.wait_event(names::READY, Duration::from_secs(10))?;
                match g.wait_exit(Duration::from_secs(5))? {
                    GuestExit::Code(0) => Ok(()),
                    other => Err(anyhow!("probe guest ended with {other:?}: {}", g.stderr())),
                }
            });
            match result {
                Ok(()) => AccelDecision { accel: Accel::Kvm, reason: "KVM probe boot reached ready".into() },
                Err(e) => {
                    let why = format!("{e:#}");
                    let first = why.lines().next().unwrap_or("unknown");
                    let detail = match first.split_once("QEMU stopped the guest: ") {
                        Some((_, fatal)) => fatal.to_string(),
                        None => first.to_string(),
                    };
                    AccelDecision { accel: Accel::Tcg, reason: format!("KVM is present but cannot run lparos here ({detail})") }
                }
            }
        })
        .clone()
}

/// The production kernel image: `LPAROS_KERNEL`, else the release build in
/// the workspace's target directory.
pub fn default_kernel() -> PathBuf {
    image_path("LPAROS_KERNEL", "lparos")
}

/// The test image (the kernel built with feature `test-services`, which
/// adds the behaviours tests, demos and benchmarks drive):
/// `LPAROS_TEST_KERNEL`, else `lparos-test` beside the production image.
pub fn test_kernel() -> PathBuf {
    image_path("LPAROS_TEST_KERNEL", "lparos-test")
}

/// `$var` if set, else `target/release/<file>` of this workspace.
fn image_path(var: &str, file: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => p.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release").join(file),
    }
}

/// Whether a QEMU binary is on PATH.
pub fn qemu_installed() -> bool {
    Command::new(QEMU).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_mapping() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(GuestExit::from_status(st(1)), GuestExit::Code(0));
        assert_eq!(GuestExit::from_status(st(7)), GuestExit::Code(3));
        assert_eq!(GuestExit::from_status(st(0)), GuestExit::PoweredOff);
        assert_eq!(GuestExit::from_status(st(2)), GuestExit::QemuError(2));
        assert_eq!(GuestExit::from_status(ExitStatus::from_raw(9)), GuestExit::Signal(9));
    }

    #[test]
    fn accel_choice_parsing() {
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Force(Accel::Kvm));
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert!("xen".parse::<AccelChoice>().is_err());
        assert_eq!("".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert_eq!(AccelChoice::from_name(""), None);
        for name in ["auto", "kvm", "tcg"] {
            assert_eq!(AccelChoice::from_name(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn command_line_has_devices() {
        let mut spec = GuestSpec::new("g1", Path::new("/k"), Accel::Tcg);
        spec.disks.push(Disk { path: "/d.img".into(), format: "raw" });
        spec.nics.push(Nic { mac: "52:54:00:00:00:01".into(), local: "/l".into(), remote: "/r".into() });
        let a = spec.args().join(" ");
        assert!(a.contains("-M q35,accel=tcg"));
        assert!(a.contains("virtio-blk-pci,drive=disk0"));
        assert!(a.contains("local.path=/l,remote.type=unix,remote.path=/r"));
        assert!(a.contains("mac=52:54:00:00:00:01"));
    }
}
