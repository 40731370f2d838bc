//! `lparhv demo`: scenarios that show lparos partitions working together.
//!
//! `lan`: partitions on one virtual LAN. Partition 1 serves UDP and TCP
//! echo; every other partition finds it (ARP), exchanges UDP datagrams and
//! a TCP stream with it, and checks every byte. Prints what happened,
//! measured.

use super::{interrupted, scratch, Ctx};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lparhv::machine::qemu::{Guest, GuestExit, GuestSpec, Nic};
use lparhv::machine::vswitch::VSwitch;
use lparhv::{keys, names};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Subcommand)]
enum Which {
    /// The main demo: an active/standby cluster fails over when the active
    /// partition dies (heartbeats, deact, rem_pci, add_pci, act).
    Failover(super::failover::FailoverArgs),
    /// Partitions exchanging UDP and TCP traffic on a virtual LAN.
    Lan {
        /// Number of partitions (at least 2).
        #[arg(long, default_value_t = 2)]
        guests: usize,
        /// UDP datagrams (and KiB of TCP) per client.
        #[arg(long, default_value_t = 50)]
        count: u32,
    },
    /// Registered and unregistered partitions through a planned VIOS
    /// restart (PAUSE/RESUME) and a crash (freeze).
    Vios {
        /// Registered partitions (one unregistered is added).
        #[arg(long, default_value_t = 3)]
        guests: usize,
        /// Seconds the crashed VIOS takes to come back.
        #[arg(long, default_value_t = 3)]
        down: u64,
    },
}

pub fn run(ctx: &Ctx, args: DemoArgs) -> Result<()> {
    match args.which.unwrap_or_else(|| Which::Failover(Default::default())) {
        Which::Failover(args) => super::failover::run(ctx, &args),
        Which::Lan { guests, count } => lan(ctx, guests, count),
        Which::Vios { guests, down } => super::storage::demo(ctx, guests, down),
    }
}

fn lan(ctx: &Ctx, guests: usize, count: u32) -> Result<()> {
    if !(2..=8).contains(&guests) {
        bail!("--guests must be between 2 and 8");
    }
    let d = ctx.accel()?;
    let scratch = scratch("demo-lan")?;
    let ports: Vec<_> = (1..=guests).map(|i| scratch.path().join(format!("lpar{i}.sock"))).collect();
    let switch = VSwitch::start(&scratch.path().join("switch.sock"), ports.clone())?;
    println!("== demo lan: {guests} partitions on one virtual LAN, accelerator {}", d.accel);
    let started = Instant::now();
    let mut parts = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let n = i + 1;
        let mut spec = GuestSpec::new(&format!("lpar{n}"), &ctx.kernel, d.accel);
        let role = if n == 1 { "net_role=server".to_string() } else { format!("net_role=client peer=10.0.0.1 count={count}") };
        spec.cmdline = format!("quiet ip=10.0.0.{n}/24 {role}");
        spec.nics.push(Nic { mac: format!("52:54:00:00:00:{n:02x}"), local: port.clone(), remote: switch.path().into() });
        parts.push(Guest::spawn(&spec, false)?);
    }
    for g in parts.iter_mut() {
        let (ev, at) = g.wait_event(names::NET_UP, Duration::from_secs(30))?;
        println!(
            "  {:<6} up at {:>7.1} ms  ip={} mac={}",
            g.name,
            (at - started).as_secs_f64() * 1e3,
            ev.get("ip").unwrap_or("?"),
            ev.get("mac").unwrap_or("?")
        );
    }
    let mut all_ok = true;
    for g in parts.iter_mut().skip(1) {
        if interrupted() {
            bail!("stopped by Ctrl-C");
        }
        let (udp, _) = g.wait_event(names::NET_UDP, Duration::from_secs(60)).context("UDP exchange")?;
        let (tcp, _) = g.wait_event(names::NET_TCP, Duration::from_secs(60)).context("TCP exchange")?;
        let exit = g.wait_exit(Duration::from_secs(10))?;
        let ok = udp.get(keys::OK) == Some("1") && tcp.get(keys::OK) == Some("1") && exit == GuestExit::Code(0);
        all_ok &= ok;
        println!(
            "  {:<6} -> lpar1  UDP {}/{} echoed (rtt p50 {} us, max {} us)  TCP {} bytes echoed and checked in {} us  {}",
            g.name,
            udp.get("received").unwrap_or("?"),
            udp.get("sent").unwrap_or("?"),
            udp.get("rtt_us_p50").unwrap_or("?"),
            udp.get("rtt_us_max").unwrap_or("?"),
            tcp.get("bytes").unwrap_or("?"),
            tcp.get("elapsed_us").unwrap_or("?"),
            if ok { "OK" } else { "FAILED" }
        );
    }
    let server_alive = parts[0].is_running();
    drop(parts);
    println!(
        "  switch: {} frames forwarded, {} flooded, {} dropped, {} bytes; server still running: {}",
        switch.stats.forwarded.load(Ordering::Relaxed),
        switch.stats.flooded.load(Ordering::Relaxed),
        switch.stats.dropped.load(Ordering::Relaxed),
        switch.stats.bytes.load(Ordering::Relaxed),
        server_alive
    );
    println!(
        "  total {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        if all_ok { "all exchanges verified" } else { "SOME EXCHANGES FAILED" }
    );
    if !all_ok {
        bail!("demo lan failed");
    }
    Ok(())
}
