//! A guest's console as the host sees it: every line with the time it
//! arrived ([`Console`], filled by whoever reads QEMU's serial output: a
//! pipe for [`super::qemu::Guest`], a file for a detached partition), and
//! [`EventStream`], the one way to wait for the guest's event lines
//! (`docs/events.md`). Each stream has its own position, so any number of
//! waiters can follow one console.

use crate::{names, parse_event, Event};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LockResult, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One console line with the time it arrived at the host.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    pub at: Instant,
    pub text: String,
}

/// A console's lines so far, shared by its writer and its readers.
#[derive(Clone, Default)]
pub struct Console {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    lines: Mutex<Vec<ConsoleLine>>,
    arrived: Condvar,
    /// The writer is gone (QEMU's output ended).
    closed: AtomicBool,
}

/// Why a wait ended without the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitError {
    TimedOut,
    /// The console ended (QEMU exited) before the event came.
    Closed,
    /// The guest reported a `panic` or `exception` (the whole line).
    GuestFailed(String),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut => write!(f, "timed out"),
            WaitError::Closed => write!(f, "console closed"),
            WaitError::GuestFailed(line) => write!(f, "guest failed: {line}"),
        }
    }
}

impl std::error::Error for WaitError {}

impl Console {
    pub fn new() -> Console {
        Console::default()
    }

    fn state(&self) -> MutexGuard<'_, Vec<ConsoleLine>> {
        self.shared.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lines themselves, for a caller that indexes them on its own
    /// (prefer [`Console::events`]).
    pub fn lock(&self) -> LockResult<MutexGuard<'_, Vec<ConsoleLine>>> {
        self.shared.lines.lock()
    }

    /// Whether `other` is this very console (not a copy of its lines).
    pub fn same(&self, other: &Console) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Appends a line (arrived now) and wakes the waiters.
    pub fn push(&self, text: String) {
        self.state().push(ConsoleLine { at: Instant::now(), text });
        self.shared.arrived.notify_all();
    }

    /// The writer is gone: waits past the last line end with
    /// [`WaitError::Closed`].
    pub fn close(&self) {
        // Under the lock, so a waiter cannot miss it between its check and
        // its wait.
        let _state = self.state();
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.arrived.notify_all();
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.state().clone()
    }

    /// How many lines arrived so far.
    pub fn len(&self) -> usize {
        self.state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last `n` lines, indented, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let state = self.state();
        let start = state.len().saturating_sub(n);
        state[start..].iter().map(|l| format!("  | {}\n", l.text)).collect()
    }

    /// A stream of the event lines from the first line on.
    pub fn events(&self) -> EventStream {
        EventStream { console: self.clone(), next: 0 }
    }

    /// A stream of the event lines that arrive from now on.
    pub fn events_from_now(&self) -> EventStream {
        EventStream { console: self.clone(), next: self.len() }
    }
}

/// A reader's position in a [`Console`]: each wait consumes the lines up
/// to and including the event it returns.
pub struct EventStream {
    console: Console,
    next: usize,
}

impl EventStream {
    /// Waits up to `timeout` for the next event line that `want` accepts,
    /// skipping the other lines. A `panic` or `exception` event ends the
    /// wait: the guest cannot send what was waited for.
    pub fn next_where(&mut self, timeout: Duration, want: impl FnMut(&Event) -> bool) -> Result<(Event, Instant), WaitError> {
        self.next_where_until(Instant::now() + timeout, want)
    }

    /// As [`EventStream::next_where`], but waits until `deadline`: for a
    /// caller that shares one deadline among several waits.
    pub fn next_where_until(&mut self, deadline: Instant, mut want: impl FnMut(&Event) -> bool) -> Result<(Event, Instant), WaitError> {
        let mut state = self.console.state();
        loop {
            while let Some(line) = state.get(self.next) {
                self.next += 1;
                let Some(event) = parse_event(&line.text) else { continue };
                if event.name == names::PANIC || event.name == names::EXCEPTION {
                    return Err(WaitError::GuestFailed(line.text.clone()));
                }
                if want(&event) {
                    return Ok((event, line.at));
                }
            }
            if self.console.shared.closed.load(Ordering::SeqCst) {
                return Err(WaitError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitError::TimedOut);
            }
            state = self.console.shared.arrived.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits for the next event line named `name`.
    pub fn next_named(&mut self, name: &str, timeout: Duration) -> Result<(Event, Instant), WaitError> {
        self.next_where(timeout, |e| e.name == name)
    }

    /// Waits until `deadline` for the next event line named `name`.
    pub fn next_named_until(&mut self, name: &str, deadline: Instant) -> Result<(Event, Instant), WaitError> {
        self.next_where_until(deadline, |e| e.name == name)
    }

    /// The console this stream reads.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Index of the next line this stream will read.
    pub fn position(&self) -> usize {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_skip_other_lines_and_keep_their_position() {
        let c = Console::new();
        let mut s = c.events();
        c.push("booting".into());
        c.push("@ev tick t=1 n=1".into());
        c.push("@ev ready t=1".into());
        c.push("@ev tick t=1 n=2".into());
        let (e, _) = s.next_named("ready", Duration::ZERO).unwrap();
        assert_eq!(e.name, "ready");
        assert_eq!(s.position(), 3);
        let (e, _) = s.next_named("tick", Duration::ZERO).unwrap();
        assert_eq!(e.get("n"), Some("2"), "tick n=1 was before ready: consumed");
        assert_eq!(s.next_named("tick", Duration::from_millis(20)), Err(WaitError::TimedOut));
        let mut late = c.events_from_now();
        c.push("@ev tick t=1 n=3".into());
        assert_eq!(late.next_named("tick", Duration::ZERO).unwrap().0.get("n"), Some("3"));
    }

    #[test]
    fn a_line_from_another_thread_wakes_the_waiter() {
        let c = Console::new();
        let mut s = c.events();
        let writer = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.push("@ev ready t=1".into());
        });
        let started = Instant::now();
        assert!(s.next_named("ready", Duration::from_secs(10)).is_ok());
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn a_deadline_wait_ends_at_the_deadline_and_finds_what_is_there() {
        let c = Console::new();
        let mut s = c.events();
        let started = Instant::now();
        assert_eq!(s.next_named_until("ready", started + Duration::from_millis(50)), Err(WaitError::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(50));
        c.push("@ev ready t=1".into());
        assert!(s.next_named_until("ready", started).is_ok(), "a line already there is found after the deadline");
    }

    #[test]
    fn panic_and_close_end_the_wait() {
        let c = Console::new();
        let mut s = c.events();
        c.push("@ev panic t=1 msg=oops".into());
        assert!(matches!(s.next_named("ready", Duration::ZERO), Err(WaitError::GuestFailed(l)) if l.contains("oops")));
        c.close();
        assert_eq!(s.next_named("ready", Duration::from_secs(10)), Err(WaitError::Closed));
    }
}
