//! Helpers of the end-to-end tests (tests/grant_e2e.rs) and nothing else:
//! a managed system in a scratch state directory run by the real daemon,
//! console files read as event streams, and a raw guest (the real
//! `hypercall-client` state machine on a host socket) for partitions that
//! need no QEMU; a raw guest can see lparhv go away and connect again.

#![allow(dead_code)]

use hypercall_client::hypercall_abi::{Cookie, Event as HcEvent, Name};
use hypercall_client::{CallError, Client, Handle, Placement, Reply};
use lparhv::config::SystemConfig;
use lparhv::daemon::Daemon;
use lparhv::machine::detached::{console_path, kill_all_recorded};
use lparhv::machine::qemu::{self, Accel, AccelChoice};
use lparhv::owner::OsCookieSource;
use lparhv::state::lock;
use lparhv::state::{hcall_socket_path, Shared};
use proto::event::{parse as parse_event, Event};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn kernel() -> PathBuf {
    let k = qemu::test_kernel();
    assert!(k.is_file(), "kernel image {} missing: run ./run.sh build", k.display());
    k
}

pub fn accel() -> Accel {
    let d = qemu::choose_accel(AccelChoice::Auto, &kernel()).expect("accelerator");
    eprintln!("accelerator: {} ({})", d.accel, d.reason);
    d.accel
}

/// One `[[partition]]`: name, extra command line, owned regions (name, size).
pub struct Part<'a> {
    pub name: &'a str,
    pub cmdline: &'a str,
    pub memory: &'a [(&'a str, &'a str)],
}

