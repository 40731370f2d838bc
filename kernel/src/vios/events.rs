//! The storage-server event task (`vios=<server>`, needs `hcall=on`): the
//! thin async glue around `crate::vios_initiator`.
//!
//! * At boot it registers, by REGISTER_EVENTS, every event of `<server>`
//!   (failure, reboot, power-down, special exception) unless
//!   `vios_register=0`, so lparhv freezes this partition instead of letting
//!   its I/O fail.
//! * PAUSE / DISCONNECT / CONNECT / RESUME drive the initiator: new rootvg
//!   I/O waits at the [`gate`](enter), PAUSE_COMPLETE goes out once nothing
//!   is in flight, RESUME opens the gate; a missed CONNECT or RESUME shuts
//!   the rootvg users down in order (flush, volume offline, `@ev
//!   vios_offline`). `vios_ignore_pause=1` (tests) ignores the handshake.
//! * THAWED: compares the host's freeze with the gap its own ticker saw,
//!   excludes the freeze from reactor time when the clock jumped (KVM),
//!   asks the rootvg users to re-verify the metadata, prints `@ev thawed`.

use crate::executor::{timeout, Reactor};
use crate::hcall;
use crate::runtime::console::{ev, event};
use crate::vios_initiator::{self, Action, ClockView, GapTracker, Initiator, Input, Limits};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::task::{Poll, Waker};
use hypercall_client::hypercall_abi::{Event, EventMask, Name};
use hypercall_client::{Call, Reply};
use proto::event::{keys, names};
use spin::Mutex;

/// Period of the freeze ticker (what a clock gap is measured against).
const TICK_MS: u64 = 20;
/// How often the task looks at the in-flight count while quiescing.
const QUIESCE_POLL_NS: u64 = 2_000_000;
/// Time limit of the orderly shutdown's last flush.
const SHUTDOWN_FLUSH_NS: u64 = 2_000_000_000;

// ------------------------------------------------------------------ gate

struct GateState {
    hold: bool,
    offline: bool,
    in_flight: usize,
    reverify: bool,
    waiters: Vec<Waker>,
}

static GATE: Mutex<GateState> = Mutex::new(GateState { hold: false, offline: false, in_flight: 0, reverify: false, waiters: Vec::new() });

/// The server behind the rootvg is offline for good (orderly shutdown).
#[derive(Debug)]
pub struct Offline;

/// One request (or one durable record) in flight through the gate.
pub struct Ticket(());

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = GATE.lock();
        g.in_flight = g.in_flight.saturating_sub(1);
    }
}

