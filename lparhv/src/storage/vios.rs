//! The storage server ("VIOS"): supervised `qemu-storage-daemon` processes
//! that export LUNs (raw disk images) over NBD on a unix socket, the QEMU
//! options with which partitions attach those LUNs as virtio-blk, and the
//! host-side check of the guest's checked-write log. See docs/vios.md.
//!
//! # The listening socket belongs to lparhv
//!
//! lparhv binds and listens on the NBD unix socket itself and hands the
//! listening descriptor to each daemon it starts (`--nbd-server
//! addr.type=fd`). The socket therefore exists without interruption across
//! a restart or a crash of the daemon: a partition's NBD client that
//! reconnects while no daemon runs is queued in the listen backlog instead
//! of being refused, and its handshake completes the moment the next daemon
//! starts accepting. (Had the daemon owned the socket, each refused attempt
//! would cost the client its reconnect back-off of 1 s, 2 s, 4 s …)
//!
//! # Lifetime
//!
//! A daemon gets `PR_SET_PDEATHSIG(SIGKILL)` (like QEMU in `qemu.rs`), so it
//! never outlives lparhv; dropping a [`Vios`] kills its daemon and removes
//! the socket. Every wait is bounded.

pub use crate::machine::nbd::{ErrorPolicy, NbdDisk};
use anyhow::{anyhow, bail, Context, Result};
use proto::writer_log::{self, LogCheck, RECORD_SIZE};
use rootvg::host::FileDevice;
use rootvg::{BlockDevice, VolumeGroup};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The storage daemon binary (Debian package qemu-system-x86).
pub const STORAGE_DAEMON: &str = "qemu-storage-daemon";

/// How long a graceful stop may take before the daemon is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a started daemon may take to serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One LUN: an export name and the raw image behind it.
#[derive(Clone, Debug)]
pub struct Lun {
    pub name: String,
    pub image: PathBuf,
}

impl Lun {
    pub fn new(name: &str, image: &Path) -> Lun {
        Lun { name: name.into(), image: image.into() }
    }
}

/// How a daemon stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself after SIGTERM (with this exit code, if any).
    Graceful(Option<i32>),
    /// It did not exit within the grace period and was killed.
    Killed,
    /// It had already exited.
    WasNotRunning,
}

/// Timings of a planned restart.
#[derive(Clone, Copy, Debug)]
pub struct RestartReport {
    pub stopped: Stopped,
    /// SIGTERM → process reaped.
    pub stop: Duration,
    /// Spawn → the socket answers with the NBD greeting.
    pub start: Duration,
    /// SIGTERM → serving again: the outage clients could see.
    pub outage: Duration,
}

/// A supervised storage server.
pub struct Vios {
    name: String,
    luns: Vec<Lun>,
    socket: PathBuf,
    listener: UnixListener,
    child: Option<Child>,
    /// Daemon error output (all incarnations).
    stderr: Arc<Mutex<Vec<String>>>,
    starts: u32,
}

impl Vios {
    /// Start a daemon named `name` exporting `luns` on `<dir>/<name>.nbd.sock`
    /// and wait until it serves.
    pub fn start(name: &str, luns: &[Lun], dir: &Path) -> Result<Vios> {
        if luns.is_empty() {
            bail!("VIOS {name}: no LUNs to export");
        }
        for l in luns {
            if l.name.is_empty() || !l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                bail!("VIOS {name}: LUN name {:?} must be non-empty [A-Za-z0-9._-]", l.name);
            }
            if l.image.to_string_lossy().contains(',') {
                bail!("VIOS {name}: image path {} contains a comma (QEMU option syntax)", l.image.display());
            }
            if !l.image.is_file() {
                bail!("VIOS {name}: LUN {} image {} not found", l.name, l.image.display());
            }
        }
        let socket = dir.join(format!("{name}.nbd.sock"));
        if socket.as_os_str().len() > 100 {
            bail!("VIOS {name}: socket path {} too long for a unix socket", socket.display());
        }
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        let mut v = Vios {
            name: name.into(),
            luns: luns.to_vec(),
            socket,
            listener,
            child: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
        };
        v.spawn_daemon()?;
        v.wait_serving(START_TIMEOUT)?;
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NBD socket partitions connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn luns(&self) -> &[Lun] {
        &self.luns
    }

