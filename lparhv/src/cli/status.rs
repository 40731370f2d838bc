//! `lparhv status`: the daemon's [`StatusView`] rendered as the operator's
//! table (states in words: `running`, `frozen`, `shut off`,
//! `crashed (signal 9)`, ...) or, with `--json`, as the view itself
//! (docs/lparhv.md, "The CLI"). A new section of the status is a field of
//! the view plus a few lines in [`render_text`].

use lparhv::machine::qemu::GuestExit;
use lparhv::state::{PartitionStatusView, Runtime, StatusView};
use std::fmt::Write;

/// A partition's state in words.
pub fn state_words(runtime: &Runtime, frozen: bool) -> String {
    match runtime {
        Runtime::NotStarted => "not started".into(),
        Runtime::Running { .. } if frozen => "frozen".into(),
        Runtime::Running { .. } => "running".into(),
        Runtime::Exited { exit: Some(exit), .. } => exit_words(*exit),
        Runtime::Exited { exit: None, .. } => "shut off (exit status unknown)".into(),
        Runtime::FailedToStart { error } => format!("failed to start: {error}"),
    }
}

/// How a guest ended, in words (guest exit codes: docs/events.md).
fn exit_words(exit: GuestExit) -> String {
    match exit {
        GuestExit::PoweredOff | GuestExit::Code(0) => "shut off".into(),
        GuestExit::Code(2) => "crashed (guest panic)".into(),
        GuestExit::Code(3) => "crashed (CPU exception)".into(),
        GuestExit::Code(code) => format!("failed (guest exit code {code})"),
        GuestExit::Signal(signal) => format!("crashed (signal {signal})"),
        GuestExit::QemuError(status) => format!("crashed (QEMU exit status {status})"),
    }
}

/// The QEMU column: the state, with the pid while it runs.
fn qemu_column(p: &PartitionStatusView) -> String {
    let mut text = state_words(&p.runtime, p.frozen);
    if let Runtime::Running { pid } = p.runtime {
        let _ = write!(text, ", pid {pid}");
    }
    if p.recovering {
        text.push_str(" (owner recovery)");
    }
    text
}

/// The status as the table `lparhv status` prints.
pub fn render_text(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "system {} (owner {}, state {}), {} grants", s.system, s.owner, s.state_dir.display(), s.grants);
    let _ = writeln!(out, "cpu shares: {}", s.cpu_control);
    let _ = writeln!(out, "{:<12} {:>3} {:>4} {:<8} {:<28} {:>8}  qemu", "partition", "id", "gen", "role", "channel", "mappings");
    for p in &s.partitions {
        let _ = writeln!(
            out,
            "{:<12} {:>3} {:>4} {:<8} {:<28} {:>8}  {}",
            p.name,
            p.id,
            p.generation,
            p.role,
            p.channel,
            p.mappings,
            qemu_column(p)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(exit: Option<GuestExit>) -> Runtime {
        Runtime::Exited { how: "any".into(), exit }
    }

    #[test]
    fn states_are_words() {
        assert_eq!(state_words(&Runtime::Running { pid: 4242 }, false), "running");
        assert_eq!(state_words(&Runtime::Running { pid: 4242 }, true), "frozen");
        assert_eq!(state_words(&exited(Some(GuestExit::Signal(9))), false), "crashed (signal 9)");
        assert_eq!(state_words(&exited(Some(GuestExit::PoweredOff)), false), "shut off");
        assert_eq!(state_words(&exited(Some(GuestExit::Code(0))), false), "shut off");
        assert_eq!(state_words(&exited(Some(GuestExit::Code(2))), false), "crashed (guest panic)");
        assert_eq!(state_words(&exited(Some(GuestExit::Code(1))), false), "failed (guest exit code 1)");
        assert_eq!(state_words(&exited(Some(GuestExit::QemuError(1))), false), "crashed (QEMU exit status 1)");
        assert_eq!(state_words(&exited(None), false), "shut off (exit status unknown)");
        assert_eq!(state_words(&Runtime::NotStarted, false), "not started");
        assert_eq!(state_words(&Runtime::FailedToStart { error: "no image".into() }, false), "failed to start: no image");
    }

    #[test]
    fn table_has_no_debug_text() {
        let p = |name: &str, runtime: Runtime, frozen: bool| PartitionStatusView {
            name: name.into(),
            id: 1,
            generation: 1,
            role: "client".into(),
            recovering: false,
            channel: "no session".into(),
            socket: "/s".into(),
            runtime,
            mappings: 0,
            frozen,
        };
        let view = StatusView {
            system: "sys".into(),
            state_dir: "/st".into(),
            owner: "hv".into(),
            host_session: 1,
            grants: 0,
            table_revision: 0,
            partitions: vec![
                p("a", Runtime::Running { pid: 4242 }, false),
                p("b", exited(Some(GuestExit::Signal(9))), false),
                p("c", Runtime::Running { pid: 7 }, true),
            ],
            cpu_control: "none".into(),
        };
        let text = render_text(&view);
        assert!(text.contains("running, pid 4242"), "{text}");
        assert!(text.contains("crashed (signal 9)"), "{text}");
        assert!(text.contains("frozen, pid 7"), "{text}");
        for debug in ["Running {", "Exited {", "Signal(", "Some("] {
            assert!(!text.contains(debug), "debug text {debug:?} in\n{text}");
        }
    }
}