/// Wait until I/O to the server may go, and count it in flight until the
/// ticket is dropped. Fails once the server was declared offline.
pub async fn enter() -> Result<Ticket, Offline> {
    core::future::poll_fn(|cx| {
        let mut g = GATE.lock();
        if g.offline {
            return Poll::Ready(Err(Offline));
        }
        if g.hold {
            g.waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        g.in_flight += 1;
        Poll::Ready(Ok(Ticket(())))
    })
    .await
}

/// Whether the metadata must be re-verified (after a thaw); clears it.
pub fn take_reverify() -> bool {
    core::mem::take(&mut GATE.lock().reverify)
}

fn in_flight() -> usize {
    GATE.lock().in_flight
}

fn set_gate(hold: bool, offline: bool) {
    let waiters = {
        let mut g = GATE.lock();
        g.hold = hold;
        g.offline |= offline;
        core::mem::take(&mut g.waiters)
    };
    for w in waiters {
        w.wake();
    }
}

// ------------------------------------------------------------------ task

/// Settings from the kernel command line.
pub struct Settings {
    pub server: Name,
    pub register: bool,
    pub ignore_pause: bool,
    pub limits: Limits,
}

static GAPS: Mutex<GapTracker> = Mutex::new(GapTracker::new());

/// The freeze ticker: records the clock (not reactor time) every TICK_MS.
async fn ticker(reactor: Arc<Reactor>) {
    loop {
        GAPS.lock().tick(crate::hal::time::now_ns());
        reactor.sleep_ms(TICK_MS).await;
    }
}

pub async fn run(s: Settings, reactor: Arc<Reactor>) {
    let sub = match hcall::subscribe() {
        Ok(sub) => sub,
        Err(e) => {
            event(ev("vios_error").field("server", s.server).field(keys::ERROR, alloc::format!("{e:?} (vios= needs hcall=on)")));
            return;
        }
    };
    reactor.spawn("vios_ticker", ticker(reactor.clone()));
    if s.register {
        register(&s.server, &reactor).await;
    } else {
        event(ev(names::VIOS_REGISTERED).field("server", s.server).field(keys::OK, 0).field("mask", 0).field("why", "vios_register=0"));
    }
    let mut init = Initiator::new(s.limits);
    let mut held_since = 0u64;
    loop {
        let now = reactor.now_ns();
        let wake_at = match init.phase() {
            vios_initiator::Phase::Quiescing { .. } => now + QUIESCE_POLL_NS,
            _ => init.deadline_ns().unwrap_or(now + 1_000_000_000),
        };
        let got = timeout(&reactor, wake_at, sub.next()).await.ok();
        let now = reactor.now_ns();
        let action = match got {
            Some(e) => match handshake_input(&e, &s.server) {
                Some(input) if s.ignore_pause => {
                    event(ev("vios_pause_ignored").field("server", s.server).field("input", alloc::format!("{input:?}")));
                    Action::Nothing
                }
                Some(input) => init.on_event(input, now, in_flight()),
                None => {
                    on_other_event(&e, &s.server, &reactor);
                    Action::Nothing
                }
            },
            None => match init.on_idle(in_flight()) {
                Action::Nothing => init.tick(now),
                a => a,
            },
        };
        match action {
            Action::Nothing | Action::Ignored => {}
            Action::Hold => {
                held_since = now;
                set_gate(true, false);
                event(ev("vios_pause").field("server", s.server).field("in_flight", in_flight()));
            }
            Action::PauseComplete { pause_id } => {
                if !GATE.lock().hold {
                    held_since = now;
                    set_gate(true, false);
                }
                let r = hcall::call_within(Call::PauseComplete { server: s.server, pause_id }, 2_000_000_000).await;
                event(
                    ev("vios_pause_complete")
                        .field("server", s.server)
                        .field("pause_id", pause_id)
                        .field("quiesce_us", (reactor.now_ns().saturating_sub(held_since)) / 1000)
                        .field(keys::OK, r.is_ok() as u8),
                );
            }
            Action::Release => {
                set_gate(false, false);
                event(ev(names::VIOS_RESUME).field("server", s.server).field(keys::HELD_MS, now.saturating_sub(held_since) / 1_000_000));
            }
            Action::Shutdown(reason) => {
                shutdown(&s.server, reason.as_str(), &reactor).await;
                return;
            }
        }
    }
}

async fn register(server: &Name, reactor: &Arc<Reactor>) {
    if !hcall::wait_up(reactor.now_ns() + 20_000_000_000).await {
        event(ev(names::VIOS_REGISTERED).field("server", server).field(keys::OK, 0).field("why", "no hypercall session"));
        return;
    }
    match hcall::call(Call::RegisterEvents { server: *server, mask: EventMask::ALL }).await {
        Ok(Reply::Registered(mask)) => {
            event(ev(names::VIOS_REGISTERED).field("server", server).field(keys::OK, 1).field("mask", mask.bits()))
        }
        other => event(ev(names::VIOS_REGISTERED).field("server", server).field(keys::OK, 0).field("why", alloc::format!("{other:?}"))),
    }
}

fn handshake_input(e: &Event, server: &Name) -> Option<Input> {
    match *e {
        Event::Pause { server: s, pause_id, deadline_ms } if s == *server => Some(Input::Pause { pause_id, deadline_ms }),
        Event::Disconnect { server: s, pause_id } if s == *server => Some(Input::Disconnect { pause_id }),
        Event::Connect { server: s, pause_id } if s == *server => Some(Input::Connect { pause_id }),
        Event::Resume { server: s, pause_id } if s == *server => Some(Input::Resume { pause_id }),
        _ => None,
    }
}

fn on_other_event(e: &Event, server: &Name, reactor: &Arc<Reactor>) {
    if let Event::Thawed { server: s, duration_ms, frozen_at_ns, thawed_at_ns, .. } = *e {
        if s != *server {
            return;
        }
        let gap_ms = GAPS.lock().take(crate::hal::time::now_ns()) / 1_000_000;
        let (clock, shifted_ms) = match vios_initiator::assess_freeze(duration_ms, gap_ms, TICK_MS) {
            ClockView::Stopped => ("stopped", 0),
            ClockView::Jumped { shift_ms } => ("jumped", reactor.exclude_ns(shift_ms.saturating_mul(1_000_000)) / 1_000_000),
        };
        GATE.lock().reverify = true;
        event(
            ev(names::THAWED)
                .field("server", s)
                .field(keys::FROZEN_MS, duration_ms)
                .field("host_span_ms", thawed_at_ns.saturating_sub(frozen_at_ns) / 1_000_000)
                .field(keys::GUEST_GAP_MS, gap_ms)
                .field(keys::CLOCK, clock)
                .field("shifted_ms", shifted_ms)
                .field("excluded_total_ms", reactor.excluded_ns() / 1_000_000),
        );
    }
}

/// Orderly shutdown of what depends on the server: close the gate for
/// good (the writer stops at its next record), flush what can be flushed
/// within a bounded time, and say so.
async fn shutdown(server: &Name, reason: &str, reactor: &Arc<Reactor>) {
    // The gate is closed already (held since PAUSE): nothing new goes out.
    let flushed = match crate::storage::rootvg_svc::rootvg() {
        Some(r) => matches!(timeout(reactor, reactor.now_ns() + SHUTDOWN_FLUSH_NS, r.dev.flush()).await, Ok(Ok(()))),
        None => false,
    };
    event(
        ev("vios_offline").field("server", server).field("reason", reason).field("flushed", flushed as u8).field("in_flight", in_flight()),
    );
    // Volume offline: the users (the writer) stop at the gate for good.
    set_gate(true, true);
}
