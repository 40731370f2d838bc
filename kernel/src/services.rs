//! Which services start, chosen by the kernel command line (contract in
//! docs/drivers.md and docs/events.md): the hypercall service (`hcall=on`),
//! the storage-server event task (`vios=`), rootvg (`rootvg=on`), the
//! network (`ip=`, `net_role=`, `peer=`, `count=`), the clustering
//! service (`cluster=`) and the key-value service (`service=kv`). The test image (feature `test-services`) adds the
//! test behaviours of `testing`; the production image names every
//! test-only key it was given in a `test_key_ignored` event and goes on.

use crate::cmdline::Cmdline;
use crate::executor::Reactor;
use crate::hal::exit::{exit, ExitCode};
use crate::runtime::console;
use crate::{cluster, devices, hcall, kv, net, vios};
use alloc::string::ToString;
use alloc::sync::Arc;
use core::future::Future;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use proto::event::{keys, names};

/// Start everything the command line asks for.
pub fn start(cmdline: &Cmdline, reactor: &Arc<Reactor>) {
    let hcall_started = start_hcall(cmdline, reactor);
    start_vios_events(cmdline, reactor);
    let rootvg_taken_by_test = start_test_behaviours(cmdline, reactor, hcall_started);
    if cmdline.get("rootvg") == Some("on") && !rootvg_taken_by_test {
        reactor.spawn("rootvg", async {
            crate::storage::rootvg_svc::bring_up().await;
        });
    }
    start_net(cmdline, reactor);
}

/// The test image: the test behaviours; returns whether one of them
/// brings rootvg up itself.
#[cfg(feature = "test-services")]
fn start_test_behaviours(cmdline: &Cmdline, reactor: &Arc<Reactor>, hcall_started: bool) -> bool {
    crate::testing::start(cmdline, reactor, hcall_started);
    cmdline.has("vios_test")
}

/// The production image: report the test-only keys it ignores.
#[cfg(not(feature = "test-services"))]
fn start_test_behaviours(cmdline: &Cmdline, _reactor: &Arc<Reactor>, _hcall_started: bool) -> bool {
    for key in crate::testing::keys::test_only_keys(cmdline) {
        log::warn!("{key}= is a test behaviour; this image is built without them (feature test-services)");
        console::event(console::ev("test_key_ignored").field("key", key));
    }
    false
}

/// Test tasks still running, and whether one failed: the guest exits when
/// the last one ends (Success only if all passed).
static TESTS_PENDING: AtomicUsize = AtomicUsize::new(0);
static TEST_FAILED: AtomicBool = AtomicBool::new(false);

/// Run `test` as a task whose result decides the guest's exit code.
pub fn spawn_test(reactor: &Arc<Reactor>, name: &'static str, test: impl Future<Output = bool> + Send + 'static) {
    TESTS_PENDING.fetch_add(1, Ordering::SeqCst);
    reactor.spawn(name, async move {
        if !test.await {
            TEST_FAILED.store(true, Ordering::SeqCst);
        }
        if TESTS_PENDING.fetch_sub(1, Ordering::SeqCst) == 1 {
            exit(if TEST_FAILED.load(Ordering::SeqCst) { ExitCode::Failure } else { ExitCode::Success });
        }
    });
}

/// `hcall=on` starts the hypercall service (docs/hcall-guest.md). Returns
/// false only when it was asked for and could not start.
fn start_hcall(cmdline: &Cmdline, reactor: &Arc<Reactor>) -> bool {
    match cmdline.get("hcall") {
        Some("on") => hcall::start(reactor, cmdline.get("hcall_name")).is_ok(),
        Some(other) => {
            log::warn!("hcall={other}: only hcall=on is known");
            true
        }
        None => true,
    }
}

