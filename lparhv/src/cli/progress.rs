//! Progress for a person at a terminal: lines saying what a long step is
//! doing (the KVM probe, partitions booting under `lparhv up`). When
//! stderr is not a terminal (scripts, CI logs) nothing extra is printed.

use super::status::state_words;
use lparhv::state::{lock, Runtime, Shared};
use std::io::IsTerminal;
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

/// On a terminal, reports in the background each partition of `system`
/// as it becomes ready (its hypercall channel has a session: the guest
/// booted and said HELLO) or ends, and every few seconds which are still
/// booting; it stops when none is left or after two minutes.
pub fn watch_boot(system: Shared) {
    if !on_terminal() {
        return;
    }
    let spawned = std::thread::Builder::new().name("lparhv-boot-progress".into()).spawn(move || {
        let start = Instant::now();
        let mut last_line = Instant::now();
        let mut done: Vec<String> = Vec::new();
        while start.elapsed() < BOOT_WATCH && !super::interrupted() {
            let (status, with_session) = {
                let sys = lock(&system);
                let status = sys.status();
                let with_session: Vec<bool> =
                    status.partitions.iter().map(|p| sys.partition_id(&p.name).is_some_and(|id| sys.has_session(id))).collect();
                (status, with_session)
            };
            let mut booting = Vec::new();
            for (p, session) in status.partitions.iter().zip(with_session) {
                if done.contains(&p.name) {
                    continue;
                }
                let ended = matches!(p.runtime, Runtime::Exited { .. } | Runtime::FailedToStart { .. });
                if session || ended {
                    let what = if ended { state_words(&p.runtime, p.frozen) } else { "ready (hypercall session up)".into() };
                    eprintln!("lparhv: {} {what} after {:.1} s", p.name, start.elapsed().as_secs_f64());
                    done.push(p.name.clone());
                    last_line = Instant::now();
                } else if matches!(p.runtime, Runtime::Running { .. }) {
                    booting.push(p.name.as_str());
                }
            }
            if booting.is_empty() {
                return;
            }
            if last_line.elapsed() >= REMIND_EVERY {
                eprintln!("lparhv: still booting after {:.0} s: {}", start.elapsed().as_secs_f64(), booting.join(", "));
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    if let Err(e) = spawned {
        eprintln!("lparhv: no boot progress ({e})");
    }
}
