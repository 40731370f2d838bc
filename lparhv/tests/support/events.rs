//! Guest events in the integration tests (docs/events.md, docs/testing.md):
//! every wait is an [`EventStream`] wait, so a guest `panic`/`exception`
//! ends it at once; a failed wait panics naming the event and showing the
//! console's last lines. Typed field access is [`field`], [`num`] and [`int`], whose
//! failures name the event and the key.

use lparhv::machine::console::{Console, EventStream};
use lparhv::machine::detached::follow_console;
use lparhv::{parse_event, Event};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Field `key` of event `e`; panics naming both when it is missing.
pub fn field<'a>(e: &'a Event, key: &str) -> &'a str {
    e.get(key).unwrap_or_else(|| panic!("event `{}` has no field `{key}`: {e:?}", e.name))
}

/// Field `key` of event `e` as an unsigned number; panics naming both when
/// it is missing or not one.
pub fn num(e: &Event, key: &str) -> u64 {
    parsed(e, key)
}

/// Field `key` of event `e` as a signed number (return codes); panics
/// naming both when it is missing or not one.
pub fn int(e: &Event, key: &str) -> i64 {
    parsed(e, key)
}

fn parsed<T: FromStr>(e: &Event, key: &str) -> T
where
    T::Err: std::fmt::Display,
{
    let text = field(e, key);
    text.parse().unwrap_or_else(|err| panic!("event `{}`: field `{key}`={text:?} is not a {}: {err}", e.name, std::any::type_name::<T>()))
}

/// Every event named `name` on `console` so far, with its arrival time.
pub fn events_named(console: &Console, name: &str) -> Vec<(Event, Instant)> {
    console.lines().iter().filter_map(|l| parse_event(&l.text).filter(|e| e.name == name).map(|e| (e, l.at))).collect()
}

/// The `nth` (0-based) event named `name` that `want` accepts, counted from
/// the console's first line, waiting up to `timeout` for it.
pub fn nth_event(console: &Console, name: &str, nth: usize, timeout: Duration, mut want: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + timeout;
    let mut stream = console.events();
    for _ in 0..nth {
        wait_until(&mut stream, &format!("{name} #{nth}"), timeout, deadline, |e| e.name == name && want(e));
    }
    wait_until(&mut stream, &format!("{name} #{nth}"), timeout, deadline, |e| e.name == name && want(e)).0
}

fn wait_until(
    stream: &mut EventStream,
    what: &str,
    timeout: Duration,
    deadline: Instant,
    want: impl FnMut(&Event) -> bool,
) -> (Event, Instant) {
    stream
        .next_where_until(deadline, want)
        .unwrap_or_else(|err| panic!("waiting for event {what} (limit {timeout:?}): {err}; console tail:\n{}", stream.console().tail(30)))
}

/// A named guest's event stream whose waits panic with the context a test
/// failure needs. Built on a console someone fills (a [`lparhv::machine::qemu::Guest`],
/// the daemon's slot control) or on a console file it follows itself.
pub struct Events {
    name: String,
    stream: EventStream,
    /// Set on drop: stops the thread that follows a console file.
    follower: Option<Arc<AtomicBool>>,
}

impl Events {
    /// The events of `console` from its first line on.
    pub fn new(name: &str, console: &Console) -> Events {
        Events { name: name.into(), stream: console.events(), follower: None }
    }

    /// The events of a console file (a detached QEMU's), from its start.
    pub fn of_file(name: &str, path: &Path) -> Events {
        Events::follow(name, path, Some(0))
    }

    /// The events written to a console file from now on.
    pub fn of_file_from_end(name: &str, path: &Path) -> Events {
        let end = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Events::follow(name, path, Some(end))
    }

    fn follow(name: &str, path: &Path, start: Option<u64>) -> Events {
        let console = Console::new();
        let sink = console.clone();
        let stop = Arc::new(AtomicBool::new(false));
        follow_console(name, path.to_path_buf(), start, stop.clone(), move |line| sink.push(line.to_string()));
        Events { name: name.into(), stream: console.events(), follower: Some(stop) }
    }

    /// The next event that `want` accepts within `timeout`, and when its
    /// line arrived; the error names the guest and shows its console.
    pub fn wait(&mut self, timeout: Duration, want: impl FnMut(&Event) -> bool) -> Result<(Event, Instant), String> {
        self.stream.next_where(timeout, want).map_err(|err| format!("{}: {err} (limit {timeout:?})\n{}", self.name, self.tail()))
    }

    /// The next event named `name` within `timeout`, or a panic naming it.
    pub fn wait_name(&mut self, name: &str, timeout: Duration) -> Event {
        self.wait_name_at(name, timeout).0
    }

    /// As [`Events::wait_name`], with the time the event's line arrived.
    pub fn wait_name_at(&mut self, name: &str, timeout: Duration) -> (Event, Instant) {
        self.wait(timeout, |e| e.name == name).unwrap_or_else(|e| panic!("waiting for event {name}: {e}"))
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stream.console().lines().into_iter().map(|l| l.text).collect()
    }

    /// The console's last lines, indented, for failure messages.
    pub fn tail(&self) -> String {
        self.stream.console().tail(25)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(stop) = &self.follower {
            stop.store(true, Ordering::Relaxed);
        }
    }
}