/// `vios=<server>`: the storage-server event task (docs/vios.md).
fn start_vios_events(cmdline: &Cmdline, reactor: &Arc<Reactor>) {
    use crate::vios_initiator::{Limits, DEFAULT_CONNECT_MS, DEFAULT_RESUME_MS};
    let Some(server) = cmdline.get("vios") else { return };
    let server = match hypercall_client::hypercall_abi::Name::new(server) {
        Ok(n) => n,
        Err(_) => {
            console::event(console::ev("vios_error").field(keys::ERROR, "vios= is not a valid server name"));
            return;
        }
    };
    let ms = |key: &str, default: u64| cmdline.get_u64(key).ok().flatten().unwrap_or(default);
    let settings = vios::events::Settings {
        server,
        register: cmdline.get("vios_register") != Some("0"),
        ignore_pause: cmdline.get("vios_ignore_pause") == Some("1"),
        limits: Limits { connect_ms: ms("vios_connect_ms", DEFAULT_CONNECT_MS), resume_ms: ms("vios_resume_ms", DEFAULT_RESUME_MS) },
    };
    reactor.spawn("vios_events", vios::events::run(settings, reactor.clone()));
}

/// `service=kv` without a cluster: the key-value service on the first disk.
fn start_kv_alone(stack: &Arc<net::NetStack>, reactor: &Arc<Reactor>, service: Option<kv::KvArgs>) {
    let Some(args) = service else { return };
    match devices::first_blk() {
        Some(disk) => {
            reactor.spawn("kv", kv::serve(stack.clone(), reactor.clone(), disk, args));
        }
        None => console::event(console::ev("kv_error").field("stage", "start").field("error", "service=kv needs a disk")),
    }
}

/// `ip=`: the network stack on the first virtio-net device, then the
/// clustering service and the LAN roles that need it.
fn start_net(cmdline: &Cmdline, reactor: &Arc<Reactor>) {
    let ip = match cmdline.get_ipv4("ip") {
        Ok(ip) => ip,
        Err(e) => {
            console::event(console::ev(names::NET_UP).field(keys::OK, 0).field(keys::ERROR, e.to_string()));
            spawn_test(reactor, "net", async { false });
            return;
        }
    };
    let Some((addr, prefix)) = ip else { return };
    let (Some(nic), Some(kick), Some(changed)) = (devices::first_net(), devices::alloc_vector(), devices::alloc_vector()) else {
        console::event(console::ev(names::NET_UP).field(keys::OK, 0).field(keys::ERROR, "no virtio-net device"));
        spawn_test(reactor, "net", async { false });
        return;
    };
    log::info!("net: {} on {}", core::str::from_utf8(cmdline.get("ip").unwrap_or("").as_bytes()).unwrap_or(""), nic.bdf);
    let stack = net::NetStack::new(nic, addr, prefix, reactor.clone(), kick, changed);
    let mac = stack.mac();
    reactor.spawn("net", stack.clone().run());
    console::event(
        console::ev(names::NET_UP)
            .field("ip", format_args!("{}.{}.{}.{}", addr[0], addr[1], addr[2], addr[3]))
            .field("mac", format_args!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])),
    );
    let service = kv::parse(cmdline).unwrap_or_else(|e| {
        console::event(console::ev("kv_error").field("stage", "cmdline").field("error", e));
        None
    });
    match cluster::parse(cmdline) {
        Ok(Some(args)) => {
            reactor.spawn("cluster", cluster::run(stack.clone(), reactor.clone(), args, service));
        }
        Ok(None) => start_kv_alone(&stack, reactor, service),
        Err(e) => console::event(console::ev("cluster_error").field("error", e)),
    }
    match cmdline.get("net_role") {
        Some("server") => {
            reactor.spawn("udp_echo", net::udp_echo(stack.clone()));
            reactor.spawn("tcp_echo", net::tcp_echo(stack));
        }
        Some("client") => {
            let peer = cmdline.get_ipv4("peer");
            let count = cmdline.get_u64("count");
            match (peer, count) {
                (Ok(Some((peer, _))), Ok(count)) => {
                    let count = count.unwrap_or(10).min(100_000) as u32;
                    spawn_test(reactor, "net_client", net::client(stack, peer, count));
                }
                _ => {
                    log::error!("net_role=client needs peer=<a.b.c.d> and count=<n>");
                    console::event(console::ev(names::NET_UDP).field(keys::OK, 0).field(keys::ERROR, "bad peer= or count="));
                    spawn_test(reactor, "net_client", async { false });
                }
            }
        }
        Some(other) => log::warn!("unknown net_role={other}"),
        None => {}
    }
}
