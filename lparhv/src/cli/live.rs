//! `lparhv console <partition>` and `lparhv events --follow`: a partition's
//! serial console and the daemon's event log as they happen
//! (docs/lparhv.md, "Live console and events").
//!
//! The console is the file QEMU appends the partition's serial output to
//! (lparhv::machine::detached): this command follows it read-only, from its
//! current end (or `--from-start`), while the daemon keeps its own reader.
//! Events come over the control socket's `follow_events` subscription.

use super::interrupted;
use super::system::Target;
use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use lparhv::control::{self, ControlRequest, FollowEnd};
use lparhv::machine::detached::console_path;
use lparhv::state::{LogEntry, StatusView};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ctrl-], the detach key (as in telnet and `virsh console`).
const DETACH: u8 = 0x1d;
/// Ctrl-C and Ctrl-D also detach when the terminal is in raw mode.
const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const POLL: Duration = Duration::from_millis(50);

#[derive(Args)]
pub struct ConsoleArgs {
    /// The partition (its name in the config).
    partition: String,
    /// Print the console log from its beginning first (default: only what
    /// the guest writes from now on).
    #[arg(long)]
    from_start: bool,
}

/// One event-log line, as `lparhv events` prints it.
pub fn print_log_entry(e: &LogEntry) {
    println!("{:>6} {} {:<14} {:<10} {}", e.seq, e.time_ms, e.kind, e.partition.as_deref().unwrap_or_default(), e.detail);
}

/// `events --follow`: the last `backlog` events, then each new one.
pub fn follow_events(socket: &Path, backlog: usize, json: bool) -> Result<()> {
    let mut out = std::io::stdout();
    let end = control::follow(
        socket,
        &ControlRequest::FollowEvents { backlog: Some(backlog) },
        |v| {
            if json {
                println!("{v}");
            } else {
                match serde_json::from_value::<LogEntry>(v.clone()) {
                    Ok(e) => print_log_entry(&e),
                    Err(_) => println!("{v}"),
                }
            }
            let _ = out.flush();
        },
        || !interrupted(),
    )?;
    match end {
        FollowEnd::Stopped => Ok(()),
        FollowEnd::Closed => {
            eprintln!("lparhv: the daemon closed the connection (it stopped)");
            Ok(())
        }
        FollowEnd::Dropped(notice) => bail!("the daemon dropped this follower: {notice}"),
    }
}

/// Where the partition's console file is; the partition must exist (the
/// daemon's status says, or, without a daemon, its console file).
fn console_file(target: &Target, partition: &str) -> Result<PathBuf> {
    let state_dir = target.state_dir()?.context("which system? pass --config <file.toml> or --control <socket>")?;
    let path = console_path(&state_dir, partition);
    match control::call(&target.socket()?, &ControlRequest::Status) {
        Ok(v) => {
            let status: StatusView = serde_json::from_value(v)?;
            if !status.partitions.iter().any(|p| p.name == partition) {
                let names: Vec<&str> = status.partitions.iter().map(|p| p.name.as_str()).collect();
                bail!("no partition {partition:?} (the system has: {})", names.join(", "));
            }
        }
        Err(e) if !path.is_file() => bail!("no console log {} and no daemon to ask: {e:#}", path.display()),
        Err(_) => {}
    }
    Ok(path)
}

/// `console`: copies the console file to stdout as it grows, until the
/// user detaches (Ctrl-], Ctrl-C, Ctrl-D on a terminal; SIGINT otherwise)
/// or stdout is closed.
pub fn console(ctx: &Ctx, args: ConsoleArgs) -> Result<()> {
    let path = console_file(&ctx.target, &args.partition)?;
    // Where to start is fixed before the banner: what the guest prints
    // after the banner is shown.
    let mut offset = if args.from_start { 0 } else { std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) };
    let detach = Arc::new(AtomicBool::new(false));
    let _raw = if std::io::stdin().is_terminal() {
        eprintln!("lparhv: console of {} (read-only); Ctrl-] detaches", args.partition);
        let guard = RawInput::enter()?;
        watch_detach_keys(detach.clone());
        Some(guard)
    } else {
        eprintln!("lparhv: console of {} (read-only); Ctrl-C detaches", args.partition);
        None
    };
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    while !detach.load(Ordering::Relaxed) && !interrupted() {
        let copied = copy_new(&path, &mut offset, &mut buf, &mut out);
        match copied {
            Ok(0) => std::thread::sleep(POLL),
            Ok(_) => {}
            // stdout closed (a pipe's reader went away): detach.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    eprintln!("\r\nlparhv: detached from {}", args.partition);
    Ok(())
}

/// Copies what was appended to `path` since `offset` to `out`; returns
/// how many bytes. A file that shrank (a new log) is read from its start;
/// a missing one (the partition never ran) counts as empty.
fn copy_new(path: &Path, offset: &mut u64, buf: &mut [u8], out: &mut impl Write) -> std::io::Result<usize> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < *offset {
        *offset = 0;
    }
    if len == *offset {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(*offset))?;
    let n = file.read(buf)?;
    out.write_all(&buf[..n])?;
    out.flush()?;
    *offset += n as u64;
    Ok(n)
}

/// Sets `detach` when the user types a detach key (or stdin ends).
fn watch_detach_keys(detach: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new().name("console-keys".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        loop {
            match stdin.read(&mut byte) {
                Ok(1) if ![DETACH, CTRL_C, CTRL_D].contains(&byte[0]) => continue,
                _ => break,
            }
        }
        detach.store(true, Ordering::Relaxed);
    });
}

/// The terminal with line editing, echo and signal keys off, so Ctrl-]
/// arrives as a byte; the old settings come back on drop.
struct RawInput {
    saved: rustix::termios::Termios,
}

impl RawInput {
    fn enter() -> Result<RawInput> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions, SpecialCodeIndex};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
        let mut raw = saved.clone();
        raw.local_modes.remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG);
        raw.special_codes[SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        tcsetattr(&stdin, OptionalActions::Now, &raw).context("setting the terminal to raw input")?;
        Ok(RawInput { saved })
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_what_was_appended_and_restarts_on_a_new_file() {
        let dir = std::env::temp_dir().join(format!("lparhv-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.log");
        let mut buf = vec![0u8; 4];
        let mut out = Vec::new();
        let mut offset = 0;
        assert_eq!(copy_new(&path, &mut offset, &mut buf, &mut out).unwrap(), 0, "no file yet");
        std::fs::write(&path, b"boot\n").unwrap();
        while copy_new(&path, &mut offset, &mut buf, &mut out).unwrap() > 0 {}
        assert_eq!(out, b"boot\n", "read in pieces of the buffer's size");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"ready\n").unwrap();
        while copy_new(&path, &mut offset, &mut buf, &mut out).unwrap() > 0 {}
        assert_eq!(out, b"boot\nready\n");
        std::fs::write(&path, b"new\n").unwrap();
        while copy_new(&path, &mut offset, &mut buf, &mut out).unwrap() > 0 {}
        assert_eq!(out, b"boot\nready\nnew\n", "a shorter file is a new log");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
