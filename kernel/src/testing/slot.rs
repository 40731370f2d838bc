//! `slot_test=<steps>`: partition commands issued by the guest itself, one
//! after the other, for the slot tests (docs/slots.md). Steps are separated
//! by commas:
//!
//! - `deact:<partition>`, `act:<partition>`
//! - `add:<slot>` — ADD_PCI to this partition; H_IN_USE is retried every
//!   200 ms for up to 30 s (the slot is still enabled elsewhere)
//! - `rem:<slot>:<partition>`
//! - `share:<percent>[:<partition>]` — SET_CPU_SHARE
//!
//! Each step prints `@ev slot_cmd op=<op> arg=<text> rc=<code> ms=<elapsed>`
//! (rc 0 = H_SUCCESS); a step that cannot be parsed prints `rc=bad`. After
//! the last step: `@ev slot_test done=1 steps=<n>`. The guest keeps
//! running afterwards (this is not a test that ends the guest).

use crate::executor::Reactor;
use crate::hcall;
use crate::runtime::console::{ev, event};
use crate::testing::spec::parse_step;
use alloc::string::String;
use alloc::sync::Arc;
use hypercall_client::hypercall_abi::ReturnCode;

const SESSION_WAIT_NS: u64 = 30_000_000_000;
const IN_USE_RETRY_NS: u64 = 30_000_000_000;
/// REM_PCI may wait for an eject plus lparhv's fence: allow it longer than
/// the default call limit.
const LONG_CALL_NS: u64 = 60_000_000_000;

pub async fn run(script: String, reactor: Arc<Reactor>) {
    if !hcall::wait_up(reactor.now_ns() + SESSION_WAIT_NS).await {
        event(ev("slot_test").field("done", 0).field("error", "no hypercall session"));
        return;
    }
    let mut steps = 0u32;
    for step in script.split(',').filter(|s| !s.is_empty()) {
        steps += 1;
        let Some((op, call)) = parse_step(step) else {
            event(ev("slot_cmd").field("op", "?").field("arg", step).field("rc", "bad"));
            continue;
        };
        let t0 = reactor.now_ns();
        let retry_until = t0 + IN_USE_RETRY_NS;
        let rc = loop {
            let rc = match hcall::call_within(call.clone(), LONG_CALL_NS).await {
                Ok(_) => 0,
                Err(e) => e.rc(),
            };
            if op == "add_pci" && rc == ReturnCode::InUse.raw() && reactor.now_ns() < retry_until {
                reactor.sleep_ms(200).await;
                continue;
            }
            break rc;
        };
        let ms = (reactor.now_ns() - t0) / 1_000_000;
        event(ev("slot_cmd").field("op", op).field("arg", step).field("rc", rc).field("ms", ms));
    }
    event(ev("slot_test").field("done", 1).field("steps", steps));
}
