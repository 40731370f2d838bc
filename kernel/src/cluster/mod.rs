//! The clustering service: runs the `cluster-agent` state machine for this
//! partition, sends and receives heartbeats on the LAN, carries out the
//! agent's actions through hypercalls, and runs the failover service on the
//! shared single-port disk.
//!
//! Command line (docs/cluster.md): `cluster=active|standby`,
//! `cluster_peer_ip=A.B.C.D`, `cluster_peer=<partition name>`,
//! `cluster_slot=<n>`; needs `ip=` and `hcall=on`. With `service=kv` the
//! active partition runs the key-value service (`crate::kv`) on the shared
//! disk instead of the record writer below.
//!
//! The service: record `s` (s = 1, 2, ...) is sector `s` of the shared disk,
//! filled with the disk test pattern for seed [`SERVICE_SEED`]. On start it
//! finds the last record present and appends from there, one flushed record
//! at a time, so a partition that takes over continues where the failed one
//! stopped and the host can check that no acknowledged record was lost.
//! Each record is acknowledged (`service_ack seq=<s>`) once it is written
//! and flushed; records are written in order, so the highest ack printed is
//! the high-water mark: every record up to it is durable.

use crate::devices::{self, BlockDevice};
use crate::net::NetStack;
use crate::runtime::console::{self, ev};
use alloc::sync::Arc;
use alloc::vec;
use cluster_agent::{Action, Agent, Config, Notice, Role};
use drivers::pattern::{fill_sector, sector_matches, SECTOR};
use hypercall_client::hypercall_abi::ReturnCode;
use hypercall_client::Call;
use lparos_kernel::executor::{Reactor, TaskId};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

pub use lparos_kernel::cluster::args::{parse, ClusterArgs};

/// UDP port of the heartbeat.
pub const HEARTBEAT_PORT: u16 = 7100;
/// Seed of the service records.
pub const SERVICE_SEED: u64 = 0x5e41_71ce;
const TICK_MS: u64 = 100;
const MAGIC: &[u8; 4] = b"LPHB";

fn now_ms(reactor: &Reactor) -> u64 {
    reactor.now_ns() / 1_000_000
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Standby => "standby",
    }
}

/// Run the agent for as long as the partition lives.
pub async fn run(stack: Arc<NetStack>, reactor: Arc<Reactor>, args: ClusterArgs, kv: Option<crate::kv::KvArgs>) {
    let sock = match stack.add_udp(HEARTBEAT_PORT) {
        Ok(s) => s,
        Err(e) => {
            console::event(ev("cluster_error").field("error", alloc::format!("heartbeat socket: {e}")));
            return;
        }
    };
    let peer = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(args.peer_ip)), HEARTBEAT_PORT);
    let role = args.role.unwrap_or(if devices::first_blk().is_some() { Role::Active } else { Role::Standby });
    let mut agent = Agent::new(Config::default(), role, now_ms(&reactor));
    console::event(ev("cluster_start").field("role", role_name(role)).field("slot", args.slot));
    let mut service: Option<TaskId> = None;
    let mut pending = agent.start();
    let mut buf = [0u8; 64];
    loop {
        // Say why first, then carry out what the agent asked for, one
        // action at a time.
        report(&mut agent, args.slot);
        while !pending.is_empty() {
            let action = pending.remove(0);
            let ok = perform(action, &args, kv, &stack, sock, peer, &reactor, &mut service).await;
            if !matches!(action, Action::SendHeartbeat { .. }) {
                pending.extend(agent.action_done(now_ms(&reactor), action, ok));
                report(&mut agent, args.slot);
            }
        }
        // Heartbeats received since the last turn.
        let now = now_ms(&reactor);
        let received = stack.with(|_, sockets| {
            let s = sockets.get_mut::<udp::Socket>(sock);
            let mut roles = vec![];
            while let Ok((n, _)) = s.recv_slice(&mut buf) {
                if n >= 13 && &buf[..4] == MAGIC {
                    roles.push(if buf[4] == 1 { Role::Active } else { Role::Standby });
                }
            }
            roles
        });
        for role in received {
            agent.heartbeat_received(now, role);
        }
        pending.extend(agent.tick(now));
        if pending.is_empty() {
            reactor.sleep_ms(TICK_MS).await;
        }
    }
}

/// Print the agent's notices as event lines.
fn report(agent: &mut Agent, slot: u32) {
    for notice in agent.take_notices() {
        let line = match notice {
            Notice::OwnPauseDetected { gap_ms } => ev("cluster_notice").field("what", "own_pause").field("gap_ms", gap_ms),
            Notice::PeerFailed { silent_ms } => ev("cluster_notice").field("what", "peer_failed").field("silent_ms", silent_ms),
            Notice::TookOver => ev("cluster_active").field("slot", slot),
            Notice::DualActive => ev("cluster_notice").field("what", "dual_active"),
        };
        console::event(line);
    }
}

