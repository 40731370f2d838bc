//! Directly mapped grants (docs/slots.md): when this partition accepts a
//! memory grant, lparhv hot-plugs an `ivshmem-plain` device (1af4:1110)
//! whose BAR2 is the granted region. This module maps BAR2 at the grant's
//! logical address, so CPU loads and stores reach the owner's bytes, and
//! unmaps it before the device is ejected.
//!
//! `ivshmem_test=write:<seed>`: accept the first grant, wait for its device,
//! map it, store the grant pattern (`proto::pattern::fill_pattern`) with CPU
//! stores, read it back: `@ev ivshmem_write ok=.. laddr=.. len=.. bdf=..`.
//! `ivshmem_test=read:<seed>`: same, then load until the whole range holds
//! the pattern (another partition writes it; at most 30 s):
//! `@ev ivshmem_read ok=.. mismatches=..`. Both keep running afterwards.

use crate::devices;
use crate::executor::{timeout, Reactor};
use crate::hal::hw::MmioWindow;
use crate::hal::mm;
use crate::hcall;
use crate::runtime::console::{ev, event};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use drivers::pci::{Bdf, DeviceFunction};
use hypercall_client::hypercall_abi::Event;
use hypercall_client::Placement;
use proto::pattern::fill_pattern;
use spin::Mutex;

pub const VENDOR: u16 = 0x1af4;
pub const DEVICE: u16 = 0x1110;
const WAIT_NS: u64 = 30_000_000_000;

/// Live windows: (function, logical address, length).
static MAPPED: Mutex<Vec<(DeviceFunction, u64, u64)>> = Mutex::new(Vec::new());

/// Called by the hot-plug driver before it ejects `df`: drop the CPU
/// mapping of its BAR2, so nothing can touch the region after the eject.
pub fn release(df: DeviceFunction) -> bool {
    let mut m = MAPPED.lock();
    let Some(i) = m.iter().position(|(d, _, _)| *d == df) else { return false };
    let (_, laddr, len) = m.remove(i);
    mm::unmap_window(laddr, len);
    event(ev("ivshmem_unmapped").field("bdf", Bdf(df)).field("laddr", format_args!("{laddr:x}")));
    true
}

/// Waits for an ivshmem function with a BAR2 of `len` bytes that is not
/// mapped yet, and maps it at `laddr`.
async fn map_device(laddr: u64, len: u64, reactor: &Arc<Reactor>) -> Result<(DeviceFunction, MmioWindow), String> {
    let deadline = reactor.now_ns() + WAIT_NS;
    loop {
        for (df, bar) in devices::find(VENDOR, DEVICE, 2) {
            let Some((phys, size)) = bar else { continue };
            if size != len || MAPPED.lock().iter().any(|(d, _, _)| *d == df) {
                continue;
            }
            let window = mm::map_window(laddr, phys, len).map_err(String::from)?;
            MAPPED.lock().push((df, laddr, len));
            event(
                ev("ivshmem_mapped")
                    .field("bdf", Bdf(df))
                    .field("laddr", format_args!("{laddr:x}"))
                    .field("bar2", format_args!("{phys:x}"))
                    .field("len", len),
            );
            return Ok((df, window));
        }
        if reactor.now_ns() > deadline {
            return Err("no ivshmem device for the grant within 30 s".into());
        }
        reactor.sleep_ms(20).await;
    }
}

fn mismatches(window: &MmioWindow, seed: u64) -> u64 {
    let len = window.len();
    let mut want = [0u8; 4096];
    let mut bad = 0;
    let mut off = 0;
    while off < len {
        let n = (len - off).min(4096) as usize;
        fill_pattern(seed, off, &mut want[..n]);
        for (i, w) in want[..n].iter().enumerate() {
            if window.read_u8(off + i as u64) != Some(*w) {
                bad += 1;
            }
        }
        off += n as u64;
    }
    bad
}

pub async fn test(spec: String, reactor: Arc<Reactor>) -> bool {
    let (write, seed) = match spec.split_once(':') {
        Some(("write", s)) => (true, s.parse::<u64>().unwrap_or(1)),
        Some(("read", s)) => (false, s.parse::<u64>().unwrap_or(1)),
        _ => {
            event(ev("ivshmem_error").field("error", format!("bad ivshmem_test={spec}")));
            return false;
        }
    };
    let name = if write { "ivshmem_write" } else { "ivshmem_read" };
    let fail = |e: String| {
        event(ev(name).field("ok", 0).field("error", e));
        false
    };
    let sub = match hcall::subscribe() {
        Ok(s) => s,
        Err(e) => return fail(format!("{e}")),
    };
    let deadline = reactor.now_ns() + WAIT_NS;
    let cookie = loop {
        match timeout(&reactor, deadline, sub.next()).await {
            Err(_) => return fail("no GRANTED event within 30 s".into()),
            Ok(Event::Granted { cookie, .. }) => break cookie,
            Ok(_) => {}
        }
    };
    let mapping = match hcall::accept(cookie, Placement::Anywhere).await {
        Ok(m) => m,
        Err(e) => return fail(format!("accept: {e}")),
    };
    let (laddr, len) = (mapping.laddr, mapping.len);
    let (df, window) = match map_device(laddr, len, &reactor).await {
        Ok(mapped) => mapped,
        Err(e) => return fail(e),
    };
    let bad = if write {
        let mut buf = [0u8; 4096];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(4096) as usize;
            fill_pattern(seed, off, &mut buf[..n]);
            for (i, b) in buf[..n].iter().enumerate() {
                window.write_u8(off + i as u64, *b);
            }
            off += n as u64;
        }
        mismatches(&window, seed)
    } else {
        loop {
            let bad = mismatches(&window, seed);
            if bad == 0 || reactor.now_ns() > deadline {
                break bad;
            }
            reactor.sleep_ms(50).await;
        }
    };
    event(
        ev(name)
            .field("ok", (bad == 0) as u8)
            .field("mismatches", bad)
            .field("laddr", format_args!("{laddr:x}"))
            .field("len", len)
            .field("bdf", Bdf(df)),
    );
    bad == 0
}
