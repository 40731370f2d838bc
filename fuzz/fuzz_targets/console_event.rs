//! Fuzz target: console event lines (`@ev name t=.. key=value`), parsed by
//! lparhv from every guest console with `proto::event::parse` (the shared
//! format crate, docs/events.md).
//!
//! Checks: parsing any line, and reading any of its fields as a number,
//! never panics; a parsed event, written again
//! with the `EventLine` builder the kernel prints with, parses back to the
//! same event;
//! and an event built from fuzz-chosen name, time and fields (arbitrary)
//! survives format then parse unchanged whenever its names are valid.
#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use proto::event::{parse as parse_event, Event, EventLine};

fn format(event: &Event) -> String {
    event.fields.iter().fold(EventLine::new(&event.name, event.t_us), |line, (k, v)| line.field(k, v)).finish()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
}

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Some(event) = parse_event(line) {
            for (key, _) in &event.fields {
                let _ = event.u64(key);
            }
            let again = parse_event(&format(&event));
            assert_eq!(again.as_ref(), Some(&event), "format(parse(line)) does not parse back");
        }
    }

    let mut u = Unstructured::new(data);
    let (Ok(name), Ok(t_us), Ok(fields)) = (String::arbitrary(&mut u), u64::arbitrary(&mut u), Vec::<(String, String)>::arbitrary(&mut u))
    else {
        return;
    };
    if !is_name(&name) || !fields.iter().all(|(k, _)| is_name(k)) {
        return;
    }
    let event = Event { name, t_us, fields };
    let line = format(&event);
    assert_eq!(parse_event(&line), Some(event), "parse(format(event)) != event for {line:?}");
});