#[allow(clippy::too_many_arguments)]
async fn perform(
    action: Action,
    args: &ClusterArgs,
    kv: Option<crate::kv::KvArgs>,
    stack: &Arc<NetStack>,
    sock: smoltcp::iface::SocketHandle,
    peer: IpEndpoint,
    reactor: &Arc<Reactor>,
    service: &mut Option<TaskId>,
) -> bool {
    let call = match action {
        Action::SendHeartbeat { role, seq } => {
            let mut msg = [0u8; 13];
            msg[..4].copy_from_slice(MAGIC);
            msg[4] = (role == Role::Active) as u8;
            msg[5..13].copy_from_slice(&seq.to_le_bytes());
            return stack.with(|_, sockets| sockets.get_mut::<udp::Socket>(sock).send_slice(&msg, peer).is_ok());
        }
        Action::StartService => {
            if service.is_none() {
                *service = Some(match kv {
                    Some(kv) => {
                        let (stack, r) = (stack.clone(), reactor.clone());
                        reactor.spawn("kv", async move { crate::kv::serve(stack, r.clone(), service_disk(&r).await, kv).await })
                    }
                    None => reactor.spawn("cluster_service", service_task(reactor.clone())),
                });
            }
            return true;
        }
        Action::StopService => {
            if let Some(id) = service.take() {
                reactor.cancel(id);
            }
            return true;
        }
        Action::DeactPeer => Call::Deact { partition: args.peer },
        Action::ActPeer => Call::Act { partition: args.peer },
        Action::RemPciFromPeer => Call::RemPci { slot: args.slot, partition: args.peer },
        Action::AddPciToSelf => Call::AddPci { slot: args.slot },
        Action::SetCpuShare(percent) => Call::SetCpuShare { partition: None, percent },
    };
    let what = alloc::format!("{action:?}");
    let started = reactor.now_ns();
    let result = crate::hcall::call(call).await;
    let ms = (reactor.now_ns() - started) / 1_000_000;
    // Fencing a peer that is already down has done its job: a teardown of
    // something already torn down succeeds.
    let ok = match &result {
        Ok(_) => true,
        Err(e) => action == Action::DeactPeer && e.is(ReturnCode::NotActive),
    };
    let mut line = ev("cluster_action").field("action", &what).field("ok", ok as u8).field("ms", ms);
    if let Err(e) = &result {
        line = line.field("rc", e.rc());
    }
    console::event(line);
    ok
}

/// The shared disk, once it is there (after a takeover it arrives by
/// hot-plug).
async fn service_disk(reactor: &Arc<Reactor>) -> Arc<BlockDevice> {
    loop {
        if let Some(d) = devices::first_blk().filter(|d| !d.is_removing()) {
            return d;
        }
        reactor.sleep_ms(50).await;
    }
}

/// The failover service on the shared disk (see the module header).
async fn service_task(reactor: Arc<Reactor>) {
    let disk = service_disk(&reactor).await;
    let Some(mut next) = resume_point(&disk).await else { return };
    console::event(ev("service_start").field("resume_seq", next - 1));
    let mut record = [0u8; SECTOR];
    loop {
        if next >= disk.capacity() {
            console::event(ev("service_full").field("seq", next - 1));
            return;
        }
        fill_sector(SERVICE_SEED, next, &mut record);
        let r = async {
            disk.write(next, &record).await?;
            disk.flush().await
        }
        .await;
        match r {
            Ok(()) => {
                // Every flushed record is acknowledged on the console, so
                // the last ack a partition printed before it died is known.
                console::event(ev("service_ack").field("seq", next));
                next += 1;
            }
            Err(e) => {
                console::event(ev("service_error").field("seq", next).field("error", alloc::format!("{e}")));
                return;
            }
        }
        reactor.sleep_ms(20).await;
    }
}

/// First record number not yet on the disk.
async fn resume_point(disk: &BlockDevice) -> Option<u64> {
    let mut buf = [0u8; SECTOR];
    let mut s = 1;
    while s < disk.capacity() {
        if let Err(e) = disk.read(s, &mut buf).await {
            console::event(ev("service_error").field("seq", s).field("error", alloc::format!("{e}")));
            return None;
        }
        if !sector_matches(SERVICE_SEED, s, &buf) {
            break;
        }
        s += 1;
    }
    Some(s)
}