    /// Process id of the current daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How many daemons this VIOS has started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The daemons' error output so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The daemon's command line.
    pub fn daemon_args(&self, listen_fd: i32) -> Vec<String> {
        let mut a = Vec::new();
        for (i, l) in self.luns.iter().enumerate() {
            a.push("--blockdev".into());
            a.push(format!("driver=file,filename={},node-name=lun{i},cache.direct=off", l.image.display()));
        }
        a.push("--nbd-server".into());
        a.push(format!("addr.type=fd,addr.str={listen_fd}"));
        for (i, l) in self.luns.iter().enumerate() {
            a.push("--export".into());
            a.push(format!("type=nbd,id=exp{i},node-name=lun{i},name={},writable=on", l.name));
        }
        a
    }

    fn spawn_daemon(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("VIOS {}: daemon already running (pid {:?})", self.name, self.pid());
        }
        let fd = self.listener.as_raw_fd();
        let mut cmd = Command::new(STORAGE_DAEMON);
        cmd.args(self.daemon_args(fd)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: runs in the forked child before exec and only calls prctl
        // and fcntl, both async-signal-safe. PDEATHSIG makes the kernel kill
        // the daemon if lparhv dies; clearing FD_CLOEXEC on the listening
        // socket (in the child only) lets the daemon inherit it under the
        // same number.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {STORAGE_DAEMON} (package qemu-system-x86: `./run.sh setup`)"))?;
        self.starts += 1;
        let tag = format!("[{} #{}] ", self.name, self.starts);
        if let Some(err) = child.stderr.take() {
            let sink = self.stderr.clone();
            std::thread::Builder::new().name(format!("{}-stderr", self.name)).spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = sink.lock() {
                        s.push(format!("{tag}{line}"));
                    }
                }
            })?;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether the daemon process is alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Whether the daemon is alive and the socket answers with the NBD
    /// greeting within `timeout`.
    pub fn is_serving(&mut self, timeout: Duration) -> bool {
        // Probing while no daemon runs would only leave a connection in the
        // backlog for the next daemon to trip over.
        self.is_running() && nbd_greets(&self.socket, timeout).is_ok()
    }

    /// Wait until [`is_serving`](Self::is_serving); fails (with the daemon's
    /// error output) if it exits or `timeout` passes first.
    pub fn wait_serving(&mut self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        loop {
            if !self.is_running() {
                bail!("VIOS {}: {STORAGE_DAEMON} is not running\n{}", self.name, self.stderr());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("VIOS {}: not serving after {timeout:?}\n{}", self.name, self.stderr());
            }
            if nbd_greets(&self.socket, left.min(Duration::from_secs(1))).is_ok() {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop the daemon: SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Result<Stopped> {
        let Some(mut child) = self.child.take() else { return Ok(Stopped::WasNotRunning) };
        if child.try_wait()?.is_some() {
            return Ok(Stopped::WasNotRunning);
        }
        // Our own unreaped child: its pid cannot have been reused. A child
        // that died in between is reaped below.
        let _ = crate::machine::process::Process::open(child.id()).and_then(|p| p.signal(rustix::process::Signal::TERM));
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Stopped::Graceful(status.code()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                return Ok(Stopped::Killed);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Start a daemon again (after [`stop`](Self::stop) or
    /// [`crash`](Self::crash)) on the same socket and wait until it serves.
    pub fn start_again(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.spawn_daemon()?;
        self.wait_serving(START_TIMEOUT)?;
        Ok(t0.elapsed())
    }

    /// Planned restart: graceful stop, start again, wait until serving.
    pub fn restart(&mut self) -> Result<RestartReport> {
        let t0 = Instant::now();
        let stopped = self.stop(STOP_GRACE)?;
        let stop = t0.elapsed();
        let start = self.start_again()?;
        Ok(RestartReport { stopped, stop, start, outage: t0.elapsed() })
    }

    /// Unplanned failure: SIGKILL the daemon (no chance to finish anything).
    /// The socket stays; bring the server back with
    /// [`start_again`](Self::start_again).
    pub fn crash(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("VIOS {}: no daemon running", self.name) };
        child.kill().ok();
        child.wait().with_context(|| format!("VIOS {}: reaping the killed daemon", self.name))?;
        Ok(())
    }
}

impl Vios {
    /// LUN `lun` of this server, as a disk a partition attaches through
    /// QEMU's NBD client.
    pub fn nbd_disk(&self, lun: &str, reconnect_delay: u32) -> NbdDisk {
        NbdDisk::new(self.socket(), lun, reconnect_delay)
    }
}

impl Drop for Vios {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// NBD "newstyle" greeting: `NBDMAGIC`, `IHAVEOPT`, 16-bit handshake flags.
const NBD_MAGIC: &[u8; 8] = b"NBDMAGIC";
const NBD_IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const NBD_OPT_ABORT: u32 = 2;

/// Connect to `socket`, read the NBD greeting, and end the session
/// politely (NBD_OPT_ABORT), all within `timeout`.
pub fn nbd_greets(socket: &Path, timeout: Duration) -> Result<()> {
    let s = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    let timeout = timeout.max(Duration::from_millis(1));
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut g = [0u8; 18];
    (&s).read_exact(&mut g).context("reading the NBD greeting")?;
    if &g[0..8] != NBD_MAGIC || &g[8..16] != NBD_IHAVEOPT {
        bail!("{}: not an NBD newstyle server (greeting {:02x?})", socket.display(), &g[..16]);
    }
    let mut bye = Vec::with_capacity(20);
    bye.extend_from_slice(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
    bye.extend_from_slice(NBD_IHAVEOPT);
    bye.extend_from_slice(&NBD_OPT_ABORT.to_be_bytes());
    bye.extend_from_slice(&0u32.to_be_bytes());
    let _ = (&s).write_all(&bye);
    Ok(())
}

/// Verify the `vios_test=writer` log on a LUN image: activate the rootvg
/// on `image` (host API), map LV `lv` through its extents, and check that
/// every one of the `acked` acknowledged records that the wrapping log can
/// still hold is intact.
pub fn verify_writer_log(image: &Path, lv: &str, seed: u64, acked: u64) -> Result<LogCheck> {
    let mut dev = FileDevice::open(image, false).map_err(|e| anyhow!("{e}"))?;
    let vg = VolumeGroup::activate(&mut dev).map_err(|e| anyhow!("activating the rootvg on {}: {e}", image.display()))?;
    let map = vg.lv(lv).ok_or_else(|| anyhow!("{}: no LV {lv:?}", image.display()))?;
    let blocks = map.size_bytes() / RECORD_SIZE as u64;
    let mut read_error = None;
    let check = writer_log::check_log(seed, acked, blocks, |b| {
        let mut rec = [0u8; RECORD_SIZE];
        let segs = map.map_bytes(b * RECORD_SIZE as u64, RECORD_SIZE as u64).ok()?;
        for s in segs {
            let at = s.offset as usize * 512;
            let part = rec.get_mut(at..at + s.sectors as usize * 512)?;
            if let Err(e) = dev.read_sectors(s.lba, part) {
                read_error.get_or_insert(format!("LV block {b}: {e}"));
                return None;
            }
        }
        Some(rec)
    });
    if let Some(e) = read_error {
        eprintln!("verify_writer_log: read error: {e}");
    }
    Ok(check)
}
