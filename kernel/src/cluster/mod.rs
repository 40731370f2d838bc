//! The clustering service: runs the `cluster-agent` state machine for this
//! partition, sends and receives heartbeats on the LAN, carries out the
//! agent's actions through hypercalls, and runs the failover service on the
//! shared single-port disk.
//!
//! Command line (docs/cluster.md): `cluster=active|standby`,
//! `cluster_peer_ip=A.B.C.D`, `cluster_peer=<partition name>`,
//! `cluster_slot=<n>`; needs `ip=` and `hcall=on`.
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
use hypercall_client::hypercall_abi::ReturnCode;
use hypercall_client::Call;
use lparos_kernel::executor::{Reactor, TaskId};
use proto::event::{keys, names};
use proto::pattern::{fill_sector, sector_matches, SECTOR};
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
pub async fn run(stack: Arc<NetStack>, reactor: Arc<Reactor>, args: ClusterArgs) {
    let sock = match stack.add_udp(HEARTBEAT_PORT) {
        Ok(s) => s,
        Err(e) => {
            console::event(ev("cluster_error").field(keys::ERROR, alloc::format!("heartbeat socket: {e}")));
            return;
        }
    };
    let peer = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(args.peer_ip)), HEARTBEAT_PORT);
    let role = args.role.unwrap_or(if devices::first_blk().is_some() { Role::Active } else { Role::Standby });
    let mut agent = Agent::new(Config::default(), role, now_ms(&reactor));
    console::event(ev(names::CLUSTER_START).field(keys::ROLE, role_name(role)).field("slot", args.slot));
    let mut service: Option<TaskId> = None;
    let mut pending = agent.start();
    let mut buf = [0u8; 64];
    loop {
        // Say why first, then carry out what the agent asked for, one
        // action at a time.
        report(&mut agent, args.slot);
        while !pending.is_empty() {
            let action = pending.remove(0);
            let ok = perform(action, &args, &stack, sock, peer, &reactor, &mut service).await;
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
            Notice::OwnPauseDetected { gap_ms } => ev(names::CLUSTER_NOTICE).field("what", "own_pause").field("gap_ms", gap_ms),
            Notice::PeerFailed { silent_ms } => ev(names::CLUSTER_NOTICE).field("what", "peer_failed").field("silent_ms", silent_ms),
            Notice::TookOver => ev(names::CLUSTER_ACTIVE).field("slot", slot),
            Notice::DualActive => ev(names::CLUSTER_NOTICE).field("what", "dual_active"),
        };
        console::event(line);
    }
}

async fn perform(
    action: Action,
    args: &ClusterArgs,
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
                *service = Some(reactor.spawn("cluster_service", service_task(reactor.clone())));
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
    let mut line = ev(names::CLUSTER_ACTION).field("action", &what).field(keys::OK, ok as u8).field("ms", ms);
    if let Err(e) = &result {
        line = line.field("rc", e.rc());
    }
    console::event(line);
    ok
}

/// The failover service on the shared disk (see the module header).
async fn service_task(reactor: Arc<Reactor>) {
    let disk = loop {
        if let Some(d) = devices::first_blk().filter(|d| !d.is_removing()) {
            break d;
        }
        reactor.sleep_ms(50).await;
    };
    let Some(mut next) = resume_point(&disk).await else { return };
    console::event(ev(names::SERVICE_START).field(keys::RESUME_SEQ, next - 1));
    let mut record = [0u8; SECTOR];
    loop {
        if next >= disk.capacity() {
            console::event(ev("service_full").field(keys::SEQ, next - 1));
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
                console::event(ev(names::SERVICE_ACK).field(keys::SEQ, next));
                next += 1;
            }
            Err(e) => {
                console::event(ev("service_error").field(keys::SEQ, next).field(keys::ERROR, alloc::format!("{e}")));
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
            console::event(ev("service_error").field(keys::SEQ, s).field(keys::ERROR, alloc::format!("{e}")));
            return None;
        }
        if !sector_matches(SERVICE_SEED, s, &buf) {
            break;
        }
        s += 1;
    }
    Some(s)
}