/// Writes a config for `parts` (every partition: `hcall=on hcall_name=`)
/// with state in `/tmp/ge-<tag>-<pid>` (short: unix socket paths), the
/// owner `hv` with `regions`, and `share` pairs. Returns (config path,
/// state dir).
pub fn write_config(tag: &str, regions: &[(&str, &str)], parts: &[Part<'_>], share: &[(&str, &[&str])]) -> (PathBuf, PathBuf) {
    let state = PathBuf::from(format!("/tmp/ge-{tag}-{}", std::process::id()));
    let _ = kill_all_recorded(&state);
    let _ = std::fs::remove_dir_all(&state);
    let mut t = format!(
        "[system]\nname = \"{tag}\"\nstate_dir = \"{}\"\ngrace_ms = 2000\naccel = \"auto\"\n\n[owner]\nname = \"hv\"\nmemory = [\n",
        state.display()
    );
    for (n, s) in regions {
        t.push_str(&format!("  {{ name = \"{n}\", size = \"{s}\" }},\n"));
    }
    t.push_str("]\n");
    for p in parts {
        t.push_str(&format!(
            "\n[[partition]]\nname = \"{}\"\nmemory_mib = 32\nimage = \"{}\"\ncmdline = \"hcall=on hcall_name={} {}\"\n",
            p.name,
            kernel().display(),
            p.name,
            p.cmdline
        ));
        if !p.memory.is_empty() {
            let m: Vec<String> = p.memory.iter().map(|(n, s)| format!("{{ name = \"{n}\", size = \"{s}\" }}")).collect();
            t.push_str(&format!("memory = [ {} ]\n", m.join(", ")));
        }
    }
    t.push_str("\n[authorizations]\nshare = [\n");
    for (from, to) in share {
        let to: Vec<String> = to.iter().map(|s| format!("\"{s}\"")).collect();
        t.push_str(&format!("  {{ from = \"{from}\", to = [{}] }},\n", to.join(", ")));
    }
    t.push_str("]\n");
    let path = PathBuf::from(format!("/tmp/ge-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, t).unwrap();
    (path, state)
}

/// The real daemon in this process, with its partitions under QEMU
/// (detached, as `lparhv up` runs them). Dropping it stops everything.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub daemon: Option<Daemon>,
    pub config: SystemConfig,
    pub config_path: PathBuf,
}

impl InProcess {
    pub fn start(config_path: &Path, qemu_parts: &[&str], accel: Accel) -> InProcess {
        let config = SystemConfig::load(config_path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut daemon = rt.block_on(Daemon::start(&config, Box::new(OsCookieSource))).unwrap();
        let names: Vec<String> = qemu_parts.iter().map(|s| s.to_string()).collect();
        daemon.start_named(accel, false, &names).unwrap();
        InProcess { rt, daemon: Some(daemon), config, config_path: config_path.to_path_buf() }
    }

    pub fn system(&self) -> Shared {
        self.daemon.as_ref().unwrap().system().clone()
    }

    pub fn console(&self, name: &str) -> Console {
        Console::new(&console_path(&self.config.state_dir, name), name)
    }

    pub fn raw(&self, name: &str) -> RawGuest {
        RawGuest::connect(&hcall_socket_path(&self.config.state_dir, name), name)
    }

    pub fn grant(&self, resource: &str, to: &str, offset: Option<u64>, length: Option<u64>) -> String {
        lock(&self.system()).owner_grant(resource, to, offset, length).unwrap_or_else(|e| panic!("grant {resource} to {to}: {e}")).cookie
    }

    pub fn status(&self) -> lparhv::state::StatusView {
        lock(&self.system()).status()
    }

    /// The cookie of the grant of `resource` to `client`.
    pub fn resources_cookie(&self, resource: &str, client: &str) -> String {
        let sys = self.system();
        let s = lock(&sys);
        let r = s.resources().into_iter().find(|r| r.name == resource).expect("resource");
        r.grants.iter().find(|g| g.client == client).expect("grant").cookie.clone()
    }

    /// The table's own invariant check, and no grant left.
    pub fn assert_clean(&self) {
        let sys = self.system();
        let s = lock(&sys);
        s.table().audit().unwrap_or_else(|e| panic!("audit: {e:?}"));
        let left: Vec<String> = s.resources().iter().flat_map(|r| r.grants.iter().map(|g| format!("{g:?}"))).collect();
        assert!(left.is_empty(), "grants left: {left:#?}");
        for r in s.resources() {
            assert_eq!(r.state, "NotSharable", "{r:?}");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.stop());
        }
        kill_all_recorded(&self.config.state_dir);
        let _ = std::fs::remove_dir_all(&self.config.state_dir);
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A partition's console file read as a stream of event lines.
pub struct Console {
    path: PathBuf,
    name: String,
    offset: usize,
    pub seen: Vec<String>,
}

impl Console {
    pub fn new(path: &Path, name: &str) -> Console {
        Console { path: path.to_path_buf(), name: name.into(), offset: 0, seen: Vec::new() }
    }

    /// Skips everything written so far.
    pub fn skip_to_end(&mut self) {
        self.offset = std::fs::read(&self.path).map(|b| b.len()).unwrap_or(0);
    }

    fn next_line(&mut self) -> Option<String> {
        let bytes = std::fs::read(&self.path).ok()?;
        let rest = bytes.get(self.offset..)?;
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..nl]).trim_end().to_string();
        self.offset += nl + 1;
        self.seen.push(line.clone());
        Some(line)
    }

    /// The next event for which `want` is true, within `timeout`. A guest
    /// panic or exception fails at once.
    pub fn wait(&mut self, timeout: Duration, mut want: impl FnMut(&Event) -> bool) -> Result<(Event, Instant), String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.next_line() {
                if let Some(ev) = parse_event(&line) {
                    if ev.name == "panic" || ev.name == "exception" {
                        return Err(format!("{}: guest failed: {line}\n{}", self.name, self.tail()));
                    }
                    if want(&ev) {
                        return Ok((ev, Instant::now()));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: no such event within {timeout:?}\n{}", self.name, self.tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_name(&mut self, name: &str, timeout: Duration) -> Event {
        self.wait(timeout, |e| e.name == name).unwrap_or_else(|e| panic!("waiting for {name}: {e}")).0
    }

    pub fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(25);
        self.seen[start..].iter().map(|l| format!("  | {l}\n")).collect()
    }
}

/// lparhv closed a raw guest's channel (it stopped or was killed).
#[derive(Debug)]
pub struct ChannelClosed;

/// A guest without QEMU: `hypercall-client` over the partition's channel
/// socket, pumped by the test thread.
pub struct RawGuest {
    stream: UnixStream,
    pub client: Client,
    pub events: Vec<(HcEvent, Instant)>,
}

impl RawGuest {
    pub fn connect(path: &Path, name: &str) -> RawGuest {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let nonce = getrandom_u64();
        let mut g = RawGuest { stream, client: Client::new(nonce, Some(Name::new(name).unwrap())), events: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !g.client.is_up() {
            assert!(Instant::now() < deadline, "raw guest {name}: no session");
            g.pump();
        }
        g
    }

    /// Writes what the client queued, reads what arrived (≤ 5 ms wait).
    pub fn pump(&mut self) {
        self.try_pump().expect("raw guest: lparhv closed the channel");
    }

    /// As [`RawGuest::pump`], but a closed channel is an answer, not a
    /// failure. Bytes lparhv wrote before it closed are all delivered first.
    pub fn try_pump(&mut self) -> Result<(), ChannelClosed> {
        let out = self.client.take_outgoing();
        if !out.is_empty() {
            match self.stream.write_all(&out) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {
                    return Err(ChannelClosed)
                }
                Err(e) => panic!("raw guest: {e}"),
            }
        }
        let mut buf = [0u8; 16384];
        let closed = match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                self.client.on_bytes(&buf[..n]);
                false
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("raw guest: {e}"),
        };
        while let Some(e) = self.client.next_event() {
            self.events.push((e, Instant::now()));
        }
        if closed {
            Err(ChannelClosed)
        } else {
            Ok(())
        }
    }

    /// The call's answer, or `ChannelClosed` if lparhv closed the channel
    /// before answering (the call then stays outstanding in the client).
    pub fn wait_while_open(&mut self, h: Handle) -> Result<Result<Reply, CallError>, ChannelClosed> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.client.poll(h) {
                return Ok(r);
            }
            assert!(Instant::now() < deadline, "raw guest: no answer within 10 s");
            self.try_pump()?;
        }
    }

    /// Connects the same client (same nonce, same records) to the channel
    /// socket again, e.g. of a restarted lparhv, retrying for `timeout`. Its
    /// next call meets H_STATE and the client says HELLO again by itself.
    pub fn reconnect(&mut self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "reconnect {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        self.stream = stream;
    }

    pub fn wait(&mut self, h: Handle) -> Result<Reply, CallError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.client.poll(h) {
                return r;
            }
            assert!(Instant::now() < deadline, "raw guest: no answer within 10 s");
            self.pump();
        }
    }

    pub fn accept(&mut self, cookie: Cookie) -> Result<Reply, CallError> {
        let h = self.client.accept(cookie, Placement::Anywhere);
        self.wait(h)
    }

    /// The first event for which `want` is true (already received or
    /// arriving within `timeout`), removed from the list.
    pub fn wait_event(&mut self, timeout: Duration, mut want: impl FnMut(&HcEvent) -> bool) -> Option<(HcEvent, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|(e, _)| want(e)) {
                return Some(self.events.remove(i));
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump();
        }
    }
}

fn getrandom_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b) | 1
}

pub fn field<'a>(e: &'a Event, key: &str) -> &'a str {
    e.get(key).unwrap_or_else(|| panic!("event {} has no {key}", e.name))
}
