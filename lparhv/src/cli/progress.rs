//! Progress for a person at a terminal: lines saying what a long step is
//! doing (the KVM probe, partitions booting under `lparhv up` until their
//! console shows the guest's `ready` event). When
//! stderr is not a terminal (scripts, CI logs) nothing extra is printed.

use super::status::state_words;
use lparhv::machine::detached::console_path;
use lparhv::parse_event;
use lparhv::state::{lock, Runtime, Shared};
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether a person is watching stderr.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// `lparhv: <text>` on stderr, only on a terminal.
pub fn line(text: &str) {
    if on_terminal() {
        eprintln!("lparhv: {text}");
    }
}

/// How long `up` reports on booting partitions before it stops waiting.
const BOOT_WATCH: Duration = Duration::from_secs(120);
/// The longest silence while partitions still boot.
const REMIND_EVERY: Duration = Duration::from_secs(5);

/// Where each partition's console log ends before `up` starts it, so only
/// this boot's lines count.
pub struct ConsoleMarks(Vec<(String, PathBuf, u64)>);

impl ConsoleMarks {
    pub fn take(state_dir: &Path, names: &[&str]) -> ConsoleMarks {
        ConsoleMarks(
            names
                .iter()
                .map(|name| {
                    let path = console_path(state_dir, name);
                    let end = std::fs::metadata(&path).map_or(0, |m| m.len());
                    (name.to_string(), path, end)
                })
                .collect(),
        )
    }
}

/// Whether the console log at `path`, read from byte `from`, has the
/// guest's `ready` event (docs/events.md).
fn said_ready(path: &Path, from: u64) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return false;
    }
    BufReader::new(file).lines().map_while(Result::ok).any(|line| parse_event(&line).is_some_and(|e| e.name == "ready"))
}

/// On a terminal, reports in the background each partition of `system`
/// as it becomes ready (its console shows the guest's `ready` event) or
/// ends, and every few seconds which are still booting; it stops when none
/// is left or after two minutes.
pub fn watch_boot(system: Shared, marks: ConsoleMarks) {
    if !on_terminal() {
        return;
    }
    let spawned = std::thread::Builder::new().name("lparhv-boot-progress".into()).spawn(move || {
        let start = Instant::now();
        let mut last_line = Instant::now();
        let mut booting = marks.0;
        while !booting.is_empty() && start.elapsed() < BOOT_WATCH && !super::interrupted() {
            let status = lock(&system).status();
            booting.retain(|(name, console, from)| {
                let Some(p) = status.partitions.iter().find(|p| &p.name == name) else { return false };
                // The console first: a guest that got ready and ended
                // between two looks was ready.
                let what = match &p.runtime {
                    Runtime::Running { .. } | Runtime::Exited { .. } if said_ready(console, *from) => "ready".to_string(),
                    Runtime::Exited { .. } | Runtime::FailedToStart { .. } => state_words(&p.runtime, p.frozen),
                    _ => return true,
                };
                eprintln!("lparhv: {name} {what} after {:.1} s", start.elapsed().as_secs_f64());
                last_line = Instant::now();
                false
            });
            if !booting.is_empty() && last_line.elapsed() >= REMIND_EVERY {
                let names: Vec<&str> = booting.iter().map(|b| b.0.as_str()).collect();
                eprintln!("lparhv: still booting after {:.0} s: {}", start.elapsed().as_secs_f64(), names.join(", "));
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    if let Err(e) = spawned {
        eprintln!("lparhv: no boot progress ({e})");
    }
}
