//! QEMU integration tests of the guest drivers: the virtio disk carries a
//! pattern between host and guest in both directions, two guests on one
//! virtual LAN exchange UDP and TCP traffic, and the virtio console carries
//! a line each way.

mod support;
use support::image::{scratch, spec};

use lparhv::machine::qemu::{Disk, Guest, GuestExit, Nic};
use lparhv::machine::vswitch::VSwitch;
use proto::pattern;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

const SECTORS: u64 = 1024;

#[test]
fn qemu_guest_writes_pattern_that_host_reads_back() {
    let dir = scratch("disk-w");
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let mut s = spec("disk-writer");
    s.cmdline = format!("quiet disk_test=write:41:{SECTORS}");
    s.disks.push(Disk { path: img.clone(), format: "raw" });
    let mut g = Guest::spawn(&s, false).unwrap();
    let (ev, _) = g.wait_event("disk_write", Duration::from_secs(60)).unwrap();
    assert_eq!(ev.get("ok"), Some("1"), "{ev:?}");
    assert_eq!(g.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0));
    let image = std::fs::read(&img).unwrap();
    assert_eq!(pattern::mismatched_sectors(41, &image, SECTORS), Vec::<u64>::new());
    assert!(image[SECTORS as usize * 512..].iter().all(|b| *b == 0), "wrote past the requested sectors");
}

#[test]
fn qemu_host_writes_pattern_that_guest_verifies_and_damage_is_found() {
    let dir = scratch("disk-r");
    let img = dir.path().join("disk.img");
    let mut bytes = pattern::pattern_bytes(99, SECTORS);
    bytes.resize(4 << 20, 0);
    std::fs::write(&img, &bytes).unwrap();

    let run = |name: &str| {
        let mut s = spec(name);
        s.cmdline = format!("quiet disk_test=read:99:{SECTORS}");
        s.disks.push(Disk { path: img.clone(), format: "raw" });
        let mut g = Guest::spawn(&s, false).unwrap();
        let (ev, _) = g.wait_event("disk_read", Duration::from_secs(60)).unwrap();
        (ev, g.wait_exit(Duration::from_secs(10)).unwrap())
    };
    let (ev, exit) = run("disk-reader");
    assert_eq!((ev.get("ok"), ev.get("mismatches"), exit), (Some("1"), Some("0"), GuestExit::Code(0)), "{ev:?}");

    // Damage two sectors on the host: the guest must name them.
    bytes[300 * 512 + 17] ^= 0xff;
    bytes[901 * 512] ^= 0x01;
    std::fs::write(&img, &bytes).unwrap();
    let (ev, exit) = run("disk-reader-damaged");
    assert_eq!(ev.get("ok"), Some("0"));
    assert_eq!(ev.get("mismatches"), Some("2"));
    assert_eq!(ev.get("first_bad"), Some("300"));
    assert_eq!(exit, GuestExit::Code(1));
}

#[test]
fn qemu_two_guests_exchange_udp_and_tcp_on_one_lan() {
    let dir = scratch("lan");
    let ports = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let switch = VSwitch::start(&dir.path().join("switch.sock"), ports.to_vec()).unwrap();
    let mut server = spec("server");
    server.cmdline = "quiet ip=10.0.0.1/24 net_role=server".into();
    server.nics.push(Nic { mac: "52:54:00:00:00:01".into(), local: ports[0].clone(), remote: switch.path().into() });
    let mut client = spec("client");
    client.cmdline = "quiet ip=10.0.0.2/24 net_role=client peer=10.0.0.1 count=40".into();
    client.nics.push(Nic { mac: "52:54:00:00:00:02".into(), local: ports[1].clone(), remote: switch.path().into() });
    let mut s = Guest::spawn(&server, false).unwrap();
    s.wait_event("net_up", Duration::from_secs(30)).unwrap();
    let mut c = Guest::spawn(&client, false).unwrap();
    let (udp, _) = c.wait_event("net_udp", Duration::from_secs(60)).unwrap();
    assert_eq!((udp.get("ok"), udp.get("sent"), udp.get("received")), (Some("1"), Some("40"), Some("40")), "{udp:?}");
    let (tcp, _) = c.wait_event("net_tcp", Duration::from_secs(60)).unwrap();
    assert_eq!((tcp.get("ok"), tcp.get("bytes")), (Some("1"), Some("40960")), "{tcp:?}");
    assert_eq!(c.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0));
    assert!(s.is_running(), "the server keeps serving");
    assert!(switch.stats.forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 80, "traffic went through the switch");
}

#[test]
fn qemu_virtio_console_carries_a_line_each_way() {
    let dir = scratch("console");
    let sock = dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut s = spec("console");
    s.cmdline = "quiet console_test=hello-from-guest".into();
    s.extra =
        ["-chardev", &format!("socket,id=c0,path={}", sock.display()), "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=c0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut g = Guest::spawn(&s, false).unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello-from-guest\n");
    (&stream).write_all(b"reply from host\n").unwrap();
    let (ev, _) = g.wait_event("console_read", Duration::from_secs(30)).unwrap();
    assert_eq!(ev.get("line"), Some("reply from host"));
    assert_eq!(g.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0));
}
